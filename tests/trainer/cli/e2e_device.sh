#!/usr/bin/env bash
# The device a run uses: `device:` in the config, `--device` on eval and chat.
#  - an unknown device, or one this build or machine lacks, exits 2 naming it
#    and what to use instead;
#  - with the emulated CUDA backend (builds with nvcc): the tiny QLoRA run
#    trains with `device: cuda-emu` (every op on the CUDA kernels' own
#    sources, bf16 activations) to the losses of the same run on the CPU
#    (compute_dtype bfloat16 both) within bf16 tolerance; `eval --device
#    cuda-emu` of its adapter gives the CPU eval's loss within bf16
#    tolerance; `chat --device cuda-emu` answers.
# $1 = ctuner binary, $2 = fixtures dir; exit 77 without the fixture or python3.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_need_story
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
e2e_workdir device

e2e_story_data "$work/data.json" 3
cfg="$work/run.yaml"
cat >"$cfg" <<YAML
pretrained_model_name_or_path: $st
data_path: $work/data.json
max_length: 64
batch_size: 2
max_iters: 8
lr: 5.0e-3
warmup_ratio: 0
save_steps: 100
evaluation_freq: 0
quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
compute_dtype: bfloat16
lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05}
seed: 1
logging_interval: 2
YAML

# --- bad devices
expect_exit "unknown device in the config" 2 "device" -- train "$cfg" --set device=tpu --work-dir "$work/bad1"
expect_exit "eval --device unknown" 2 "--device tpu: unknown; use auto, cpu, cuda or cuda-emu" -- \
  eval "$st" --data "$work/data.json" --device tpu
if ! "$bin" info | grep -q "^cuda backend: available"; then
  expect_exit "eval --device cuda without a GPU" 2 "--device cuda is not available here" -- \
    eval "$st" --data "$work/data.json" --device cuda
  expect_exit "train device: cuda without a GPU" 2 "device: cuda is not available here" -- \
    train "$cfg" --set device=cuda --work-dir "$work/bad2"
fi

if ! "$bin" info | grep -q "^cuda-emu backend: available"; then
  echo "no emulated CUDA backend in this build: the rest is skipped"
  finish
fi

# --- the same run on the CPU and on the emulated GPU
expect 0 "$bin" train "$cfg" --work-dir "$work/cpu"
expect 0 "$bin" train "$cfg" --work-dir "$work/emu" --set device=cuda-emu
check "python3 - '$work/cpu/metrics.jsonl' '$work/emu/metrics.jsonl' <<'PY'
import json, sys
a, b = ([r['loss'] for r in map(json.loads, open(p)) if 'loss' in r] for p in sys.argv[1:3])
assert len(a) == len(b) == 4, (a, b)
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print('losses cpu %s cuda-emu %s: max rel diff %.3g' % (a, b, worst))
assert worst <= 2e-2, worst
PY"

# --- eval of the emulated run's adapter on both devices
for d in cpu cuda-emu; do
  expect 0 "$bin" eval "$st" --adapter "$work/emu/adapter" --data "$work/data.json" --quant nf4 --max-length 64 \
    --device "$d" --json
  python3 -c "import json; print(json.load(open('$work/out'))['loss'])" >"$work/loss_$d"
done
check "python3 - \$(cat '$work/loss_cpu') \$(cat '$work/loss_cuda-emu') <<'PY'
import sys
c, e = map(float, sys.argv[1:3])
print('eval loss with the cuda-emu adapter: cpu %.6f, cuda-emu %.6f' % (c, e))
assert abs(c - e) <= 2e-2 * c, (c, e)
PY"

# --- chat on the emulated GPU
expect 0 "$bin" chat "$st" --adapter "$work/emu/adapter" --quant nf4 --device cuda-emu --temperature 0 \
  --max-new-tokens 8 --prompt "Who is Tom?"
check "[ -s '$work/out' ]"
finish
