#!/usr/bin/env bash
# Include edges between the source folders must point downward (docs/DESIGN.md,
# "Layers and folders"): trainer/cli -> trainer (the training run) -> trainer/config ->
# trainer/model, trainer/optim -> trainer/io -> datasets -> autograd. Prints
# every upward edge and exits 1 when there is one.
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"
rank() { # the layer of a source path (higher = closer to the user)
  case "$1" in
    trainer/cli/*) echo 7 ;;
    trainer/config/*) echo 5 ;;
    trainer/model/* | trainer/optim/*) echo 4 ;;
    trainer/io/*) echo 3 ;;
    trainer/*) echo 6 ;;
    datasets/*) echo 2 ;;
    autograd/* | cuda_kernels/*) echo 1 ;;
    *) echo 0 ;;
  esac
}
bad=0
while IFS= read -r f; do
  from=$(rank "$f")
  while IFS= read -r inc; do
    case "$inc" in */*) ;; *) inc="$(dirname "$f")/$inc" ;; esac # same-folder include
    to=$(rank "$inc")
    if [ "$to" -gt "$from" ]; then
      echo "upward include: $f -> $inc"
      bad=1
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f")
done < <(git ls-files 'autograd/*' 'cuda_kernels/*' 'datasets/*' 'trainer/*' | grep -E '\.(c|h|cu|cuh)$')
[ $bad -eq 0 ] && echo "layers: every include points downward"
exit $bad
