#!/usr/bin/env bash
# The one-shot check on a lent GPU machine (H100/H200, CUDA 13; none of our
# Debian libraries there), in under 6 minutes: the parity harness on the cuda
# backend (every kernel entry, forward and backward, against the CPU),
# bench/bench_ops at InternLM2-7B shapes (each entry's time, GFLOP/s or GB/s,
# and % of its ceiling: cuBLASLt GEMM of the same shape, or copy bandwidth)
# and bench/bench_gpu.sh (QLoRA training steps, ctuner against transformers +
# PEFT + bitsandbytes, in the time left).
#
# 1. Here, on the machine without a GPU, after every change of the sources:
#        scripts/build_gpu_bundle.sh        # writes build-gpu/bundle.tgz
# 2. One call of the device tool, from the repo root:
#        run(command="bash tests/gpu/run.sh", carry=["build-gpu/bundle.tgz"], timeout_s=420)
#    (command="GPU_BUDGET_S=540 bash tests/gpu/run.sh" with timeout_s=600 gives
#    the training benchmark three more minutes, e.g. when its 7B part was
#    skipped for time)
#
# What it does there: unpacks the bundle into build-gpu/ (programs and their
# libraries; skipped when build-gpu/ already holds the programs), checks that
# every library of the programs resolves with LD_LIBRARY_PATH=build-gpu/lib
# (adding CUDA's own library folder when the loader does not find libcudart or
# libcublasLt by itself) and that nvidia-smi sees a GPU, then runs, each under
# `timeout`:
#     build-gpu/tests/test_parity cuda                                (120 s)
#     build-gpu/bench/bench_ops --backend cuda --shape 7b             (200 s)
#     tests/gpu/nccl_check.sh: `ctuner train` with a NCCL communicator of
#       one rank (CTUNER_DIST_NCCL=1) against the plain run, bit for bit;
#       skipped, saying so, without libnccl.so.2 (a single GPU cannot show
#       data-parallel scaling)                                       (120 s)
#     bench/bench_gpu.sh: QLoRA training, ctuner against transformers +
#       PEFT + bitsandbytes on the same model and data (InternLM2-1.8B, then
#       7B, both NF4, seq 2048; the bundle's bitsandbytes on PYTHONPATH), in
#       what is left of GPU_BUDGET_S (default 360 s) after the three above,
#       less 20 s for the summary; each of its runs has its own timeout,
#       the 7B last, and a run that no longer fits is skipped; first the
#       peer's conversion check (bench/check_peer_convert.sh: the Llama
#       layout gives ctuner's losses, fp32, with that machine's transformers)
# and ends with a summary: parity rows run / passed / failed per op (and the
# failing rows), each bench row's time, % of ceiling and goal, and
# bench_gpu's table (tokens/s, step time, peak memory measured and as
# `ctuner plan` predicts it, for ctuner and the peer). The full logs go to
# $OUT when it is set (the device tool brings back what is written there;
# bench_gpu's dozen files as one bench_gpu.tgz), else to build-gpu/gpu-logs/.
# Exit: 0 all clean; 1 a parity failure, a bench error, a failed training
# run or a timeout; 2 the machine cannot run them (no bundle, a library
# missing, no GPU).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
start=$(date +%s)
bdir=build-gpu
logs="${OUT:-$bdir/gpu-logs}"
mkdir -p "$logs"
progs=("$bdir/tests/test_parity" "$bdir/bench/bench_ops") # what this script runs
others=("$bdir/ctuner")                                    # bundled, checked; bench_gpu.sh runs it if it loads
budget=${GPU_BUDGET_S:-360}

say() { echo "$@" | tee -a "$logs/summary.txt"; }
: >"$logs/summary.txt"

# ---- the bundle
if [ ! -x "${progs[0]}" ] || [ ! -x "${progs[1]}" ] || [ ! -d "$bdir/fixtures" ]; then
  if [ ! -f "$bdir/bundle.tgz" ]; then
    say "no bundle: build it here with scripts/build_gpu_bundle.sh and carry build-gpu/bundle.tgz"
    exit 2
  fi
  tar -xzf "$bdir/bundle.tgz" -C "$bdir" || { say "cannot unpack $bdir/bundle.tgz"; exit 2; }
fi

# ---- libraries: build-gpu/lib first; CUDA's folders when the loader lacks them
ld_path="$root/$bdir/lib"
run_env() { env LD_LIBRARY_PATH="$ld_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
unresolved() { run_env ldd "$1" 2>&1 | grep -E "not found|No such file" || true; }

{
  echo "== ldd with LD_LIBRARY_PATH=$ld_path"
  for p in "${progs[@]}" "${others[@]}"; do echo "-- $p"; run_env ldd "$p" 2>&1; done
} >"$logs/env.txt"

added=""
for p in "${progs[@]}" "${others[@]}"; do
  while read -r name _; do
    case "$name" in libcuda*.so* | libcublas*.so* | libcudnn*.so*) ;; *) continue ;; esac
    found=$(find /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
      /usr/local /usr/lib /opt -name "$name" \( -type f -o -type l \) 2>/dev/null | head -1)
    if [ -n "$found" ] && [[ ":$ld_path:" != *":$(dirname "$found"):"* ]]; then
      ld_path="$ld_path:$(dirname "$found")"
      added="$added $(dirname "$found")"
    fi
  done < <(unresolved "$p" | awk '$2 == "=>" && $3 == "not" { print $1 }')
done
[ -z "$added" ] || say "libraries: CUDA's from$added"

bad=0
ctuner_ok=1
for p in "${progs[@]}" "${others[@]}"; do
  miss=$(unresolved "$p")
  [ -z "$miss" ] && continue
  say "libraries: $p cannot load:"
  say "$miss"
  case " ${progs[*]} " in *" $p "*) bad=1 ;; *) ctuner_ok=0; say "  (no training benchmark without $p: going on)" ;; esac
done
if [ $bad -ne 0 ]; then
  say "stopping: a program this script runs cannot load its libraries (see above; full ldd in $logs/env.txt)"
  exit 2
fi
say "libraries: the programs this script runs resolve (LD_LIBRARY_PATH=$ld_path)"

# ---- the GPU
if ! command -v nvidia-smi >/dev/null 2>&1; then
  say "no GPU: nvidia-smi is not installed here"
  exit 2
fi
if ! gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1) || [ -z "$gpus" ]; then
  say "no GPU: nvidia-smi: $gpus"
  exit 2
fi
say "GPU: $gpus"
{
  echo "== nvidia-smi"
  nvidia-smi 2>&1
} >>"$logs/env.txt"

# ---- the runs
status=0
secs() { echo $(($(date +%s) - $1)); }

t=$(date +%s)
run_env timeout 120 "${progs[0]}" cuda >"$logs/parity.log" 2>&1
prc=$?
say "parity: exit $prc after $(secs "$t") s (log: $logs/parity.log)"
[ $prc -eq 0 ] || status=1

t=$(date +%s)
run_env timeout 200 "${progs[1]}" --backend cuda --shape 7b --iters 10 --budget 1.5 >"$logs/bench_ops.log" 2>&1
brc=$?
say "bench_ops: exit $brc after $(secs "$t") s (log: $logs/bench_ops.log)"
[ $brc -eq 0 ] || status=1

# data-parallel training's NCCL path on this one GPU: a communicator of one
# rank against the plain run (equal bits; one GPU cannot show scaling)
t=$(date +%s)
nrc=0
if [ $ctuner_ok -eq 0 ]; then
  say "nccl: not run ($bdir/ctuner cannot load its libraries)"
else
  run_env timeout 120 bash tests/gpu/nccl_check.sh "$bdir/ctuner" "$bdir/fixtures" /tmp/ctuner-nccl >"$logs/nccl.log" 2>&1
  nrc=$?
  grep "^nccl: " "$logs/nccl.log" | tee -a "$logs/summary.txt"
  say "nccl: exit $nrc after $(secs "$t") s (77: skipped; log: $logs/nccl.log)"
  [ $nrc -eq 0 ] || [ $nrc -eq 77 ] || status=1
fi

# the training benchmark in what is left of the budget (20 s kept for the summary)
left=$((budget - $(secs "$start") - 20))
gdir=/tmp/ctuner-bench-gpu
grc=0
if [ $ctuner_ok -eq 0 ]; then
  say "bench_gpu: not run ($bdir/ctuner cannot load its libraries)"
elif [ $left -lt 60 ]; then
  say "bench_gpu: not run: ${left} s left of GPU_BUDGET_S=$budget"
else
  t=$(date +%s)
  CT_LD_PATH="$ld_path" PYTHONPATH="$root/$bdir/py${PYTHONPATH:+:$PYTHONPATH}" timeout $((left + 30)) \
    bash bench/bench_gpu.sh --ctuner "$bdir/ctuner" --fixtures "$bdir/fixtures" --deadline-s "$left" \
    --work "$gdir" --logs "$gdir/logs" >"$gdir.out" 2>&1
  grc=$?
  mkdir -p "$gdir/logs" && cp "$gdir.out" "$gdir/logs/bench_gpu.out"
  tar -czf "$logs/bench_gpu.tgz" -C "$gdir" logs 2>/dev/null
  say "bench_gpu: exit $grc after $(secs "$t") s (its logs: $logs/bench_gpu.tgz)"
  [ $grc -eq 0 ] || status=1
fi

# ---- the summary
say ""
say "== parity (test_parity cuda)"
if grep -q "^-- cuda against cpu" "$logs/parity.log"; then
  grep "^-- cuda against cpu" "$logs/parity.log" | tee -a "$logs/summary.txt"
  awk '/^   op +run +passed +skipped/ { on = 1; printf "   %-22s %4s %7s %7s %8s\n", "op", "run", "passed", "failed", "skipped"; next }
       on && NF == 4 && $1 !~ /^[0-9]+$/ { printf "   %-22s %4d %7d %7d %8d\n", $1, $2, $3, $2 - $3, $4; next }
       { on = 0 }
       /^[0-9]+ passed, [0-9]+ failed$/ { print "   checks: " $0 }' "$logs/parity.log" | tee -a "$logs/summary.txt"
else
  say "no summary line (exit $prc: 124 = timeout, 77 = no cuda backend): rows printed so far:"
  say "   $(grep -c ' ok  ' "$logs/parity.log") ok, $(grep -c ' FAIL ' "$logs/parity.log") FAIL, $(grep -c '^skip ' "$logs/parity.log") skip"
  tail -3 "$logs/parity.log" | tee -a "$logs/summary.txt"
fi
if grep -q " FAIL " "$logs/parity.log"; then
  say "failing rows (first 20; their messages are in the log):"
  grep " FAIL " "$logs/parity.log" | head -20 | tee -a "$logs/summary.txt"
fi

say ""
say "== bench_ops --backend cuda --shape 7b"
grep -E "^# (bench_ops|copy bandwidth|ceiling)" "$logs/bench_ops.log" | tee -a "$logs/summary.txt"
awk -F'|' 'NF >= 9 && $2 !~ /^ *entry *$/ && $2 !~ /^-+$/ {
    gsub(/^ +| +$/, "", $2); gsub(/^ +| +$/, "", $3); gsub(/^ +| +$/, "", $4); gsub(/^ +| +$/, "", $8); gsub(/^ +| +$/, "", $9)
    printf "   %-17s %-44s %9s %7s  %s\n", $2, $3, $4, $8, $9 }
    $2 ~ /^ *entry *$/ { printf "   %-17s %-44s %9s %7s  %s\n", "entry", "variant", "ms/call", "% ceil", "goal" }' \
  "$logs/bench_ops.log" | tee -a "$logs/summary.txt"
grep -E "^# [0-9]+ rows ran" "$logs/bench_ops.log" | tee -a "$logs/summary.txt"
[ $brc -ne 124 ] || say "bench_ops hit its 200 s limit: the rows above are those it finished"
goals_ok=$(grep -c ' ok |$' "$logs/bench_ops.log")
goals_no=$(grep -c ' NO |$' "$logs/bench_ops.log")
say "goals met: $goals_ok, missed: $goals_no"
if [ -f "$gdir/logs/bench_gpu.txt" ]; then
  cat "$gdir/logs/bench_gpu.txt" | tee -a "$logs/summary.txt"
  say "   (run log: bench_gpu.out in bench_gpu.tgz)"
  grep "^bench_gpu: " "$gdir.out" | tail -25 | sed 's/^/   /' | tee -a "$logs/summary.txt"
fi
say ""
say "total $(secs "$start") s; exit $status"
exit $status
