#!/usr/bin/env bash
# The test command: installs dependencies, builds (warnings are errors), runs
# every ctest test, the unit tests again on two other kinds of machine (another
# OpenBLAS kernel; a CPU without AVX512-BF16), then the unit and parity tests
# (the emulated CUDA kernels included) under ASan + UBSan, then fuzzes every
# parser for 10 s each (tests/fuzz/run.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/build.sh "$root/build"
ctest --test-dir build --output-on-failure -j"$(nproc)"

# No test may depend on the BLAS kernel or the CPU features the machine gets
# (CI inherits the machine's environment, e.g. OPENBLAS_CORETYPE=Haswell on
# some EPYCs). Haswell's sgemm sums in another order than the default kernel
# here; CT_NO_BF16_DOT=1 takes the fp32 fallback of the bf16 GEMMs, as a CPU
# without AVX512-BF16 does.
echo "== unit and parity tests with OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512"
OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512 \
  ctest --test-dir build -L "unit|parity" --output-on-failure -j"$(nproc)"
echo "== unit and parity tests with CT_NO_BF16_DOT=1 (the bf16 fallback)"
CT_NO_BF16_DOT=1 ctest --test-dir build -L "unit|parity" --output-on-failure -j"$(nproc)"

# Sanitizer pass: the CPU code and the emulated CUDA kernels (cuda-emu: the
# same .cu sources on the CPU) under ASan + UBSan. Whole-model runs on the
# emulator take ~10 minutes each there and are left to the passes above
# (test_cuda_emu excluded; test_mem_plan and test_offload run their CPU and
# guarded parts, CT_TEST_EMU_MODEL=0); the kernels are all in parity_cuda-emu.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCT_SANITIZE=ON -DCT_WERROR=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 CT_TEST_EMU_MODEL=0 \
  ctest --test-dir build-asan -L "unit|parity" -E "^test_cuda_emu$" --output-on-failure -j"$(nproc)"

# Fuzzing: every parser (tests/fuzz/fuzz_*.c) for 10 s under libFuzzer +
# ASan + UBSan, built with clang in build-fuzz/ (about 2 minutes of fuzzing).
# The regression inputs of earlier findings already ran above as ctests.
echo "== fuzzing, 10 s per target"
bash tests/fuzz/run.sh 10
