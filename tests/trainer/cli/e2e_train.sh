#!/usr/bin/env bash
# ctuner train end to end on the real stories260k-internlm2 model (QLoRA nf4)
# with a small conversation data set and config written here:
#  - a run exits 0, prints the resolved config, and leaves config.yaml,
#    metrics.jsonl, loss_curve.svg (valid SVG with a curve), eval_log.jsonl,
#    iter_*.h5 + iter_*_adapter/ (save_total_limit 2) and adapter/; the logged
#    loss falls;
#  - the exported adapter reproduces the trained model: `ctuner eval --adapter
#    work/adapter` gives the loss the run reported for the same data
#    (--eval-data) within 1e-5 relative, below the base model's;
#  - SIGINT while training: exit status 130 after saving a checkpoint;
#    `--resume auto` finishes with the same adapter bytes as the run that
#    was never interrupted;
#  - compute_dtype: bfloat16 learns as well, and its adapter evaluated in fp32
#    is within 3% of the loss the run reported;
#  - a fresh run into a work dir with checkpoints, a bad config value and a bad
#    --set exit 2 naming file:line:column or the argument;
#  - log-dataset: statistics, masked rendering, bad flags.
# $1 = ctuner binary, $2 = fixtures dir; exit 77 without the fixture or python3.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_need_story
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" # the same thread count in every run: bit-identical results
e2e_workdir train
has_out() { if grep -qF -- "$1" "$work/out"; then ok; else bad "stdout lacks '$1'"; fi; } # (no dump: a training log)

# --- data: short conversations the tiny story model can learn
e2e_story_data "$work/data.json" 6
cfg="$work/run.yaml"
cat >"$cfg" <<EOF
# a tiny run (docs/CONFIG.md)
pretrained_model_name_or_path: $st
data_path: $work/data.json
max_length: 64
batch_size: 2
accumulative_counts: 2
max_iters: 40
lr: 5.0e-3
warmup_ratio: 0
save_steps: 10
save_total_limit: 2
evaluation_freq: 20
evaluation_max_new_tokens: 8
evaluation_inputs: [Tell me a story.]
quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05}
seed: 1
logging_interval: 4
work_dir: $work/run1
EOF

# --- a whole run
expect 0 "$bin" train "$cfg" --eval-data "$work/data.json"
has_out "lora:"
has_out "iter 40/40"
has_out "evaluation before training"
w="$work/run1"
for f in config.yaml metrics.jsonl loss_curve.svg eval_log.jsonl iter_30.h5 iter_40.h5 iter_40_adapter/adapter_model.safetensors \
         adapter/adapter_config.json adapter/adapter_model.safetensors; do
  check "[ -e '$w/$f' ]"
done
check "[ ! -e '$w/iter_10.h5' ] && [ ! -e '$w/iter_20_adapter' ]" # save_total_limit 2
check "python3 - '$w/metrics.jsonl' <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
logs = [r for r in rows if 'loss' in r]
assert [r['iter'] for r in logs] == list(range(4, 41, 4)), [r['iter'] for r in logs]
for r in logs:
    assert set(r) >= {'iter', 'step', 'epoch', 'loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_s', 'elapsed_s', 'rss_mb', 'dev_mb', 'dev_peak_mb'}, r
first, last = logs[0]['loss'], logs[-1]['loss']
print('loss %.4f -> %.4f' % (first, last))
assert last < 0.7 * first, (first, last)
assert logs[-1]['step'] == 20 and logs[-1]['tokens'] > 0
EOF"
check "python3 - '$w/loss_curve.svg' <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = '{http://www.w3.org/2000/svg}'
assert root.tag == ns + 'svg'
lines = root.findall(ns + 'polyline')
assert len(lines) == 1 and len(lines[0].get('points').split()) == 10, lines
assert any(t.text == 'iteration' for t in root.iter(ns + 'text'))
EOF"
check "[ \$(grep -c '\"when\":\"' '$w/eval_log.jsonl') -eq 3 ]" # before, at 20, after

# --- the adapter reproduces the trained model's loss (ctuner eval vs the run's --eval-data)
expect 0 "$bin" eval "$st" --adapter "$w/adapter" --data "$work/data.json" --quant nf4 --max-length 64 --json
after=$(python3 -c "import json,sys; print(repr(json.load(open('$work/out'))['loss']))")
expect 0 "$bin" eval "$st" --data "$work/data.json" --quant nf4 --max-length 64
before=$(sed -n 's/^loss //p' "$work/out")
check "python3 - '$w/metrics.jsonl' '$after' '$before' <<'EOF'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if 'eval_loss' in l][-1]['eval_loss']
after, before = float(sys.argv[2]), float(sys.argv[3])
print('eval loss: base %.6f, in training %.9f, ctuner eval with the adapter %.9f' % (before, ev, after))
assert abs(ev - after) <= 1e-5 * after, (ev, after)
assert after < before, (after, before)
EOF"

# --- SIGINT: a checkpoint, status 130, then --resume auto ends bit-identical to run1
"$bin" train "$cfg" --work-dir "$work/run2" >"$work/sig.out" 2>"$work/sig.err" &
pid=$!
for _ in $(seq 1 3000); do [ -s "$work/run2/metrics.jsonl" ] && break; sleep 0.01; done
kill -INT "$pid"
wait "$pid"; code=$?
check "[ $code -eq 130 ]" || tail -5 "$work/sig.out" "$work/sig.err"
check "grep -q 'stopped after iteration' '$work/sig.out'"
check "grep -q 'resume auto' '$work/sig.err'"
check "ls '$work/run2'/iter_*.h5 >/dev/null 2>&1"
check "[ ! -e '$work/run2/adapter' ]"
expect 0 "$bin" train "$cfg" --work-dir "$work/run2" --resume auto
has_out "resumed from"
check "cmp -s '$w/adapter/adapter_model.safetensors' '$work/run2/adapter/adapter_model.safetensors'"
check "python3 - '$w/metrics.jsonl' '$work/run2/metrics.jsonl' <<'EOF'
import json, sys
a, b = ([(r['iter'], r['loss']) for r in map(json.loads, open(p)) if 'loss' in r] for p in sys.argv[1:3])
assert a == b, (a, b)
EOF"

# --- compute_dtype: bfloat16 (bf16 frozen-weight GEMMs): the same run learns as well;
#     its adapter, evaluated in fp32 by ctuner eval, gives close to the loss it reported
expect 0 "$bin" train "$cfg" --work-dir "$work/run3" --set compute_dtype=bfloat16 --eval-data "$work/data.json"
check "grep -q '^compute_dtype: bfloat16' '$work/run3/config.yaml'"
expect 0 "$bin" eval "$st" --adapter "$work/run3/adapter" --data "$work/data.json" --quant nf4 --max-length 64 --json
after3=$(python3 -c "import json,sys; print(repr(json.load(open('$work/out'))['loss']))")
check "python3 - '$w/metrics.jsonl' '$work/run3/metrics.jsonl' '$after3' <<'EOF'
import json, sys
f32, b16 = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
l32, l16 = ([r['loss'] for r in m if 'loss' in r] for m in (f32, b16))
ev16 = [r['eval_loss'] for r in b16 if 'eval_loss' in r][-1]
print('bf16 compute: loss %.4f -> %.4f (f32: %.4f -> %.4f); eval in training %.6f, ctuner eval (f32) %.6f'
      % (l16[0], l16[-1], l32[0], l32[-1], ev16, float(sys.argv[3])))
assert l16 != l32, 'bf16 compute changed nothing'
assert abs(l16[0] - l32[0]) <= 1e-2 * l32[0], (l16[0], l32[0])
assert l16[-1] < 0.7 * l16[0], l16
assert abs(ev16 - float(sys.argv[3])) <= 3e-2 * ev16, (ev16, sys.argv[3])
EOF"

# --- refusals and bad input
expect 2 "$bin" train "$cfg" --work-dir "$work/bad" --set compute_dtype=float16
has_err "compute_dtype"
expect 2 "$bin" train "$cfg"                         # run1 has checkpoints: continue it or pick another dir
has_err "--resume auto"
printf 'pretrained_model_name_or_path: %s\ndata_path: %s\nlr: -1\n' "$st" "$work/data.json" >"$work/bad.yaml"
expect 2 "$bin" train "$work/bad.yaml" --work-dir "$work/bad"
has_err "bad.yaml:3:5"
expect 2 "$bin" train "$cfg" --work-dir "$work/bad" --set lora.r=0
has_err "--set lora.r=0"
expect 2 "$bin" train "$cfg" --work-dir "$work/bad" --set lora.rank=4
has_err "lora.rank"
expect 2 "$bin" train "$cfg" --work-dir "$work/bad" --resume "$work/nothing.h5"
has_err "nothing.h5"
expect 2 "$bin" train "$cfg" --work-dir "$work/bad" --set "data_path=$work/missing.json"
has_err "missing.json"

# --- log-dataset: statistics and samples without the model
expect 0 "$bin" log-dataset "$cfg" --count 2
has_out "token efficiency"
has_out "kept samples: 12"
has_out "«Once upon a time"
expect 0 "$bin" log-dataset "$w/config.yaml" --show all --index 3 --count 1
has_out "[ids]"
has_out "[labels]"
has_out "-100"
expect 2 "$bin" log-dataset "$cfg" --index 99
has_err "--index 99"
expect 2 "$bin" log-dataset "$cfg" --show colors
has_err "--show"

finish
