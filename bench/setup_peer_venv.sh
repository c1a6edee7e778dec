#!/usr/bin/env bash
# A Python environment for bench/peer_qlora.py and bench/check_peer_convert.sh
# on this (CPU) machine, with the versions of the GPU machine's image: torch
# 2.11.0, transformers 5.17.0, accelerate 1.15.0, PEFT, safetensors and
# bitsandbytes 0.50.2 (what scripts/build_gpu_bundle.sh carries there), from
# PyPI. PyPI's torch for Linux is the CUDA build (with its nvidia-* libraries,
# ~5 GB installed); it runs on the CPU as well.
#
#   bench/setup_peer_venv.sh [DIR]      # default /tmp/ctuner-peer-venv
# then e.g. bench/check_peer_convert.sh --ctuner build/ctuner --python DIR/bin/python
# Idempotent: does nothing when DIR/bin/python already imports them all.
# Needs python3 >= 3.10 (with venv) and PyPI.
set -euo pipefail
dir=${1:-/tmp/ctuner-peer-venv}
check='import torch, transformers, peft, accelerate, safetensors, bitsandbytes'
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "setup_peer_venv: $dir is ready"
    exit 0
fi
py=python3
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "setup_peer_venv: $(command -v "$py") is $("$py" --version 2>&1); transformers 5 needs 3.10 or later" >&2; exit 1; }
"$py" -m venv "$dir"
"$dir/bin/pip" install -q torch==2.11.0 transformers==5.17.0 accelerate==1.15.0 peft safetensors bitsandbytes==0.50.2
"$dir/bin/python" -c "$check; print('setup_peer_venv: torch', torch.__version__, 'transformers', transformers.__version__, \
'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'in $dir')"
