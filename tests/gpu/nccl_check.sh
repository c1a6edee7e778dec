#!/usr/bin/env bash
# The NCCL path of data-parallel training on one GPU (tests/gpu/run.sh runs
# it): `ctuner train` on the stories260k fixture, device cuda, QLoRA, 8
# optimizer steps, once plain and once with CTUNER_DIST_NCCL=1 (a NCCL
# communicator of one rank: the LoRA grads go through ncclAllReduce on the
# GPU before every optimizer step). The sum over one rank is the identity, so
# every logged loss and grad norm and the final adapter's bytes must be equal.
# The NCCL run cuts the grads into one bucket per layer (CTUNER_DIST_BUCKET_MB),
# each all-reduced on NCCL's own stream as soon as the backward has passed
# its layer (trainer/train_grad_sync.c): all 5 must start during the backward.
# A single GPU cannot show scaling: this checks that the NCCL code loads
# libnccl, joins a communicator and all-reduces the right buffer on the right
# stream, not its speed (several GPUs: docs/TRAINING.md).
# $1 = ctuner, $2 = fixtures dir, $3 = scratch dir. Exit 0 equal, 1 not,
# 77 skipped (the message says why: no libnccl, ctuner without NCCL).
set -uo pipefail
bin="$1"; fx="$2"; work="$3"
"$bin" info | grep "NCCL yes" >/dev/null || { echo "nccl: skipped: this ctuner was built without NCCL (nccl.h)"; exit 77; }

# libnccl: the loader's, CUDA's, or a Python wheel's (PyTorch's nvidia-nccl)
# (grep without -q: with pipefail, -q's early exit could fail ldconfig by
# SIGPIPE; trailing slashes: find follows a start that is a symlink)
if ! ldconfig -p 2>/dev/null | grep "libnccl.so.2 " >/dev/null; then
  lib=$(find /usr/local/cuda/lib64/ /usr/local/cuda/targets/x86_64-linux/lib/ /usr/lib/ /usr/local/lib/ /opt/ \
    -maxdepth 6 -name libnccl.so.2 2>/dev/null | head -1)
  [ -n "$lib" ] || lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
  [ -n "$lib" ] && [ -f "$lib" ] || { echo "nccl: skipped: no libnccl.so.2 on this machine"; exit 77; }
  export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "nccl: libnccl from $lib"
fi

rm -rf "$work"; mkdir -p "$work"
. "$(dirname "$0")/../lib_e2e.sh" # e2e_story_data
e2e_story_data "$work/data.json" 4
cat >"$work/run.yaml" <<EOF
pretrained_model_name_or_path: $fx/stories260k-internlm2
data_path: $work/data.json
max_length: 64
batch_size: 2
accumulative_counts: 2
max_iters: 16
lr: 5.0e-3
max_norm: 1.0
save_steps: 1000
quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05}
seed: 1
logging_interval: 2
device: cuda
EOF
CTUNER_DIST_NCCL=0 "$bin" train "$work/run.yaml" --work-dir "$work/plain" >"$work/plain.log" 2>&1 ||
  { echo "nccl: the plain run failed:"; tail -5 "$work/plain.log"; exit 1; }
CTUNER_DIST_NCCL=1 CTUNER_DIST_BUCKET_MB=0.03 "$bin" train "$work/run.yaml" --work-dir "$work/nccl" >"$work/nccl.log" 2>&1 ||
  { echo "nccl: the run with NCCL failed:"; tail -5 "$work/nccl.log"; exit 1; }
grep -h "gradient all-reduce" "$work/nccl.log"
grep -q "gradient all-reduce on the GPUs with NCCL" "$work/nccl.log" ||
  { echo "nccl: the run with CTUNER_DIST_NCCL=1 did not all-reduce with NCCL"; exit 1; }
grep -q "5 buckets per optimizer step, 5.00 of them started during the backward" "$work/nccl.log" ||
  { echo "nccl: the buckets did not all start during the backward"; exit 1; }
python3 - "$work/plain" "$work/nccl" <<'EOF'
import json, sys
def rows(d):
    return [(r["iter"], r["loss"], r["grad_norm"], r["lr"]) for r in map(json.loads, open(d + "/metrics.jsonl"))
            if "loss" in r]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
same = open(sys.argv[1] + "/adapter/adapter_model.safetensors", "rb").read() == \
       open(sys.argv[2] + "/adapter/adapter_model.safetensors", "rb").read()
print("nccl: %d logged steps, losses/grad norms %s, final adapter %s" %
      (len(a), "equal" if a == b else "DIFFER", "bit-identical" if same else "DIFFERS"))
if a != b:
    for x, y in zip(a, b): print("   plain", x, " nccl", y)
sys.exit(0 if a == b and a and same else 1)
EOF
