#!/usr/bin/env bash
# The test command: installs dependencies, builds (warnings are errors), runs
# every ctest test, then the unit tests again under ASan + UBSan.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/build.sh "$root/build"
ctest --test-dir build --output-on-failure -j"$(nproc)"

# Sanitizer pass (CPU only: the CUDA backend cannot run without a GPU).
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCT_SANITIZE=ON -DCT_CUDA=OFF -DCT_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j"$(nproc)"
