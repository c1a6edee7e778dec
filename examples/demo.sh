#!/usr/bin/env bash
# The bundled example: installs dependencies, builds, and runs the main job on
# the bundled default. (Grows into train -> chat -> merge as those commands land.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/build.sh "$root/build"
./build/ctuner info
