#!/usr/bin/env bash
# Builds, on this machine, what tests/gpu/run.sh runs on a lent GPU machine
# (an H100/H200 with CUDA 13 and its libraries, but none of our Debian ones:
# libyaml, jansson, HDF5, OpenBLAS):
# 1. configures build-gpu/ (or $1) for sm_90 only, portable CPU code
#    (-march=x86-64-v3 instead of -march=native), no emulated backend, no MPI
#    (one GPU, no mpirun there: tests/gpu/nccl_check.sh runs NCCL with one
#    rank, which needs none; libnccl itself is opened at run time, never
#    bundled) and --as-needed (the test programs then need no HDF5/yaml/jansson
#    at all);
# 2. builds test_parity, bench_ops and ctuner;
# 3. copies the shared libraries they load (ldd) into build-gpu/lib/, named
#    by their sonames so that LD_LIBRARY_PATH=build-gpu/lib finds them, except
#    glibc's, the C++ runtime's and CUDA's (the GPU machine has its own);
# 4. puts beside them what bench/bench_gpu.sh needs there:
#    py/: bitsandbytes for the Python peer (the GPU machine has torch,
#      transformers and PEFT but not bitsandbytes, and no network): its
#      py3-none manylinux wheel (BNB_VERSION, fetched once with pip download
#      into build-gpu/wheels/, or BNB_WHEEL=FILE), unpacked as pip install
#      --target would install it, without the native libraries for CUDA 11/12,
#      ROCm and XPU (torch there is CUDA 13: libbitsandbytes_cuda130/132 and
#      the CPU one stay; the whole wheel is 43 MB, this 8 MB); run.sh puts py/
#      on PYTHONPATH;
#    fixtures/: from ../shared/fixtures (which does not travel), the
#      InternLM2-chat-7B config and tokenizer, the 1.8B config and the
#      stories260k model (the peer's conversion check);
# 5. packs the three programs, lib/, py/ and fixtures/ into
#    build-gpu/bundle.tgz: the one path to carry (the uncompressed bundle is
#    too big to travel beside the working tree within the 64 MiB a call may
#    carry); run.sh unpacks it.
# Prints the sizes and the largest libraries; fails when the archive is over
# 60 MiB or a library or fixture is not found here. Without the wheel (pip
# cannot reach PyPI and none is given) it warns and packs no py/: bench_gpu.sh
# then runs ctuner alone.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/build-gpu}"
limit_mib=60

cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCT_WERROR=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCT_NATIVE=OFF -DCMAKE_C_FLAGS="-march=x86-64-v3" \
  -DCT_CUDA_EMU=OFF -DCT_MPI=OFF -DCMAKE_EXE_LINKER_FLAGS="-Wl,--as-needed" >/dev/null
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

# ---- bitsandbytes for the peer (py3-none: any python 3 on the GPU machine)
bnb_version=${BNB_VERSION:-0.50.2}
wheel=${BNB_WHEEL:-}
if [ -z "$wheel" ]; then
  find_wheel() { compgen -G "$dir/wheels/bitsandbytes-$bnb_version-py3-none-manylinux*_x86_64.whl" | head -1 || true; }
  wheel=$(find_wheel)
  if [ -z "$wheel" ]; then
    mkdir -p "$dir/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir/wheels" "bitsandbytes==$bnb_version" >&2 || true
    wheel=$(find_wheel)
  fi
fi
py="$dir/py"
rm -rf "$py"
extra=(lib)
if [ -n "$wheel" ] && [ -f "$wheel" ]; then
  mkdir -p "$py"
  # the package and its dist-info (transformers reads the version from it);
  # native libraries only for CUDA 13 and the CPU
  python3 - "$wheel" "$py" <<'EOF'
import re, sys, zipfile
keep = re.compile(r"libbitsandbytes_(cuda13\d|cpu)\.so$")
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if not n.endswith(".so") or keep.search(n)]
    z.extractall(sys.argv[2], names)
    print("bitsandbytes: %s: %d of %d files (%s)" % (sys.argv[1].rsplit("/", 1)[-1], len(names), len(z.namelist()),
          ", ".join(sorted(n.rsplit("/", 1)[-1] for n in names if n.endswith(".so")))))
EOF
  extra+=(py)
else
  echo "build_gpu_bundle: WARNING: no bitsandbytes wheel (pip download failed; set BNB_WHEEL=FILE): the bundle" \
    "has no py/, and bench/bench_gpu.sh will run ctuner without its Python peer" >&2
fi

# ---- the fixtures bench_gpu.sh reads (../shared does not travel)
fx_src="${FIXTURES:-$root/../shared/fixtures}"
fx="$dir/fixtures"
rm -rf "$fx"
mkdir -p "$fx/internlm2-chat-7b" "$fx/model-configs" "$fx/stories260k-internlm2"
for f in internlm2-chat-7b/config.json internlm2-chat-7b/tokenizer.model internlm2-chat-7b/tokenizer_config.json \
  internlm2-chat-7b/special_tokens_map.json internlm2-chat-7b/generation_config.json \
  model-configs/internlm2-chat-1_8b.config.json stories260k-internlm2/config.json \
  stories260k-internlm2/model.safetensors stories260k-internlm2/tokenizer.model; do
  [ -f "$fx_src/$f" ] || { echo "build_gpu_bundle: fixture $fx_src/$f not found (set FIXTURES)" >&2; exit 1; }
  cp "$fx_src/$f" "$fx/$f"
done
for f in "$fx_src"/stories260k-internlm2/*.json; do cp "$f" "$fx/stories260k-internlm2/"; done
extra+=(fixtures)

echo "== bundle: programs, libraries, py/, fixtures/ (uncompressed)"
(cd "$dir" && du -b "${bins[@]}" && du -b lib/* && du -sb "${extra[@]:1}") | sort -nr |
  awk '{printf "%8.1f MiB  %s\n", $1 / 1048576, $2}' | head -14
total=$(cd "$dir" && du -cb "${bins[@]}" "${extra[@]}" | tail -1 | cut -f1)
awk -v t="$total" -v n="$(ls "$lib" | wc -l)" 'BEGIN { printf "   total %.1f MiB uncompressed, %d libraries\n", t / 1048576, n }'

tar -czf "$dir/bundle.tgz" -C "$dir" "${bins[@]}" "${extra[@]}"
size=$(stat -c %s "$dir/bundle.tgz")
awk -v s="$size" -v f="$dir/bundle.tgz" -v l="$limit_mib" \
  'BEGIN { printf "== %s: %.1f MiB (the path to carry; limit %d MiB)\n", f, s / 1048576, l }'
if [ "$size" -gt $((limit_mib << 20)) ]; then
  echo "build_gpu_bundle: the archive is over ${limit_mib} MiB" >&2
  exit 1
fi
