#!/usr/bin/env bash
# Builds, on this machine, what tests/gpu/run.sh runs on a lent GPU machine
# (an H100/H200 with CUDA 13 and its libraries, but none of our Debian ones:
# libyaml, jansson, HDF5, OpenBLAS):
# 1. configures build-gpu/ (or $1) for sm_90 only, portable CPU code
#    (-march=x86-64-v3 instead of -march=native), no emulated backend, and
#    --as-needed (the test programs then need no HDF5/yaml/jansson at all);
# 2. builds test_parity, bench_ops and ctuner;
# 3. copies the shared libraries they load (ldd) into build-gpu/lib/, named
#    by their sonames so that LD_LIBRARY_PATH=build-gpu/lib finds them, except
#    glibc's, the C++ runtime's and CUDA's (the GPU machine has its own);
# 4. packs the three programs and lib/ into build-gpu/bundle.tgz: the one
#    path to carry (the uncompressed bundle is too big to travel beside the
#    working tree within the 64 MiB a call may carry); run.sh unpacks it.
# Prints the sizes and the largest libraries; fails when the archive is over
# 60 MiB or a library is not found here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/build-gpu}"
limit_mib=60

cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCT_WERROR=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCT_NATIVE=OFF -DCMAKE_C_FLAGS="-march=x86-64-v3" \
  -DCT_CUDA_EMU=OFF -DCMAKE_EXE_LINKER_FLAGS="-Wl,--as-needed" >/dev/null
cmake --build "$dir" --target test_parity bench_ops ctuner -j"$(nproc)"

bins=(tests/test_parity bench/bench_ops ctuner)
# glibc, the C++/gcc runtime and CUDA's libraries come from the GPU machine's image
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libanl\.so|libnsl\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcudart\.so|libcublas\.so|libcublasLt\.so|libcudnn)'
lib="$dir/lib"
rm -rf "$lib"
mkdir -p "$lib"
missing=0
for b in "${bins[@]}"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    if [ "$path" = "not" ]; then
      echo "build_gpu_bundle: $b needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    [[ $name =~ $system_re ]] && continue
    [ -e "$lib/$name" ] || cp -L "$path" "$lib/$name"
  done < <(ldd "$dir/$b")
done
[ $missing -eq 0 ] || exit 1

echo "== bundle: programs and libraries (uncompressed)"
(cd "$dir" && du -b "${bins[@]}" && du -b lib/*) | sort -nr | awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}' | head -12
total=$(cd "$dir" && du -cb "${bins[@]}" lib | tail -1 | cut -f1)
awk -v t="$total" -v n="$(ls "$lib" | wc -l)" 'BEGIN { printf "   total %.1f MiB uncompressed, %d libraries\n", t / 1048576, n }'

tar -czf "$dir/bundle.tgz" -C "$dir" "${bins[@]}" lib
size=$(stat -c %s "$dir/bundle.tgz")
awk -v s="$size" -v f="$dir/bundle.tgz" -v l="$limit_mib" \
  'BEGIN { printf "== %s: %.1f MiB (the path to carry; limit %d MiB)\n", f, s / 1048576, l }'
if [ "$size" -gt $((limit_mib << 20)) ]; then
  echo "build_gpu_bundle: the archive is over ${limit_mib} MiB" >&2
  exit 1
fi
