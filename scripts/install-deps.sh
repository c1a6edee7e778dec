#!/usr/bin/env bash
# Installs the Debian packages the build and tests need (skips what is there).
set -euo pipefail
pkgs=(cmake make gcc g++ clang libclang-rt-dev libomp-dev pkg-config libyaml-dev libhdf5-dev libopenblas-openmp-dev libjansson-dev
      sentencepiece python3 python3-sentencepiece openmpi-bin libopenmpi-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
