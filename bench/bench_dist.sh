#!/usr/bin/env bash
# Data-parallel training on CPU ranks: what the overlapped gradient
# all-reduce saves. The same global batch (2 rows per optimizer step) three
# ways, in the same run, alternating:
#   1 process   `ctuner train`, accumulative_counts 2, 2 threads (the reference);
#   2 ranks     `mpirun -np 2`, accumulative_counts 1, 1 thread each, each
#               bucket's sum started as the backward passes its layers;
#   2 ranks, sums after the backward  the same with CTUNER_DIST_OVERLAP=0.
# Reported per row: tokens/s of the global batch (leaving out the first
# optimizer step), seconds per optimizer step, "exposed": ms per step from the
# end of the backward to the end of the sums (ctuner's own summary line:
# what the overlap is meant to shrink), buckets started during the backward,
# rank 0's peak RSS, and the last logged loss (the mean over the last
# optimizer step's 2 rows: the three must agree, the same micro-batches).
#
#   bench/bench_dist.sh [--steps S] [--repeats N] [--seq L] [--r R] [--bucket-mb MB] [--skip-build]
#   env: BUILD (default /tmp/build-bench-dist), WORK (default /tmp/ctuner-bench-dist)
#
# Model: the 125M InternLM2 of bench_train.sh (`ctuner make-model`: hidden
# 768, 12 layers, 12 heads / 4 KV heads, FFN 2048, vocab 32000, bf16 weights),
# LoRA r 64 on the five block linears (36 MiB of grads: 3 MiB a layer), seq
# 256 by default; data: random ids (fixed seed), one packed row per
# micro-batch. On a 2-core machine 2 ranks x 1 thread use the cores the
# 1-process run uses, so the rows compare the same hardware.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-/tmp/build-bench-dist}
WORK=${WORK:-/tmp/ctuner-bench-dist}
FIX=${FIXTURES:-$ROOT/../shared/fixtures}
STEPS=6 REPEATS=2 SEQ=256 R=64 BUCKET_MB=16 SKIP_BUILD=0
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) STEPS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --seq) SEQ=$2; shift 2 ;;
        --r) R=$2; shift 2 ;;
        --bucket-mb) BUCKET_MB=$2; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench_dist: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
command -v mpirun >/dev/null || { echo "bench_dist: mpirun not found (Debian: openmpi-bin)" >&2; exit 2; }
if [ "$SKIP_BUILD" = 0 ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCT_CUDA=OFF >/dev/null
    cmake --build "$BUILD" -j"$(nproc)" --target ctuner >/dev/null
fi
CT=$BUILD/ctuner
[ -x "$CT" ] || { echo "bench_dist: $CT not built" >&2; exit 1; }
"$CT" info | grep -q "MPI yes" || { echo "bench_dist: $CT was built without MPI" >&2; exit 2; }
mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none # containers forbid the cross-process reads

model=$WORK/m125
if [ ! -f "$model/config.json" ]; then
    "$CT" make-model --config "$ROOT/bench/internlm2_125m.json" --out "$model" --dtype bf16 --seed 1 \
        --tokenizer "$FIX/internlm2-chat-7b" >/dev/null
fi
data=$WORK/rows.jsonl
python3 -c "import json,random,sys; r=random.Random(5); n=int(sys.argv[2]); f=open(sys.argv[1],'w'); \
[f.write(json.dumps({'input_ids':[1]+[r.randrange(3,32000) for _ in range(n-1)]})+'\n') for _ in range(64)]" \
    "$data" "$SEQ"
cat >"$WORK/run.yaml" <<EOF
pretrained_model_name_or_path: $model
data_path: $data
data_format: pretokenized
max_length: $SEQ
pack_to_max_length: true
batch_size: 1
accumulative_counts: 1
max_iters: $STEPS
lr: 2.0e-4
max_norm: 1
param_scheduler: []
save_steps: 0
save_total_limit: 1
evaluation_freq: 0
evaluation_inputs: []
lora: {r: $R, lora_alpha: 16, lora_dropout: 0.0}
device: cpu
logging_interval: 1
seed: 0
EOF

RES=$WORK/results.txt
: >"$RES"
# run NAME ACC SETS CMD...: one row of $RES from the run's metrics.jsonl and
# its log (ACC: iterations per optimizer step; SETS: --set options, split on spaces)
run() {
    local name=$1 acc=$2 sets=$3 wd=$WORK/wd
    shift 3
    rm -rf "$wd"
    # shellcheck disable=SC2086
    "$@" "$CT" train "$WORK/run.yaml" --work-dir "$wd" $sets >"$WORK/out.log" 2>&1 ||
        { tail -5 "$WORK/out.log" >&2; return 1; }
    python3 - "$wd/metrics.jsonl" "$WORK/out.log" "$name" "$acc" >>"$RES" <<'EOF'
import json, re, sys
m = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
steps = [r for r in m if r["iter"] % int(sys.argv[4]) == 0] # the rows closing an optimizer step
a, b = steps[0], steps[-1]
log = open(sys.argv[2]).read()
tps = (b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"])
sps = (b["elapsed_s"] - a["elapsed_s"]) / (len(steps) - 1)
e = re.search(r"(\d+) buckets? per optimizer step, ([\d.]+) of them started during the backward; ([\d.]+) ms", log)
rss = re.findall(r"mem (\d+) MiB peak RSS", log)
print("%s|%.1f|%.3f|%s|%s|%s|%.6f" % (sys.argv[3], tps, sps, e.group(3) if e else "-",
      "%s of %s" % (e.group(2), e.group(1)) if e else "-", rss[-1] if rss else "?", b["loss"]))
EOF
}
for rep in $(seq 1 "$REPEATS"); do
    echo "bench_dist: repeat $rep of $REPEATS" >&2
    run "1 process, acc 2, 2 threads" 2 "--set accumulative_counts=2 --set max_iters=$((2 * STEPS)) --set logging_interval=2" \
        env OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2
    run "2 ranks x 1 thread, overlapped" 1 "" env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        CTUNER_DIST_BUCKET_MB="$BUCKET_MB" mpirun -np 2 --oversubscribe
    run "2 ranks x 1 thread, after the backward" 1 "" env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        CTUNER_DIST_BUCKET_MB="$BUCKET_MB" CTUNER_DIST_OVERLAP=0 mpirun -np 2 --oversubscribe
done
echo "seq $SEQ, r $R, $STEPS optimizer steps of 2 rows, buckets >= $BUCKET_MB MiB; best of $REPEATS (tokens/s):"
echo "| run | tokens/s | s/step | exposed all-reduce ms/step | buckets in backward | rank 0 peak RSS MiB | final loss |"
echo "|---|---|---|---|---|---|---|"
sort -t'|' -k1,1 -k2,2gr "$RES" | awk -F'|' '!seen[$1]++ {printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6,$7}'
