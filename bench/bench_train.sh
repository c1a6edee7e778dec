#!/usr/bin/env bash
# Training throughput (tokens/s) and peak memory on the CPU: `ctuner train`
# against a plain PyTorch implementation of the same LoRA step
# (bench/torch_lora_step.py, Debian's python3-torch), same threads, same data,
# same LoRA initialisation, in the same run.
#
#   bench/bench_train.sh [--threads K] [--repeats N] [--steps-tiny S] [--steps-100m S]
#                        [--checkpointing 0|1] [--cases "tiny 100m 100m-bf16"]
#                        [--compute "f32 bf16"] [--no-nf4]
#                        [--policies "default passive"] [--skip-build]
#   env: BUILD (build dir, default /tmp/build-bench-train), WORK (scratch dir,
#        default /tmp/ctuner-bench-train; models and runs go there)
#
# Cases: tiny = the real stories260k model of ../shared/fixtures (seq 256,
# r 8); 100m = a random InternLM2 made by `ctuner make-model` (hidden 768,
# 12 layers, 12 heads, 4 KV heads, intermediate 2048, vocab 32000; 125M
# parameters, fp32; seq 512, r 64); 100m-bf16 the same in bf16. All: batch 1,
# accumulation 1, alpha 16, dropout 0, AdamW lr 2e-4 constant, max_norm 1,
# gradient checkpointing as --checkpointing (default 1, ctuner's default).
#
# Data: one row of random token ids (fixed seed) as a pretokenized record of
# exactly max_length tokens, trained on at every step by both (labels =
# the next token; ctuner's pretokenized format without "labels").
# LoRA start: the torch script draws A (kaiming-uniform) and B (small random,
# so that every grad is non-zero from the first step) and writes them as a PEFT
# adapter; ctuner starts from it (lora.init_from). So both start from the same
# weights and the losses of every step must agree (fp32 rounding apart); the
# table shows step 0's.
#
# Each implementation runs --repeats times under each OpenMP wait policy of
# --policies ("default": the library's, "passive": OMP_WAIT_POLICY=PASSIVE,
# which matters a lot on a busy machine), always OMP_NUM_THREADS =
# OPENBLAS_NUM_THREADS = K (and torch.set_num_threads(K)); runs alternate
# between the implementations. A row reports its best tokens/s and the policy
# that gave it. tokens/s excludes the first step (warm-up) on both sides: torch
# times steps 1..S-1 itself; ctuner's is (tokens[S] - tokens[1]) /
# (elapsed_s[S] - elapsed_s[1]) from metrics.jsonl (logging every iteration,
# no evaluation, a checkpoint only at the end, after the timed steps). Peak RSS
# is the whole process's maximum resident set (/usr/bin/time %M), for torch
# including ~230 MB of Python + torch libraries (shown as "torch import").
# "torch" rows run torch on the same OpenBLAS build that ctuner links (the
# OpenMP one here; Debian's torch otherwise takes the system libblas.so.3,
# the pthread OpenBLAS here, whose threads fight torch's OpenMP threads on a
# busy machine): "torch, system BLAS" rows show that default (first repeat).
# Rows "torch, malloc" run torch with MALLOC_MMAP_THRESHOLD_=131072: glibc
# then returns freed large blocks at once, showing how much of torch's peak is
# allocator retention rather than live tensors (information only).
# Rows "ctuner nf4": the same run with the base weights quantized to NF4
# (QLoRA); torch has no NF4 here, so it is information, not a comparison.
# --compute lists the precisions to run (default "f32"): f32 = everything in
# fp32 on both sides; bf16 = ctuner with compute_dtype: bfloat16 (the frozen-
# weight GEMMs in bf16 with fp32 sums) against torch under
# torch.autocast("cpu", bfloat16) (linears and attention matmuls in bf16
# through oneDNN). Rows "... bf16" are compared with "torch bf16", the same
# precision; the last column compares every row with fp32 torch.
# --no-nf4 leaves the "ctuner nf4" rows out.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-/tmp/build-bench-train}
WORK=${WORK:-/tmp/ctuner-bench-train}
FIX=${FIXTURES:-$ROOT/../shared/fixtures}
PY=/usr/bin/python3
THREADS=2 REPEATS=2 STEPS_TINY=8 STEPS_100M=5 CKPT=1 CASES="tiny 100m" POLICIES="default passive" SKIP_BUILD=0
COMPUTE=f32 NF4=1

while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --steps-tiny) STEPS_TINY=$2; shift 2 ;;
        --steps-100m) STEPS_100M=$2; shift 2 ;;
        --checkpointing) CKPT=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --policies) POLICIES=$2; shift 2 ;;
        --compute) COMPUTE=$2; shift 2 ;;
        --no-nf4) NF4=0; shift ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_train: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$CKPT" in 0|1) ;; *) echo "bench_train: --checkpointing takes 0 or 1" >&2; exit 2 ;; esac
for p in $COMPUTE; do
    case "$p" in f32|bf16) ;; *) echo "bench_train: --compute takes f32 and/or bf16, not '$p'" >&2; exit 2 ;; esac
done
[ -d "$FIX/stories260k-internlm2" ] || { echo "bench_train: $FIX/stories260k-internlm2 not found (set FIXTURES)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench_train: /usr/bin/time is needed (apt-get install time)" >&2; exit 2; }

"$ROOT/bench/setup_torch.sh"
if [ "$SKIP_BUILD" = 0 ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" --target ctuner >/dev/null
fi
CT=$BUILD/ctuner
[ -x "$CT" ] || { echo "bench_train: $CT not built" >&2; exit 1; }
mkdir -p "$WORK"
# torch (Debian's) calls the system libblas.so.3, whichever BLAS the alternatives
# system picks; ctuner links OpenBLAS directly. The "torch" rows load the very
# OpenBLAS build ctuner uses (its directory first on LD_LIBRARY_PATH, when it
# holds a libblas.so.3), so both multiply with the same GEMM; "torch, system
# BLAS" rows (first repeat only) show the default.
BLASDIR=$(ldd "$CT" | awk '/libopenblas/ {print $3; exit}')
BLASDIR=${BLASDIR:+$(dirname "$(readlink -f "$BLASDIR")")}
[ -n "$BLASDIR" ] && [ -e "$BLASDIR/libblas.so.3" ] || BLASDIR=
echo "bench_train: ctuner's OpenBLAS: ${BLASDIR:-not a separate build}; the system libblas.so.3: $(readlink -f /lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo '?')" >&2
RES=$WORK/results.jsonl
: >"$RES"

# ---- models
TOK7B=$FIX/internlm2-chat-7b # a tokenizer that covers vocab 32000 (ctuner checks ids against it)
make_100m() { # DIR DTYPE
    [ -f "$1/config.json" ] && return 0
    "$CT" make-model --config "$ROOT/bench/internlm2_125m.json" --out "$1" --dtype "$2" --seed 1 --tokenizer "$TOK7B"
}

# ---- data: one record of N random ids (first = BOS), fixed seed
make_row() { # FILE N VOCAB SEED
    "$PY" -c "import json,random,sys; n,v,s=map(int,sys.argv[2:5]); r=random.Random(s); \
open(sys.argv[1],'w').write(json.dumps({'input_ids':[1]+[r.randrange(3,v) for _ in range(n-1)]})+'\n')" "$@"
}

# ---- sanity: the torch model is ctuner's model (packed samples kept apart)
sanity() {
    local m=$FIX/stories260k-internlm2 f=$WORK/sanity.jsonl
    "$PY" -c "import json,random; r=random.Random(3); f=open('$f','w'); \
[f.write(json.dumps({'input_ids':[1]+[r.randrange(3,512) for _ in range(n-1)]})+'\n') for n in (40,100,70,30)]"
    local t c
    t=$(OMP_NUM_THREADS=$THREADS "$PY" "$ROOT/bench/torch_lora_step.py" --model "$m" --data "$f" --seq 256 --r 8 \
        --threads "$THREADS" --eval-only)
    c=$(OMP_NUM_THREADS=$THREADS "$CT" eval "$m" --data "$f" --format pretokenized --json --batch-tokens 256 2>/dev/null)
    "$PY" - "$t" "$c" <<'EOF'
import json, sys
t, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
d = max(abs(a["nll_sum"] - b["nll_sum"]) / b["tokens"] for a, b in zip(t["samples"], c["samples"]))
print("sanity (stories260k, 4 samples packed in one 256-token row): loss torch %.6f, ctuner eval %.6f; "
      "largest per-sample mean-NLL difference %.2e" % (t["loss"], c["loss"], d))
sys.exit(0 if d < 1e-4 and len(t["samples"]) == len(c["samples"]) else 1)
EOF
}

# ---- one run of each kind; each appends a JSON line to $RES
policy_env() { # POLICY -> env assignments
    if [ "$1" = passive ]; then echo "OMP_WAIT_POLICY=PASSIVE"; else echo "BENCH_POLICY=default"; fi
}

run_torch() { # CASE MODEL DATA SEQ R STEPS ADAPTER POLICY VARIANT
    local case=$1 model=$2 data=$3 seq=$4 r=$5 steps=$6 ad=$7 pol=$8 var=$9 out=$WORK/torch.out extra=()
    [ "$var" != sysblas ] && [ -n "$BLASDIR" ] && extra+=(LD_LIBRARY_PATH="$BLASDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    [ "$var" = malloc ] && extra+=(MALLOC_MMAP_THRESHOLD_=131072)
    env "$(policy_env "$pol")" "${extra[@]}" OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
        /usr/bin/time -o "$WORK/time.out" -f '%M' \
        "$PY" "$ROOT/bench/torch_lora_step.py" --model "$model" --data "$data" --seq "$seq" --batch 1 \
        --steps "$steps" --threads "$THREADS" --checkpointing "$CKPT" --r "$r" --alpha 16 --dropout 0 \
        --lr 2e-4 --max-norm 1 --b-init random --save-adapter "$ad" \
        --autocast "$([ "$var" = bf16 ] && echo bf16 || echo none)" >"$out"
    "$PY" - "$out" "$WORK/time.out" "$case" "$pol" "$var" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RES" <<'EOF'
import json, sys
d = json.loads(open(sys.argv[1]).read())
print(json.dumps({"case": sys.argv[3], "impl": "torch" + {"plain": "", "malloc": ", malloc", "sysblas": ", system BLAS",
                                                           "bf16": " bf16"}[sys.argv[5]],
                  "policy": sys.argv[4], "threads": d["threads"], "seq": d["seq"],
                  "tokens_per_s": d["tokens_per_s"], "rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "base_rss_mb": d["base_rss_mb"], "loss0": d["losses"][0], "losses": d["losses"],
                  "load": float(sys.argv[6])}))
EOF
}

run_ctuner() { # CASE MODEL DATA SEQ R STEPS ADAPTER POLICY QUANT COMPUTE
    local case=$1 model=$2 data=$3 seq=$4 r=$5 steps=$6 ad=$7 pol=$8 quant=$9 compute=${10} wd=$WORK/wd yaml=$WORK/run.yaml
    rm -rf "$wd"
    {
        echo "pretrained_model_name_or_path: $model"
        echo "data_path: $data"
        echo "data_format: pretokenized"
        echo "max_length: $seq"
        echo "pack_to_max_length: true"
        echo "batch_size: 1"
        echo "accumulative_counts: 1"
        echo "max_iters: $steps"
        echo "lr: 2.0e-4"
        echo "betas: [0.9, 0.999]"
        echo "weight_decay: 0"
        echo "max_norm: 1"
        echo "param_scheduler: []"
        echo "save_steps: 0"
        echo "save_total_limit: 1"
        echo "evaluation_freq: 0"
        echo "evaluation_inputs: []"
        [ "$quant" = nf4 ] && echo "quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_use_double_quant: true}"
        echo "lora: {r: $r, lora_alpha: 16, lora_dropout: 0.0, init_from: $ad}"
        echo "gradient_checkpointing: $([ "$CKPT" = 1 ] && echo true || echo false)"
        echo "compute_dtype: $([ "$compute" = bf16 ] && echo bfloat16 || echo float32)"
        echo "device: cpu"
        echo "logging_interval: 1"
        echo "seed: 0"
        echo "work_dir: $wd"
    } >"$yaml"
    env "$(policy_env "$pol")" OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
        /usr/bin/time -o "$WORK/time.out" -f '%M' "$CT" train "$yaml" >"$WORK/ctuner.out" 2>&1 ||
        { tail -5 "$WORK/ctuner.out" >&2; return 1; }
    "$PY" - "$wd/metrics.jsonl" "$WORK/time.out" "$case" "$pol" "$quant" "$THREADS" "$seq" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$compute" >>"$RES" <<'EOF'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
a, b = m[0], m[-1]
tps = (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]) if len(m) > 1 else a["tokens_per_s"]
print(json.dumps({"case": sys.argv[3], "impl": "ctuner" + (" nf4" if sys.argv[5] == "nf4" else "")
                                               + (" bf16" if sys.argv[9] == "bf16" else ""),
                  "policy": sys.argv[4], "threads": int(sys.argv[6]), "seq": int(sys.argv[7]),
                  "tokens_per_s": tps, "rss_mb": int(open(sys.argv[2]).read().split()[-1]) / 1024,
                  "train_rss_mb": b["rss_mb"], "loss0": a["loss"], "losses": [e["loss"] for e in m],
                  "load": float(sys.argv[8])}))
EOF
}

run_case() { # CASE MODEL SEQ R STEPS VOCAB
    local case=$1 model=$2 seq=$3 r=$4 steps=$5 vocab=$6 data=$WORK/row_$1.jsonl ad=$WORK/adapter_$1
    make_row "$data" "$seq" "$vocab" 11
    echo "{\"kind\": \"case\", \"case\": \"$case\", \"model\": \"$model\", \"r\": $r, \"seq\": $seq}" >>"$RES"
    for rep in $(seq 1 "$REPEATS"); do
        for pol in $POLICIES; do
            echo "  $case: repeat $rep, policy $pol (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
            for p in $COMPUTE; do
                run_torch "$case" "$model" "$data" "$seq" "$r" "$steps" "$ad" "$pol" "$([ "$p" = bf16 ] && echo bf16 || echo plain)"
                run_ctuner "$case" "$model" "$data" "$seq" "$r" "$steps" "$ad" "$pol" none "$p"
                [ "$NF4" = 1 ] && run_ctuner "$case" "$model" "$data" "$seq" "$r" "$steps" "$ad" "$pol" nf4 "$p"
            done
            if [ "$rep" = 1 ] && [[ " $COMPUTE " == *" f32 "* ]]; then
                run_torch "$case" "$model" "$data" "$seq" "$r" "$steps" "$ad" "$pol" malloc
                [ -n "$BLASDIR" ] && run_torch "$case" "$model" "$data" "$seq" "$r" "$steps" "$ad" "$pol" sysblas
            fi
        done
    done
}

# ---- the GEMM ceiling: OpenBLAS sgemm (ctuner's build) at the model's shapes, same threads
sgemm_ceiling() {
    env ${BLASDIR:+LD_LIBRARY_PATH=$BLASDIR} OMP_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
        "$PY" - "$THREADS" >>"$RES" <<'EOF'
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
for dt, kind in ((torch.float32, "sgemm"), (torch.bfloat16, "bf16 GEMM (torch's oneDNN)")):
    best = {}
    for m, k, n in [(512, 768, 2048), (512, 2048, 768), (512, 768, 1280), (512, 768, 32000)]:
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        a @ b
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(5):
                a @ b
            g = 2.0 * m * k * n * 5 / (time.perf_counter() - t) / 1e9
            best[(m, k, n)] = max(best.get((m, k, n), 0), g)
    print(json.dumps({"kind": "sgemm", "what": kind, "gflops": sum(best.values()) / len(best),
                      "shapes": {"%dx%dx%d" % s: round(g, 1) for s, g in best.items()}}))
EOF
}

echo "bench_train: $(nproc) cores, threads $THREADS, checkpointing $CKPT, repeats $REPEATS, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
sanity
sgemm_ceiling
for c in $CASES; do
    case "$c" in
        tiny) run_case tiny "$FIX/stories260k-internlm2" 256 8 "$STEPS_TINY" 512 ;;
        100m) make_100m "$WORK/m100_fp32" fp32 >&2; run_case 100m "$WORK/m100_fp32" 512 64 "$STEPS_100M" 32000 ;;
        100m-bf16) make_100m "$WORK/m100_bf16" bf16 >&2; run_case 100m-bf16 "$WORK/m100_bf16" 512 64 "$STEPS_100M" 32000 ;;
        *) echo "bench_train: unknown case '$c' (tiny, 100m, 100m-bf16)" >&2; exit 2 ;;
    esac
done

# ---- the table: best tokens/s per (case, impl) over repeats and policies
"$PY" - "$RES" "$CKPT" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in recs if "kind" not in r]
ckpt = int(sys.argv[2])
sgemm = [r for r in recs if r.get("kind") == "sgemm"]


def flops_per_token(case):
    """GEMM + attention FLOPs of one trained token (estimate): forward, the
    checkpointed recompute of the blocks, backward without frozen-weight grads;
    attention counted over the full T x T (no causal saving)."""
    c = [r for r in recs if r.get("kind") == "case" and r["case"] == case][0]
    cfg = json.load(open(c["model"] + "/config.json"))
    D, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd, r, T = D // H, c["r"], c["seq"]
    shapes = [(D, (H + 2 * KV) * hd), (H * hd, D), (D, I), (D, I), (I, D)]   # (in, out): wqkv wo w1 w3 w2
    blk = L * sum(i * o for i, o in shapes)
    lora = L * r * sum(i + o for i, o in shapes)
    head = D * V
    attn = L * 4 * T * D
    fwd = 2 * (blk + head) + 2 * lora + attn
    rec = ckpt * (2 * blk + 2 * lora + attn)
    bwd = 2 * (blk + head) + 4 * lora + 2 * attn
    return fwd + rec + bwd
order = ["torch", "torch, system BLAS", "torch, malloc", "ctuner", "ctuner nf4",
         "torch bf16", "ctuner bf16", "ctuner nf4 bf16"]
notes = []
print("\n| model | impl | threads | seq | tokens/s (best) | OMP wait | est. GFLOP/s | peak RSS MB | loss step 0 | speedup vs torch, same precision | vs fp32 torch | load (1 min) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for case in dict.fromkeys(r["case"] for r in rows):
    best = {}
    for r in rows:
        if r["case"] == case and (r["impl"] not in best or r["tokens_per_s"] > best[r["impl"]]["tokens_per_s"]):
            best[r["impl"]] = r
    ref32 = best.get("torch")
    for impl in order:
        if impl not in best:
            continue
        b = best[impl]
        ref = best.get("torch bf16" if impl.endswith("bf16") else "torch")
        loads = [r["load"] for r in rows if r["case"] == case and r["impl"] == impl]
        rss = "%.0f" % b["rss_mb"] + (" (torch import %.0f)" % b["base_rss_mb"] if "base_rss_mb" in b else "")
        sp = "%.2fx" % (b["tokens_per_s"] / ref["tokens_per_s"]) if ref else "-"
        sp32 = "%.2fx" % (b["tokens_per_s"] / ref32["tokens_per_s"]) if ref32 else "-"
        print("| %s | %s | %d | %d | %.1f | %s | %.0f | %s | %.6f | %s | %s | %.1f-%.1f |" % (
            case, impl, b["threads"], b["seq"], b["tokens_per_s"], b["policy"],
            b["tokens_per_s"] * flops_per_token(case) / 1e9, rss, b["loss0"], sp, sp32, min(loads), max(loads)))
    for tn, cn in (("torch", "ctuner"), ("torch bf16", "ctuner bf16")):
        t, c = best.get(tn), best.get(cn)
        if t and c:
            n = min(len(t["losses"]), len(c["losses"]))
            d = max(abs(a - b) for a, b in zip(t["losses"][:n], c["losses"][:n]))
            notes.append("%s: the losses of all %d steps, %s vs %s (best runs): largest difference %.2e"
                         % (case, n, tn, cn, d))
print()
for case in dict.fromkeys(r["case"] for r in rows):
    notes.append("%s: %.3f GFLOP per trained token (estimate: GEMMs + attention over the full T x T)"
                 % (case, flops_per_token(case) / 1e9))
for g in sgemm:
    notes.append("GEMM ceiling: %s at the 100M model's shapes (through torch), same threads: %.0f GFLOP/s (%s)"
                 % (g.get("what", "sgemm"), g["gflops"], ", ".join("%s: %s" % kv for kv in g["shapes"].items())))
for n in notes:
    print(n)
print("checkpointing %s; every run: %s" % (sys.argv[2], sys.argv[1]))
EOF
