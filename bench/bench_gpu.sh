#!/usr/bin/env bash
# QLoRA training on a GPU, ctuner against its Python peer, same model, same
# data, same GPU, one after the other (tests/gpu/run.sh calls it on a lent
# GPU machine; on the CPU it runs too, with --device cpu and a tiny shape, to
# check the script itself):
#
#   bench/bench_gpu.sh [--ctuner PATH] [--device cuda|cpu] [--shapes "1.8b 7b"]
#                      [--seq 2048] [--warmup 2] [--steps 5] [--r 64]
#                      [--deadline-s N] [--fixtures DIR] [--work DIR] [--logs DIR]
#                      [--python PY] [--no-peer] [--no-check]
#   env: CT_LD_PATH: LD_LIBRARY_PATH for the ctuner runs only (run.sh's
#        build-gpu/lib); PYTHONPATH as the peer needs it (run.sh adds the
#        bundled bitsandbytes).
#
# For each shape (tiny: 2 layers of hidden 256 with the 7B's vocab and head
# ratio, for checking; 1.8b, 7b: the real InternLM2-chat configs of
# --fixtures; the 7B last):
#  1. `ctuner make-model --quantize nf4` (random weights, NF4 with double
#     quantization, bf16 embeddings/head/norms, seed 1): quantized as it is
#     generated, never 16-bit in memory or on disk;
#  2. data: warmup + steps pretokenized records of exactly --seq random ids
#     (one sample per packed row, trained in file order: shuffle off);
#  3. the config: QLoRA r 64 (alpha 16, dropout 0.1) on wqkv, wo, w1, w2, w3,
#     max_length --seq packed, batch 1, no accumulation, gradient
#     checkpointing, compute_dtype bfloat16, AdamW lr 2e-4 constant, max_norm
#     1, device --device, logging every iteration, no evaluation, a checkpoint
#     only at the end;
#  4. `ctuner plan CONFIG --budget <GPU memory>` when the build has it: the
#     predicted peak beside the measured one;
#  5. `ctuner train`: tokens/s and step time over the iterations after the
#     warm-up (metrics.jsonl's tokens and elapsed_s), loss of iteration 1,
#     peak memory: metrics.jsonl's dev_peak_mb when the trainer writes it,
#     else its rss_mb; on a GPU also the peak of nvidia-smi's memory.used
#     over the run less its value before (driver context included);
#  6. bench/peer_qlora.py (transformers + PEFT + bitsandbytes QLoRA on the
#     same model converted to the Llama layout, same data and settings):
#     tokens/s, step time, torch.cuda.max_memory_allocated over the steps,
#     the same nvidia-smi peak, loss of step 0 (both start with LoRA B = 0:
#     the base model's loss on record 0, so the two must agree to 0.05; on
#     random weights that catches a different model, dtype or data, not a
#     layout error, which the conversion check below is for).
# Before the shapes: bench/check_peer_convert.sh on --device (the peer's
# conversion gives ctuner's losses in fp32), unless --no-check.
#
# Every run is under `timeout`: min(its own cap, what is left of
# --deadline-s); a step that no longer fits is skipped and says so. Logs
# and results.jsonl go to --logs (default WORK/logs: a dozen files, which
# tests/gpu/run.sh packs into one archive for the device tool); the table at
# the end is also written to LOGS/bench_gpu.txt. Models and data go to --work (default
# /tmp/ctuner-bench-gpu; 7b needs ~4.6 GB there).
# Exit: 0 when every run that was started finished (skips for lack of time
# are not failures), 1 when one failed or timed out, 2 for bad arguments.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CT="" DEV=cuda SHAPES="1.8b 7b" SEQ=2048 WARMUP=2 STEPS=5 R=64 DEADLINE=0 FIX="" WORK=/tmp/ctuner-bench-gpu
LOGS="" PY=${PYTHON:-python3} PEER=1 CHECK=1
while [ $# -gt 0 ]; do
    case "$1" in
        --ctuner) CT=$2; shift 2 ;;
        --device) DEV=$2; shift 2 ;;
        --shapes) SHAPES=$2; shift 2 ;;
        --seq) SEQ=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --steps) STEPS=$2; shift 2 ;;
        --r) R=$2; shift 2 ;;
        --deadline-s) DEADLINE=$2; shift 2 ;;
        --fixtures) FIX=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --logs) LOGS=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --no-check) CHECK=0; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_gpu: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEV" in cuda|cpu) ;; *) echo "bench_gpu: --device cuda or cpu" >&2; exit 2 ;; esac
for v in SEQ WARMUP STEPS R DEADLINE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench_gpu: --${v,,} takes a whole number" >&2; exit 2; }
done
[ "$STEPS" -ge 1 ] || { echo "bench_gpu: --steps must be at least 1" >&2; exit 2; }
if [ -z "$CT" ]; then
    for c in "$ROOT/build-gpu/ctuner" "$ROOT/build/ctuner"; do [ -x "$c" ] && CT=$c && break; done
fi
[ -x "$CT" ] || { echo "bench_gpu: no ctuner binary (--ctuner PATH)" >&2; exit 2; }
if [ -z "$FIX" ]; then
    for f in "$ROOT/build-gpu/fixtures" "$ROOT/../shared/fixtures"; do [ -d "$f/internlm2-chat-7b" ] && FIX=$f && break; done
fi
[ -f "$FIX/internlm2-chat-7b/tokenizer.model" ] || { echo "bench_gpu: no fixtures with internlm2-chat-7b (--fixtures DIR)" >&2; exit 2; }
TOK=$FIX/internlm2-chat-7b
[ -n "$LOGS" ] || LOGS=$WORK/logs
mkdir -p "$WORK" "$LOGS" || exit 2
RES=$LOGS/results.jsonl
: >"$RES"
START=$(date +%s)
status=0

say() { echo "bench_gpu: $*" | tee -a "$LOGS/bench_gpu.log" >&2; }
LDENV=() # the environment of a ctuner run
[ -n "${CT_LD_PATH:-}" ] && LDENV=(LD_LIBRARY_PATH="$CT_LD_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
ctuner() { env "${LDENV[@]}" "$CT" "$@"; }
record() { echo "$1" >>"$RES"; }
# The timeout for a run: min(CAP, what is left of the deadline less 10 s); 0: no time left.
limit() {
    [ "$DEADLINE" -eq 0 ] && { echo "$1"; return; }
    local left=$((DEADLINE - ($(date +%s) - START) - 10))
    if [ "$left" -lt 20 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# Caps per run (s), GPU / CPU: the CPU only runs tiny shapes, slowly.
cap() { # KIND SHAPE
    if [ "$DEV" = cpu ]; then echo 900; return; fi
    case "$1/$2" in
        check/*) echo 120 ;;
        make/7b) echo 150 ;;  make/*) echo 60 ;;
        train/7b) echo 240 ;; train/*) echo 120 ;;
        peer/7b) echo 240 ;;  peer/*) echo 150 ;;
    esac
}

# nvidia-smi's memory.used (MiB) sampled every 100 ms while a run lasts
SMI_PID=""
smi_total=""
if [ "$DEV" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
    smi_total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' ')
fi
smi_start() { # FILE
    SMI_PID=""
    [ -n "$smi_total" ] || return 0
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 >"$1"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >>"$1" 2>/dev/null &
    SMI_PID=$!
}
smi_stop() { # FILE -> SMI_PEAK: the peak less the value before, MiB, or null
    SMI_PEAK=null
    [ -n "$SMI_PID" ] || return 0
    kill "$SMI_PID" 2>/dev/null
    wait "$SMI_PID" 2>/dev/null
    SMI_PID=""
    SMI_PEAK=$(awk 'NR == 1 { b = $1; m = $1 } $1 + 0 > m { m = $1 + 0 } END { if (NR > 1) print m - b; else print "null" }' "$1")
}
trap '[ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null' EXIT

# ---- the environment
say "ctuner $CT on $DEV; shapes $SHAPES; seq $SEQ, r $R, $WARMUP warm-up + $STEPS timed steps;" \
    "deadline ${DEADLINE:-0} s; logs $LOGS"
[ -n "$smi_total" ] && say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
if [ "$PEER" = 1 ]; then
    if pyv=$(timeout 90 "$PY" -c 'import torch, transformers, peft, accelerate, safetensors, bitsandbytes as b
print("torch %s (cuda %s, available %s), transformers %s, peft %s, accelerate %s, bitsandbytes %s" % (torch.__version__,
  torch.version.cuda, torch.cuda.is_available(), transformers.__version__, peft.__version__, accelerate.__version__,
  b.__version__))' 2>"$LOGS/python_env.log"); then
        say "peer: $pyv"
    else
        say "peer: $PY cannot import torch/transformers/peft/accelerate/safetensors/bitsandbytes:" \
            "$(tail -1 "$LOGS/python_env.log"); no peer runs"
        PEER=0
        status=1
    fi
fi

# ---- the conversion check
if [ "$CHECK" = 1 ] && [ "$PEER" = 1 ]; then
    t=$(limit "$(cap check -)")
    if [ "$t" -gt 0 ]; then
        s=$(date +%s)
        timeout "$t" bash "$ROOT/bench/check_peer_convert.sh" \
            --ctuner "$CT" --python "$PY" --device "$DEV" --fixtures "$FIX" --work "$WORK/convert" >"$LOGS/convert_check.log" 2>&1
        rc=$?
        say "conversion check: exit $rc after $(($(date +%s) - s)) s: $(tail -1 "$LOGS/convert_check.log")"
        grep -E "^(ok|FAIL) " "$LOGS/convert_check.log" | sed 's/^/   /' >&2
        record "{\"kind\": \"check\", \"rc\": $rc, \"line\": \"$(tail -1 "$LOGS/convert_check.log" | tr -d '"\\')\"}"
        [ $rc -eq 0 ] || status=1
    else
        say "conversion check: skipped (no time left)"
    fi
fi

# ---- one shape
shape_config() { # SHAPE OUT.json
    case "$1" in
        7b) cp "$FIX/internlm2-chat-7b/config.json" "$2" ;;
        1.8b) cp "$FIX/model-configs/internlm2-chat-1_8b.config.json" "$2" ;;
        tiny) "$PY" - "$FIX/internlm2-chat-7b/config.json" "$2" <<'EOF' ;;
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF
        *) return 1 ;;
    esac
}

write_yaml() { # FILE MODEL DATA WORKDIR
    cat >"$1" <<EOF
pretrained_model_name_or_path: $2
data_path: $3
data_format: pretokenized
max_length: $SEQ
pack_to_max_length: true
shuffle_before_pack: false
batch_size: 1
accumulative_counts: 1
dataloader_num_workers: 0
max_iters: $((WARMUP + STEPS))
lr: 2.0e-4
betas: [0.9, 0.999]
weight_decay: 0
max_norm: 1
param_scheduler: []
save_steps: 0
save_total_limit: 1
evaluation_freq: 0
evaluation_inputs: []
quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: bfloat16}
lora: {r: $R, lora_alpha: 16, lora_dropout: 0.1, target_modules: [wqkv, wo, w1, w2, w3]}
gradient_checkpointing: true
compute_dtype: bfloat16
device: $DEV
logging_interval: 1
seed: 0
work_dir: $4
EOF
}

run_shape() { # SHAPE
    local sh=$1 d=$WORK/$1 t s rc
    mkdir -p "$d"
    shape_config "$sh" "$d/config.json" || { say "$sh: unknown shape (tiny, 1.8b, 7b)"; status=1; return; }
    local model=$d/model-nf4
    rm -rf "$d"/.model-nf4.tmp-* # what a make-model stopped by its timeout left
    # 1. the model (kept between runs of the script with the same shape)
    if [ ! -f "$model/config.json" ]; then
        t=$(limit "$(cap make "$sh")")
        [ "$t" -gt 0 ] || { say "$sh: skipped (no time left to make the model)"; record "{\"kind\": \"skip\", \"shape\": \"$sh\", \"what\": \"make-model\"}"; return; }
        s=$(date +%s)
        timeout "$t" env "${LDENV[@]}" "$CT" make-model --config "$d/config.json" --out "$model" --quantize nf4 \
            --seed 1 --tokenizer "$TOK" >"$LOGS/make_$sh.log" 2>&1
        rc=$?
        say "$sh: make-model --quantize nf4: exit $rc after $(($(date +%s) - s)) s: $(tail -1 "$LOGS/make_$sh.log")"
        if [ $rc -ne 0 ]; then status=1; rm -rf "$model"; record "{\"kind\": \"fail\", \"shape\": \"$sh\", \"what\": \"make-model\", \"rc\": $rc}"; return; fi
        record "$("$PY" - "$sh" "$(($(date +%s) - s))" "$(tail -1 "$LOGS/make_$sh.log")" "$(du -sb "$model" | cut -f1)" <<'EOF'
import json, re, sys
m = re.search(r"peak RSS ([0-9.]+) MiB", sys.argv[3])
print(json.dumps({"kind": "make", "shape": sys.argv[1], "secs": int(sys.argv[2]), "bytes": int(sys.argv[4]),
                  "rss_mib": float(m.group(1)) if m else None}))
EOF
)"
    fi
    # 2. data
    "$PY" - "$d/data.jsonl" "$SEQ" "$((WARMUP + STEPS))" "$(
        "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$d/config.json")" <<'EOF'
import json, random, sys
path, seq, n, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = random.Random(11)
with open(path, "w") as f:
    for _ in range(n):
        f.write(json.dumps({"input_ids": [1] + [r.randrange(3, vocab) for _ in range(seq - 1)]}) + "\n")
EOF
    # 3. the config
    rm -rf "$d/run"
    write_yaml "$d/train.yaml" "$model" "$d/data.jsonl" "$d/run"
    # 4. the plan
    local plan=null
    if ctuner plan --help >/dev/null 2>&1; then
        local budget=${smi_total:+${smi_total}MiB}
        ctuner plan "$d/train.yaml" --budget "${budget:-24GiB}" >"$LOGS/plan_$sh.log" 2>&1
        plan=$(grep "^predicted peak:" "$LOGS/plan_$sh.log" | tail -1 | awk '{print $3}')
        say "$sh: ctuner plan: $(grep "^predicted peak:" "$LOGS/plan_$sh.log" | tail -1)"
        [ -n "$plan" ] || plan=null
    fi
    # 5. ctuner train
    t=$(limit "$(cap train "$sh")")
    if [ "$t" -gt 0 ]; then
        s=$(date +%s)
        smi_start "$LOGS/smi_ctuner_$sh.txt"
        timeout "$t" env "${LDENV[@]}" "$CT" train "$d/train.yaml" >"$LOGS/train_$sh.log" 2>&1
        rc=$?
        smi_stop "$LOGS/smi_ctuner_$sh.txt"
        say "$sh: ctuner train: exit $rc after $(($(date +%s) - s)) s: $(tail -1 "$LOGS/train_$sh.log")"
        [ $rc -eq 0 ] || status=1
        cp "$d/run/metrics.jsonl" "$LOGS/metrics_$sh.jsonl" 2>/dev/null
        record "$("$PY" - "$d/run/metrics.jsonl" "$sh" "$rc" "$WARMUP" "$SEQ" "$SMI_PEAK" "$plan" "$(($(date +%s) - s))" <<'EOF'
import json, sys
path, sh, rc, warm, seq, smi, plan, secs = sys.argv[1:9]
try:
    m = [json.loads(l) for l in open(path) if l.strip() and "loss" in l]
except OSError:
    m = []
m = [e for e in m if "iter" in e and "loss" in e]
r = {"kind": "run", "impl": "ctuner", "shape": sh, "rc": int(rc), "seq": int(seq), "iters": len(m),
     "smi_peak_mib": json.loads(smi), "plan_gib": json.loads(plan), "secs": int(secs)}
if m:
    r["losses"] = [e["loss"] for e in m]
    r["dev_peak_mib"] = max((e["dev_peak_mb"] for e in m if e.get("dev_peak_mb") is not None), default=None)
    r["rss_mib"] = max(e.get("rss_mb") or 0 for e in m)
    by = {e["iter"]: e for e in m}
    w, last = int(warm), max(by)
    a = by.get(w) if w in by else by[min(by)]
    if last > a["iter"]:
        b = by[last]
        r["tokens_per_s"] = (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])
        r["step_s"] = (b["elapsed_s"] - a["elapsed_s"]) / (last - a["iter"])
        r["timed_iters"] = last - a["iter"]
print(json.dumps(r))
EOF
)"
    else
        say "$sh: ctuner train skipped (no time left)"
        record "{\"kind\": \"skip\", \"shape\": \"$sh\", \"what\": \"ctuner train\"}"
    fi
    # 6. the peer
    [ "$PEER" = 1 ] || return
    t=$(limit "$(cap peer "$sh")")
    if [ "$t" -gt 0 ]; then
        s=$(date +%s)
        smi_start "$LOGS/smi_peer_$sh.txt"
        timeout "$t" env PYTHONUNBUFFERED=1 "$PY" "$ROOT/bench/peer_qlora.py" --model "$model" --data "$d/data.jsonl" \
            --device "$DEV" --seq "$SEQ" --warmup "$WARMUP" --steps "$STEPS" --r "$R" --alpha 16 --dropout 0.1 \
            >"$d/peer.json" 2>"$LOGS/peer_$sh.log"
        rc=$?
        smi_stop "$LOGS/smi_peer_$sh.txt"
        say "$sh: peer: exit $rc after $(($(date +%s) - s)) s: $(tail -1 "$LOGS/peer_$sh.log")"
        [ $rc -eq 0 ] || status=1
        record "$("$PY" - "$d/peer.json" "$sh" "$rc" "$SMI_PEAK" "$(($(date +%s) - s))" <<'EOF'
import json, sys
path, sh, rc, smi, secs = sys.argv[1:6]
try:
    r = json.loads(open(path).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    r = {}
r.update(kind="run", impl="peer", shape=sh, rc=int(rc), smi_peak_mib=json.loads(smi), secs=int(secs))
print(json.dumps(r))
EOF
)"
    else
        say "$sh: peer skipped (no time left)"
        record "{\"kind\": \"skip\", \"shape\": \"$sh\", \"what\": \"peer\"}"
    fi
}

for sh in $SHAPES; do run_shape "$sh"; done

# ---- the table
"$PY" - "$RES" "$DEV" "$SEQ" "$WARMUP" "$STEPS" "$R" <<'EOF' | tee "$LOGS/bench_gpu.txt"
import json, sys
res, dev, seq, warm, steps, r = sys.argv[1:7]
recs = [json.loads(l) for l in open(res) if l.strip()]
print("\n== bench_gpu: QLoRA NF4 r %s, seq %s, batch 1, gradient checkpointing, bf16 compute, on %s; "
      "%s warm-up + %s timed steps" % (r, seq, dev, warm, steps))
f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"
hdr = ("shape", "impl", "exit", "tokens/s", "step s", "peak MiB (what)", "nvidia-smi MiB", "plan GiB", "loss[0]", "run s")
print("   %-5s %-7s %4s %9s %7s %-24s %14s %8s %8s %5s" % hdr)
for x in recs:
    if x.get("kind") == "make":
        print("   %-5s make-model --quantize nf4: %d s, %.2f GB, peak RSS %s MiB" % (x["shape"], x["secs"], x["bytes"] / 1e9,
                                                                               f(x.get("rss_mib"), "%.0f")))
    elif x.get("kind") in ("skip", "fail"):
        print("   %-5s %s: %s" % (x["shape"], x["what"], "skipped (no time left)" if x["kind"] == "skip"
                                  else "timed out" if x.get("rc") == 124 else "failed (exit %s)" % x.get("rc")))
    elif x.get("kind") == "check":
        print("   conversion check (peer's Llama layout vs ctuner eval, fp32): exit %d: %s" % (x["rc"], x["line"]))
    elif x.get("kind") == "run":
        if x["impl"] == "ctuner":
            peak = (f(x.get("dev_peak_mib"), "%.0f") + " (dev_peak_mb)") if x.get("dev_peak_mib") is not None \
                else (f(x.get("rss_mib"), "%.0f") + " (RSS)")
        else:
            peak = (f(x.get("peak_alloc_mib"), "%.0f") + " (torch max alloc)") if x.get("peak_alloc_mib") is not None \
                else (f(x.get("peak_rss_mib"), "%.0f") + " (RSS)")
        loss0 = x["losses"][0] if x.get("losses") else None
        print("   %-5s %-7s %4d %9s %7s %-24s %14s %8s %8s %5d" % (
            x["shape"], x["impl"], x["rc"], f(x.get("tokens_per_s"), "%.0f"), f(x.get("step_s"), "%.3f"), peak,
            f(x.get("smi_peak_mib"), "%.0f"), f(x.get("plan_gib"), "%.2f"), f(loss0, "%.4f"), x.get("secs", 0)))
if any(x.get("rc") == 124 for x in recs if x.get("kind") == "run"):
    print("   (exit 124: the run hit its timeout; its numbers are those of the iterations it finished)")
peers = [x for x in recs if x.get("impl") == "peer" and x.get("versions")]
if peers:
    print("   peer: %s" % ", ".join("%s %s" % kv for kv in peers[0]["versions"].items()))
# bf16 activations and the peer's NF4 re-quantization move it by ~1e-3. On random weights (std 0.02) this
# catches a different model, dtype or data, not a layout error (swapping k and v moves a tiny model's loss by
# 1.5e-3): the conversion check does that, on a real model in fp32.
TOL = 0.05
bad = 0
for sh in dict.fromkeys(x.get("shape") for x in recs if x.get("kind") == "run"):
    c = [x for x in recs if x.get("kind") == "run" and x["shape"] == sh and x["impl"] == "ctuner"]
    p = [x for x in recs if x.get("kind") == "run" and x["shape"] == sh and x["impl"] == "peer"]
    if not (c and p):
        continue
    c, p = c[0], p[0]
    words = []
    if c.get("tokens_per_s") and p.get("tokens_per_s"):
        words.append("ctuner / peer tokens/s = %.2fx" % (c["tokens_per_s"] / p["tokens_per_s"]))
    if c.get("losses") and p.get("losses"):
        d = abs(c["losses"][0] - p["losses"][0])
        words.append("loss of step 0 (the same base model on record 0, LoRA B = 0) differs by %.2e: %s" % (
            d, "agrees (< %g)" % TOL if d < TOL else "DIFFERS (>= %g): the two do not train the same model" % TOL))
        bad += d >= TOL
    print("   %s: %s" % (sh, "; ".join(words)))
sys.exit(1 if bad else 0)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
say "done in $(($(date +%s) - START)) s; exit $status"
exit $status
