#!/usr/bin/env bash
# Runs bench_tokenizer on the real InternLM2 tokenizer: ctuner vs spm_encode
# (SentencePiece's C++) on the same generated mixed text, in one run.
# usage: bench/bench_tokenizer.sh [BUILD_DIR] [extra bench_tokenizer args, e.g. --mb 8 --threads 2]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
shift || true
bin="$build/bench/bench_tokenizer"
[ -x "$bin" ] || { echo "build first: cmake -S $root -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build" >&2; exit 2; }
tok="$root/../shared/fixtures/internlm2-chat-7b"
[ -f "$tok/tokenizer.model" ] || { echo "needs $tok (shared fixtures)" >&2; exit 2; }
command -v spm_encode >/dev/null || echo "note: spm_encode missing (apt install sentencepiece): ctuner numbers only"
exec "$bin" "$tok" "$@"
