#!/usr/bin/env bash
# Data-parallel training over MPI (CPU ranks, OpenMPI's mpirun, 2 ranks on
# however many cores: --oversubscribe; as root via OpenMPI's variables) on
# the real stories260k-internlm2 model, QLoRA nf4, dropout on, clipping on:
#  - 2 ranks x accumulative_counts 2 x max_iters 12 against 1 process x
#    accumulative_counts 4 x max_iters 24 (the same micro-batches per
#    optimizer step): every logged loss (one per optimizer step) within 1e-5
#    relative, learning rates equal, token counts equal, grad norms within
#    1e-4 relative, the final adapters within 5e-4 absolute (measured when
#    written: losses 6e-7, adapter 3.4e-5 of weights up to 0.13; fp32 sums in
#    another order, amplified a little by Adam's division by sqrt(v));
#  - the gradient all-reduce in buckets of one layer (CTUNER_DIST_BUCKET_MB),
#    each started as the backward passes its layer, gives the adapter of the
#    same run summing after the backward (CTUNER_DIST_OVERLAP=0) byte for
#    byte (2 ranks: a + b in any bucketing), also without the MPI progress
#    thread (CTUNER_DIST_PROGRESS_THREAD=0), and says how many buckets
#    started during the backward (5 of 5, 0 of 5);
#  - a 2-rank checkpoint resumed by 1 process and a 1-process checkpoint
#    resumed by 2 ranks continue with the other run's losses; a global batch
#    that does not match is exit 2 saying which accumulative_counts to set;
#  - a NaN loss ends the job (exit 1) naming the rank; a bad setting is exit 2;
#  - a rank killed (SIGKILL) ends the job within 60 s, mpirun naming the rank
#    and the signal, and the newest checkpoint resumes; a stuck rank (SIGSTOP)
#    ends it after CTUNER_DIST_TIMEOUT with "no answer from the other ranks";
#  - SIGINT to mpirun: the ranks agree on the iteration, rank 0 saves (inside
#    a window: the summed partial gradient), and --resume auto on 2 ranks ends
#    within tolerance of the uninterrupted run.
# $1 = ctuner binary, $2 = fixtures dir; exit 77 without the fixture, python3,
# mpirun or a build with MPI.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_need_story
command -v mpirun >/dev/null || { echo "mpirun missing (Debian: openmpi-bin): skip"; exit 77; }
"$bin" info | grep -q "MPI yes" || { echo "ctuner built without MPI: skip"; exit 77; }
e2e_workdir mpi
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none # containers forbid the cross-process reads
mpi() { mpirun -np "$1" --oversubscribe "${@:2}"; }
# (a run in the background is mpirun itself, not this function: $! is then
# mpirun's pid, the ranks are its children, and a signal reaches it)

e2e_story_data "$work/data.json" 6
cfg="$work/run.yaml"
cat >"$cfg" <<EOF
pretrained_model_name_or_path: $st
data_path: $work/data.json
max_length: 64
batch_size: 1
accumulative_counts: 2
max_iters: 12
lr: 5.0e-3
max_norm: 1.0
save_steps: 4
save_total_limit: -1
quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4}
lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05}
seed: 1
logging_interval: 2
device: cpu
EOF
one=(--set accumulative_counts=4 --set max_iters=24 --set logging_interval=4 --set save_steps=8)

# compare.py A B [FROM]: logged rows of A's metrics.jsonl against B's (row i
# of each, from row FROM), and the final adapters
cat >"$work/compare.py" <<'EOF'
import json, struct, sys
from array import array
def rows(d):
    return [json.loads(l) for l in open(d + '/metrics.jsonl') if '"loss"' in l]
def tensors(d):
    b = open(d + '/adapter/adapter_model.safetensors', 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        s, e = v['data_offsets']; a = array('f'); a.frombytes(b[8 + n + s:8 + n + e]); out[k] = a
    return out
a, b, first = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0
ra, rb = rows(a)[first:], rows(b)[first:]
assert len(ra) == len(rb) and ra, (len(ra), len(rb))
dl = max(abs(x['loss'] - y['loss']) / y['loss'] for x, y in zip(ra, rb))
dg = max(abs(x['grad_norm'] - y['grad_norm']) / y['grad_norm'] for x, y in zip(ra, rb))
for x, y in zip(ra, rb):
    assert x['lr'] == y['lr'] and x['tokens'] == y['tokens'] and x['step'] == y['step'], (x, y)
    assert abs(x['epoch'] - y['epoch']) < 1e-12, (x, y)
ta, tb = tensors(a), tensors(b)
assert ta.keys() == tb.keys()
dw = max(abs(p - q) for k in ta for p, q in zip(ta[k], tb[k]))
top = max(abs(q) for k in tb for q in tb[k])
print('%d logged steps: loss rel diff %.2e, grad norm rel diff %.2e; adapter max abs diff %.2e (weights up to %.3f)'
      % (len(ra), dl, dg, dw, top))
assert dl <= 1e-5 and dg <= 1e-4 and dw <= 5e-4, (dl, dg, dw)
EOF

# --- 2 ranks against 1 process with accumulative_counts doubled
# (a layer's LoRA grads are 32 KiB: buckets of at least 0.03 MiB hold one layer)
CTUNER_DIST_BUCKET_MB=0.03 expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/r2"
has "data parallel: 2 ranks (mpi), global batch 1 x 2 x 2 = 4 rows"
has "iter 12/12"
has "gradient all-reduce in host memory over MPI (a progress thread polls), 5 buckets of whole layers (at least 0.03 MiB each), each started as the backward passes its layers"
has "gradient all-reduce: 5 buckets per optimizer step, 5.00 of them started during the backward"
check "grep -q 'rank 1 of 2' '$work/err'"
CTUNER_DIST_BUCKET_MB=0.03 CTUNER_DIST_OVERLAP=0 expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/r2after"
has "gradient all-reduce: 5 buckets per optimizer step, 0.00 of them started during the backward"
check "cmp '$work/r2/adapter/adapter_model.safetensors' '$work/r2after/adapter/adapter_model.safetensors'"
CTUNER_DIST_BUCKET_MB=0.03 CTUNER_DIST_PROGRESS_THREAD=0 expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/r2poll"
has "gradient all-reduce in host memory over MPI, 5 buckets"
check "cmp '$work/r2/adapter/adapter_model.safetensors' '$work/r2poll/adapter/adapter_model.safetensors'"
CTUNER_DIST_OVERLAP=yes expect 2 mpi 2 "$bin" train "$cfg" --work-dir "$work/bad"
has_err "CTUNER_DIST_OVERLAP=yes: expected 1 (start each bucket as the backward passes its layers, the default) or 0"
expect 0 "$bin" train "$cfg" --work-dir "$work/r1" "${one[@]}"
has "iter 24/24"
check "python3 '$work/compare.py' '$work/r2' '$work/r1'"
check "[ -f '$work/r2/iter_4.h5' ] && [ -f '$work/r2/iter_12.h5' ] && [ ! -e '$work/r2/iter_2.h5' ]"

# --- a 2-rank checkpoint on 1 process, a 1-process checkpoint on 2 ranks
mkdir -p "$work/r21" "$work/r12"
cp -r "$work/r2/iter_4.h5" "$work/r2/metrics.jsonl" "$work/r21/"
expect 2 "$bin" train "$cfg" --work-dir "$work/r21" --resume auto
has_err "set batch_size 1 and accumulative_counts 4"
expect 0 "$bin" train "$cfg" --work-dir "$work/r21" --resume auto "${one[@]}"
has "resumed from $work/r21/iter_4.h5: iteration 8 of 24, optimizer step 2"
check "python3 '$work/compare.py' '$work/r21' '$work/r1' 2"
cp -r "$work/r1/iter_8.h5" "$work/r1/metrics.jsonl" "$work/r12/"
expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/r12" --resume auto
has "resumed from $work/r12/iter_8.h5: iteration 4 of 12, optimizer step 2"
check "python3 '$work/compare.py' '$work/r12' '$work/r2' 2"

# --- a failing rank ends the job naming itself, with the status it would have alone
expect 1 mpi 2 "$bin" train "$cfg" --work-dir "$work/nan" --set lr=1e30 --set accumulative_counts=1
has_err "rank 0 of 2 ("
has_err "): error: iteration 2 (optimizer step 2): the loss is NaN on rank 0"
check "[ ! -e '$work/nan/iter_1.h5' ]"
CTUNER_DIST_DATA_TIMEOUT=soon expect 2 mpi 2 "$bin" train "$cfg" --work-dir "$work/bad"
has_err "error: CTUNER_DIST_DATA_TIMEOUT=soon: expected a number of seconds > 0"

# --- a rank killed, a rank stuck: the job ends, naming it; the last checkpoint resumes
long=(--set max_iters=100000 --set save_steps=20 --set logging_interval=10)
rank_pid() { # rank_pid MPIRUN_PID RANK: the rank's process (a child of mpirun)
  local p
  for p in $(ps --ppid "$1" -o pid=); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2"; then echo "$p"; return; fi
  done
}
wait_for() { for _ in $(seq 1 3000); do [ -e "$1" ] && return 0; sleep 0.01; done; return 1; }
# victim MPIRUN_PID FILE: rank 1's pid once FILE exists; when either never
# comes, the job is killed (the test fails, it does not hang)
victim() {
  local p=""
  wait_for "$2" && p=$(rank_pid "$1" 1)
  [ -n "$p" ] || { echo "no rank 1 under mpirun $1 or no $2" >&2; kill -KILL "$1"; }
  echo "$p"
}
trap 'jobs -p | xargs -r kill -KILL 2>/dev/null; rm -rf "$work"' EXIT
# hit_rank SIGNAL DIR [VAR=VALUE...]: the long 2-rank job in $work/DIR (with
# those variables), SIGNAL sent to rank 1 once iter_20.h5 exists; sets r1 (its
# pid), code (mpirun's status) and dt (seconds from the signal to the end)
hit_rank() {
  local signal=$1 dir=$2
  shift 2
  env "$@" mpirun -np 2 --oversubscribe "$bin" train "$cfg" --work-dir "$work/$dir" "${long[@]}" >"$work/$dir.out" \
    2>"$work/$dir.err" & # env execs mpirun: $! is mpirun's pid
  local mp=$!
  r1=$(victim "$mp" "$work/$dir/iter_20.h5")
  local t0
  t0=$(date +%s)
  kill "-$signal" "$r1"
  wait "$mp"; code=$?
  dt=$(( $(date +%s) - t0 ))
  echo "rank 1 sent SIG$signal: the job ended in ${dt} s with status $code"
}
hit_rank KILL kill
check "[ -n '$r1' ] && [ $code -ne 0 ] && [ $dt -le 60 ]"
check "grep -q 'rank 1 .*exited on signal 9' '$work/kill.err'" || cat "$work/kill.err"
last=$(ls "$work/kill" | sed -n 's/^iter_\([0-9]*\)\.h5$/\1/p' | sort -n | tail -1)
expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/kill" "${long[@]}" --set max_iters=$((last + 4)) --resume auto
has "resumed from $work/kill/iter_$last.h5"

hit_rank STOP stuck CTUNER_DIST_TIMEOUT=3
check "[ -n '$r1' ] && [ $code -ne 0 ] && [ $dt -le 60 ]"
check "grep -q 'rank 0 of 2 (.*): error: .*no answer from the other ranks within 3 s' '$work/stuck.err'" || cat "$work/stuck.err"
[ -n "$r1" ] && kill -KILL "$r1" 2>/dev/null

# --- SIGINT to mpirun: every rank stops after the same iteration, rank 0 saves
sig=(--set max_iters=600 --set save_steps=1000 --set logging_interval=10)
expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/full" "${sig[@]}"
mpirun -np 2 --oversubscribe "$bin" train "$cfg" --work-dir "$work/int" "${sig[@]}" >"$work/int.out" 2>"$work/int.err" &
mp=$!
wait_for "$work/int/metrics.jsonl"
kill -INT "$mp"
wait "$mp"; code=$?
check "[ $code -ne 0 ]"
check "grep -q 'stopped after iteration' '$work/int.out'" || tail -5 "$work/int.out" "$work/int.err"
expect 0 mpi 2 "$bin" train "$cfg" --work-dir "$work/int" "${sig[@]}" --resume auto
has "iter 600/600"
check "python3 '$work/compare.py' '$work/int' '$work/full'"
echo "e2e_mpi took ${SECONDS} s"
finish
