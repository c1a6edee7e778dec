#!/usr/bin/env bash
# Fuzzes every parser with libFuzzer under ASan + UBSan for SECONDS each
# (default 10): tests/fuzz/run.sh [SECONDS [TARGET...]].
# Builds build-fuzz/ with clang (-DCT_FUZZ=ON), seeds each corpus from the
# fixtures, tests/data, configs/, make_seeds.c and tests/fuzz/regressions/,
# and prints executions per target. A crash, leak, UBSan report, timeout
# (10 s per input) or out-of-memory (2 GiB) leaves its input under
# build-fuzz/fuzz-findings/ and the script exits 1: fix it, then copy the
# input to tests/fuzz/regressions/<target>/ so ctest replays it.
# (-Werror is the gcc build's: clang 14 warns on OpenMP simd loops it cannot vectorize.)
# Without clang or libFuzzer (libclang-rt-*-dev) it says so and exits 0.
set -uo pipefail
secs="${1:-10}"; [ $# -gt 0 ] && shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${CT_FUZZ_BUILD:-$root/build-fuzz}"
fx="${CT_FIXTURES:-$root/../shared/fixtures}"
cc="$(command -v clang || true)"
if [ -z "$cc" ] || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "fuzz: clang with libFuzzer not installed (clang, libclang-rt-dev): skipped"
  exit 0
fi
[ -f "$fx/stories260k-internlm2/tokenizer.model" ] || { echo "fuzz: fixtures missing at $fx: skipped"; exit 0; }
export CT_FIXTURES="$fx" OMP_NUM_THREADS=1
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Release -DCT_WERROR=OFF \
  -DCT_NATIVE=OFF -DCT_FUZZ=ON -DCT_CUDA=OFF -DCT_FIXTURES="$fx" >/dev/null || exit 1
cmake --build "$build" --target fuzz_all -j"$(nproc)" >"$build/fuzz-build.log" 2>&1 || { tail -30 "$build/fuzz-build.log"; exit 1; }

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in "$root"/tests/fuzz/fuzz_*.c; do
    t="$(basename "$f" .c)"; t="${t#fuzz_}"; [ "$t" = common ] || targets+=("$t")
  done
fi

# ---- seed corpora (copied into build-fuzz/fuzz-seeds/<target>/ afresh each run)
seeds="$build/fuzz-seeds"
rm -rf "$seeds"; mkdir -p "$seeds"
"$build/tests/fuzz/fuzz_make_seeds" "$seeds" >/dev/null || exit 1
sd() { mkdir -p "$seeds/$1"; echo "$seeds/$1"; }
cp "$fx/internlm2-chat-7b/model.safetensors.index.json" "$(sd st_index)/"
i=0; for f in "$fx"/*/config.json "$fx"/model-configs/*.json; do cp "$f" "$(sd hf_config)/c$((i++)).json"; done
cp "$fx/stories260k-internlm2/tokenizer.model" "$(sd sp_model)/"
i=0; for f in "$fx"/*/tokenizer_config.json; do cp "$f" "$(sd tokenizer_config)/t$((i++)).json"; done
i=0; for f in "$root"/configs/*.yaml "$root"/tests/data/configs/*.yaml; do cp "$f" "$(sd run_config)/y$((i++)).yaml"; done
printf 'pretrained_model_name_or_path: m\ndata_path: d.json\n\0lr=1e-3\0lora.r=16\0param_scheduler.0.end=5' \
  >"$(sd run_config)/sets"
i=0; for f in "$root"/tests/data/datasets/*; do # header bytes: see fuzz_dataset.c
  for fmt in 0 1 2 3 4; do
    jl=$([ "${f##*.}" = jsonl ] && echo 1 || echo 0)
    { printf "\\x0$fmt\\x0$((i % 4))\\x3e\\x0$((jl + 2 * (fmt % 2) + 4 * (i % 2)))"; cat "$f"; } >"$(sd dataset)/d$((i++))"
  done
done
cat >"$(sd adapter_config)/list.json" <<'JSON'
{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none", "task_type": "CAUSAL_LM",
 "target_modules": ["wqkv", "wo", "w1", "w2", "w3"], "base_model_name_or_path": "internlm/internlm2-chat-7b",
 "use_rslora": false, "use_dora": false, "fan_in_fan_out": false, "modules_to_save": null}
JSON
cat >"$(sd adapter_config)/regex.json" <<'JSON'
{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ".*\\.(wqkv|w[1-3])", "bias": "none"}
JSON
grep -v '^#' "$root/tests/data/tokenizer_corpus.txt" | grep -v '^$' | head -60 | { n=0; while IFS= read -r l; do
  printf "\\x0$((n % 2))%b" "$l" >"$(sd tok_encode)/l$n"; n=$((n + 1)); done; }
printf '\x00\x01\x00\x00\x00\x02\x00\x00\x00\x41\x00\x00\x00\xff\xff\xff\xff' >"$(sd tok_decode)/small"
printf '\x03\x00\x68\x01\x00\x01\x00\x00\x00\x92\x01\x00\x00\x00\x00\x01\x00' >"$(sd tok_decode)/big"
for t in "${targets[@]}"; do
  mkdir -p "$seeds/$t"
  [ -d "$root/tests/fuzz/regressions/$t" ] && cp "$root/tests/fuzz/regressions/$t"/* "$seeds/$t/" 2>/dev/null
done

# ---- fuzz
findings="$build/fuzz-findings"; mkdir -p "$findings"
failed=0
printf '%-18s %8s %10s %8s  %s\n' target seconds execs corpus result
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  corpus="$build/fuzz-corpus/$t"; mkdir -p "$corpus"
  log="$findings/$t.log"
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    LSAN_OPTIONS=suppressions="$root/tests/fuzz/lsan.supp" \
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$findings/$t-" "$corpus" "$seeds/$t" >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  size=$(ls "$corpus" | wc -l)
  if [ $rc -eq 0 ]; then res=ok; else res="FAILED (exit $rc; see $log)"; failed=1; fi
  printf '%-18s %8s %10s %8s  %s\n' "$t" "$secs" "${execs:-?}" "$size" "$res"
  [ $rc -eq 0 ] || grep -E "ERROR|runtime error|assertion failed|Test unit written" "$log" | head -5
done
exit $failed
