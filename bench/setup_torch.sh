#!/usr/bin/env bash
# Installs the PyTorch that bench/torch_lora_step.py runs on: Debian's
# python3-torch (CPU build, 1.13 on bookworm). It goes to the system
# interpreter, /usr/bin/python3 (a `python3` found first on PATH, e.g. a pyenv
# shim, does not see Debian's packages). Idempotent: does nothing when
# /usr/bin/python3 can already import torch. Needs root (or sudo) and the apt
# sources.
set -euo pipefail

PY=/usr/bin/python3
if "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "setup_torch: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed for $PY"
    exit 0
fi

SUDO=
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "setup_torch: need root or sudo to run apt-get install python3-torch" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq python3-torch

"$PY" -c 'import torch; print("setup_torch: torch", torch.__version__, "installed for", __import__("sys").executable)'
