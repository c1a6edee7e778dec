#!/usr/bin/env bash
# Faults end to end (docs/ERRORS.md lists each case and its message):
#  - inputs that are not what they claim: a FIFO, a device, a directory as
#    data_path exit 2 at once (a FIFO used to block forever, /dev/zero to be
#    hashed forever, a directory exited 1);
#  - a full disk (a small tmpfs; needs root, else those cells skip with a
#    message) during a checkpoint save, the dataset-cache build, the adapter
#    export, merge and quantize: exit 1 with "No space left on device", never
#    a signal; nothing partial under a final name; the previous checkpoint
#    and adapter intact and `--resume auto` finishes from them;
#  - a read-only work directory: exit 1 or 2 with a message;
#  - kill -9 at random points of train, merge and quantize: every iter_N.h5
#    left reads back whole, `--resume auto` (or the rerun) finishes, the
#    adapter is byte-identical to an uninterrupted run's, no temp file is left
#    after the next start, no more checkpoints than save_total_limit;
#  - our temp files of interrupted saves are reclaimed at the next start, a
#    stranger's file of a similar name is not;
#  - `--resume auto` skips a truncated newest checkpoint with a message;
#    save_total_limit is applied on resume after a crash left one too many;
#  - SIGINT during data preparation: exit 130 at once, nothing saved.
# $1 = ctuner binary, $2 = fixtures dir; exit 77 without the fixture or python3.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_need_story
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
e2e_workdir faults
mounts=()
cleanup() { for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT

e2e_story_data "$work/data.json" 4
cfg="$work/run.yaml"
cat >"$cfg" <<EOF
pretrained_model_name_or_path: $st
data_path: $work/data.json
max_length: 64
batch_size: 2
accumulative_counts: 1
max_iters: 6
lr: 5.0e-3
warmup_ratio: 0
save_steps: 2
save_total_limit: 2
evaluation_freq: 0
lora: {r: 8, lora_alpha: 16}
seed: 1
logging_interval: 2
work_dir: $work/unused
EOF
# Exit code of a command that must not hang: 124 means it did.
run_t() { timeout 60 "$@" >"$work/out" 2>"$work/err"; echo $?; }
no_signal() { # NAME RC: an exit code, not a signal's 128+n (130/143 are asked for elsewhere)
  if [ "$2" -lt 128 ]; then ok; else bad "$1: exit $2 (a signal)"; cat "$work/err"; fi
}
ckpts() { ls "$1" 2>/dev/null | grep -cE '^iter_[0-9]+\.h5$'; }
# our temp names; .mine.tmp-toolongname (below) is a stranger's near miss, not counted
temps() { find "$1" \( -name '*.tmp-*' -o -name 'iter_*.h5.tmp' \) ! -name '.mine.tmp-toolongname' | wc -l; }

# ---- reference: an uninterrupted run
expect 0 "$bin" train "$cfg" --work-dir "$work/ref"
check "[ -f '$work/ref/adapter/adapter_model.safetensors' ]"
ref_adapter="$work/ref/adapter/adapter_model.safetensors"

# ---- inputs that are not regular files
mkfifo "$work/fifo"
for dp in "$work/fifo" /dev/zero "$work"; do
  rc=$(run_t "$bin" train "$cfg" --work-dir "$work/w_in" --set "data_path=$dp")
  check_eq "data_path $dp: exit" "$rc" 2
  if grep -qE "must be a regular file, this is (a FIFO|a character device|a directory)" "$work/err"; then ok; else bad "data_path $dp: $(cat "$work/err")"; fi
  rm -rf "$work/w_in"
done

# a model file that is a FIFO (the others symlinks, as in the Hugging Face cache)
for f in config.json tokenizer.model tokenizer_config.json model.safetensors; do
  m="$work/m_$f"; mkdir -p "$m"
  for g in config.json tokenizer.model tokenizer_config.json model.safetensors; do ln -s "$st/$g" "$m/$g"; done
  rm "$m/$f"; mkfifo "$m/$f"
  rc=$(run_t "$bin" train "$cfg" --work-dir "$work/w_in" --set "pretrained_model_name_or_path=$m")
  check_eq "model's $f a FIFO: exit" "$rc" 2
  if grep -q "must be a regular file, this is a FIFO" "$work/err"; then ok; else bad "FIFO $f: $(cat "$work/err")"; fi
  rm -rf "$work/w_in" "$m"
done
# --resume auto when no checkpoint is intact: exit 2 saying so
mkdir -p "$work/w_dmg"; mkfifo "$work/w_dmg/iter_2.h5"
rc=$(run_t "$bin" train "$cfg" --work-dir "$work/w_dmg" --resume auto)
check_eq "resume auto, nothing intact: exit" "$rc" 2
if grep -q "no checkpoint in $work/w_dmg is intact" "$work/err"; then ok; else bad "nothing intact: $(cat "$work/err")"; fi
rm -rf "$work/w_dmg"

# ---- resource limits, refused before anything is allocated (exit 2, nothing trained)
limit() { # NAME NEEDLE ARGS...: exit 2 with NEEDLE on stderr, no checkpoint
  local name="$1" needle="$2"; shift 2
  rc=$(run_t "$bin" train "$cfg" --work-dir "$work/lim" "$@")
  check_eq "$name: exit" "$rc" 2
  if grep -qF -- "$needle" "$work/err"; then ok; else bad "$name: $(cat "$work/err")"; fi
  check_eq "$name: nothing saved" "$(ckpts "$work/lim")" 0
  rm -rf "$work/lim"
}
limit "max_length above max_position_embeddings" "max_length 1024 is above the model's max_position_embeddings 512" \
  --set max_length=1024
limit "batch_size above the data" "batch_size 16 is larger than the data" --set batch_size=16
limit "lora.r above the layer widths" "use lora.r <= 64" --set lora.r=128
# a model far beyond any machine (config.json only: the check comes before the weights are read)
mkdir -p "$work/huge"
cp "$st/tokenizer.model" "$st/tokenizer_config.json" "$work/huge/"
python3 - "$st/config.json" "$work/huge/config.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=32768, intermediate_size=131072, num_hidden_layers=1000, num_attention_heads=256,
         num_key_value_heads=8)
json.dump(c, open(sys.argv[2], "w"))
EOF2
limit "memory estimate above the machine's" "GiB is available" --set "pretrained_model_name_or_path=$work/huge"
# the explicit override: past the positions, rows still only as long as the data needs
expect 0 "$bin" train "$cfg" --work-dir "$work/long" --set max_length=1024 --set max_length_beyond_model=true \
  --set max_iters=1 --set pack_to_max_length=false
has "rows of 76 (the longest sample; max_length 1024)"
rm -rf "$work/long"

# ---- --resume auto skips a truncated newest checkpoint; retention after a crash
expect 0 "$bin" train "$cfg" --work-dir "$work/d" --set save_total_limit=0
check_eq "all checkpoints kept" "$(ckpts "$work/d")" 3
cp "$work/d/iter_6.h5" "$work/iter_6.keep"
truncate -s 4000 "$work/d/iter_6.h5"
expect 0 "$bin" train "$cfg" --work-dir "$work/d" --resume auto --set save_total_limit=0
has "resume auto: skipping $work/d/iter_6.h5, it is damaged"
has "resumed from $work/d/iter_4.h5"
check "cmp -s '$work/d/adapter/adapter_model.safetensors' '$ref_adapter'"
# a crash after the last save but before retention left 3 with limit 2: resume applies it
cp "$work/iter_6.keep" "$work/d/iter_6.h5"
expect 0 "$bin" train "$cfg" --work-dir "$work/d" --resume auto
has "resumed from $work/d/iter_6.h5"
check_eq "save_total_limit applied on resume" "$(ckpts "$work/d")" 2
check "[ ! -e '$work/d/iter_2.h5' ]"

# ---- our temp files are reclaimed at the next start; a stranger's stays
mkdir -p "$work/d/.iter_4_adapter.tmp-AbC123" "$work/d/dataset_cache"
mkdir -p "$work/d/.adapter.tmp-Q1w2E3"
echo x >"$work/d/iter_8.h5.tmp"; echo x >"$work/d/.config.yaml.tmp-xY12z9"; echo x >"$work/d/.adapter.tmp-Q1w2E3/f"
echo x >"$work/d/dataset_cache/.ds-0123456789abcdef0123456789abcdef.h5.tmp-a1B2c3"
echo x >"$work/d/notes.tmp"; echo x >"$work/d/.mine.tmp-toolongname"
expect 0 "$bin" train "$cfg" --work-dir "$work/d" --resume auto
check_eq "temp files reclaimed" "$(temps "$work/d")" 0
check "[ -f '$work/d/notes.tmp' ] && [ -f '$work/d/.mine.tmp-toolongname' ]"
has "removed 4 temporary file(s)"

# ---- SIGINT during data preparation: exit 130 at once, nothing saved
python3 - "$work/big.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(400000):
        f.write(json.dumps({"conversation": [{"input": "Tell me story number %d." % i,
                                              "output": "Once upon a time there was a cat named Tom %d." % i}]}) + "\n")
EOF
"$bin" train "$cfg" --work-dir "$work/si" --set "data_path=$work/big.jsonl" >"$work/out" 2>"$work/err" &
pid=$!
sleep 1.5
kill -INT $pid
t0=$(date +%s)
wait $pid; rc=$?
t1=$(date +%s)
check_eq "SIGINT during data preparation: exit" "$rc" 130
if grep -q "interrupted by SIGINT while" "$work/err"; then ok; else bad "SIGINT message: $(cat "$work/err")"; fi
check "[ $((t1 - t0)) -le 5 ]"
check_eq "nothing saved" "$(ckpts "$work/si")" 0

# ---- kill -9 at random points of a run, then --resume auto
for k in 1 2 3 4; do
  w="$work/k9"
  "$bin" train "$cfg" --work-dir "$w" --resume auto >"$work/out" 2>"$work/err" &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))$k"
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
  for f in "$w"/iter_*.h5; do [ -e "$f" ] || continue; check "python3 -c 'import sys; d=open(\"$f\",\"rb\").read(8); sys.exit(d!=b\"\\x89HDF\\r\\n\\x1a\\n\")'"; done
  check "[ $(ckpts "$w") -le 3 ]" # at worst one above the limit, until the next start
done
expect 0 "$bin" train "$cfg" --work-dir "$w" --resume auto
check "cmp -s '$w/adapter/adapter_model.safetensors' '$ref_adapter'"
check_eq "kill -9: no temp left after the next start" "$(temps "$w")" 0
check "[ $(ckpts "$w") -le 2 ]"

# ---- kill -9 while the dataset cache is built (40k records: tokenized in ~0.4 s, then
# saved): the next start reclaims what the kill left, and the cache then loads
head -n 40000 "$work/big.jsonl" >"$work/med.jsonl"
for k in 1 2 3; do
  "$bin" train "$cfg" --work-dir "$work/kc" --set "data_path=$work/med.jsonl" --set max_iters=1 >/dev/null 2>&1 &
  pid=$!; sleep "0.$((RANDOM % 6 + 1))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  rm -f "$work/kc"/iter_*.h5; rm -rf "$work/kc"/iter_*_adapter "$work/kc/adapter"
done
expect 0 "$bin" train "$cfg" --work-dir "$work/kc" --set "data_path=$work/med.jsonl" --set max_iters=1
check_eq "cache build killed: no temp left" "$(ls -A "$work/kc/dataset_cache" | grep -c '\.tmp-')" 0
rm -rf "$work/kc"/iter_* "$work/kc/adapter"
expect 0 "$bin" train "$cfg" --work-dir "$work/kc" --set "data_path=$work/med.jsonl" --set max_iters=1
has "from the cache"

# ---- kill -9 during merge and quantize: nothing under --out; the rerun reclaims and succeeds
for k in 1 2 3; do
  "$bin" merge --base "$st" --adapter "$ref_adapter/.." --out "$work/mk" >/dev/null 2>&1 &
  pid=$!; sleep "0.0$((RANDOM % 9 + 1))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  if [ -e "$work/mk" ]; then check "[ -f '$work/mk/model.safetensors' ] || [ -f '$work/mk/config.json' ] || [ -z \"\$(ls -A '$work/mk')\" ]"; rm -rf "$work/mk"; fi
  "$bin" quantize "$st" --out "$work/qk" >/dev/null 2>&1 &
  pid=$!; sleep "0.0$((RANDOM % 9 + 1))"; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  rm -rf "$work/qk"
done
mkdir -p "$work/.mk.tmp-zzzzz1" "$work/.qk.tmp-zzzzz2"
expect 0 "$bin" merge --base "$st" --adapter "$work/ref/adapter" --out "$work/mk"
expect 0 "$bin" quantize "$st" --out "$work/qk"
check_eq "merge/quantize temp dirs reclaimed" "$(ls -A "$work" | grep -cE '^\.(mk|qk)\.tmp-')" 0

# ---- full disks and read-only directories (a tmpfs: root only)
small_fs() { # small_fs DIR SIZE: a fresh tmpfs of SIZE at DIR; 1 when it cannot be mounted
  mkdir -p "$1" && mount -t tmpfs -o "size=$2" tmpfs "$1" 2>/dev/null || return 1
  mounts+=("$1")
}
if ! small_fs "$work/probe" 64k; then
  echo "SKIP the full-disk and read-only cells: mounting a tmpfs needs root"
  finish
fi
ck_bytes=$(stat -c %s "$work/ref/iter_6.h5")

# checkpoint save: room for one checkpoint but not two
small_fs "$work/full1" $(( (ck_bytes * 3 / 2) / 1024 + 64 ))k
rc=$(run_t "$bin" train "$cfg" --work-dir "$work/full1/w")
check_eq "disk full during a checkpoint save: exit" "$rc" 1
no_signal "checkpoint save" "$rc"
if grep -q "No space left on device" "$work/err"; then ok; else bad "ENOSPC message: $(cat "$work/err")"; fi
check_eq "no partial checkpoint" "$(temps "$work/full1/w")" 0
check_eq "the previous checkpoint stays" "$(ckpts "$work/full1/w")" 1
mount -o remount,size=16m "$work/full1"
expect 0 "$bin" train "$cfg" --work-dir "$work/full1/w" --resume auto
check "cmp -s '$work/full1/w/adapter/adapter_model.safetensors' '$ref_adapter'"

# dataset cache on a full disk: the run trains, exits 0 and keeps its last lines
small_fs "$work/full2" 8k
CTUNER_DATASET_CACHE="$work/full2" expect 0 "$bin" train "$cfg" --work-dir "$work/w2"
has "could not write the cache"
has "No space left on device"
has "done: 6 iterations"
check_eq "no cache temp left" "$(ls -A "$work/full2" | wc -l)" 0

# adapter export: a 2-iteration run whose checkpoint fits but whose adapter does not
expect 0 "$bin" train "$cfg" --work-dir "$work/ref2" --set max_iters=2
small_fs "$work/full3" $(( ck_bytes / 1024 + 48 ))k
rc=$(CTUNER_DATASET_CACHE="$work/cache3" run_t "$bin" train "$cfg" --work-dir "$work/full3/w" --set max_iters=2)
check_eq "disk full during the adapter export: exit" "$rc" 1
no_signal "adapter export" "$rc"
if grep -q "adapter.*No space left on device" "$work/err"; then ok; else bad "adapter ENOSPC: $(cat "$work/err")"; fi
check_eq "adapter export: no temp left" "$(temps "$work/full3/w")" 0
check "[ ! -e '$work/full3/w/iter_2_adapter' ] && [ ! -e '$work/full3/w/adapter' ]"
check "[ -f '$work/full3/w/iter_2.h5' ]"
mount -o remount,size=16m "$work/full3"
expect 0 "$bin" train "$cfg" --work-dir "$work/full3/w" --set max_iters=2 --resume auto
has "resumed from $work/full3/w/iter_2.h5"
check "cmp -s '$work/full3/w/adapter/adapter_model.safetensors' '$work/ref2/adapter/adapter_model.safetensors'"

# merge and quantize into a full disk
small_fs "$work/full4" 96k
rc=$(run_t "$bin" merge --base "$st" --adapter "$work/ref/adapter" --out "$work/full4/m")
check_eq "disk full during merge: exit" "$rc" 1
if grep -q "No space left on device" "$work/err"; then ok; else bad "merge ENOSPC message: $(cat "$work/err")"; fi
check "[ ! -e '$work/full4/m' ] && [ -z \"\$(ls -A '$work/full4')\" ]"
rc=$(run_t "$bin" quantize "$st" --out "$work/full4/q")
check_eq "disk full during quantize: exit" "$rc" 1
check "[ ! -e '$work/full4/q' ] && [ -z \"\$(ls -A '$work/full4')\" ]"

# a read-only work directory
small_fs "$work/ro" 1m
mount -o remount,ro "$work/ro"
rc=$(run_t "$bin" train "$cfg" --work-dir "$work/ro/w")
no_signal "read-only work dir" "$rc"
check "[ $rc -eq 1 ] || [ $rc -eq 2 ]"
if grep -q "Read-only file system" "$work/err"; then ok; else bad "read-only message: $(cat "$work/err")"; fi
finish
