#!/usr/bin/env bash
# The bundled demo, start to finish on the CPU (a couple of minutes on 2 cores):
#   1. install the Debian packages and build ctuner;
#   2. make a tiny random InternLM2-shaped base model with the bundled
#      SentencePiece tokenizer (examples/tiny);
#   3. QLoRA-train it on the bundled self-cognition data (configs/tiny_demo.yaml):
#      the assistant learns that it is "Tuna"; watch the loss fall;
#   4. chat with the result (base + adapter, unmerged);
#   5. merge the adapter into the base weights and ask the merged model.
# Everything is written under work_dirs/tiny_demo (removed at the start).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/build.sh "$root/build"
ct=./build/ctuner
work=work_dirs/tiny_demo

rm -rf "$work"
echo "== make a tiny base model"
$ct make-model --config examples/tiny/config.json --tokenizer examples/tiny/tokenizer \
  --out "$work/base" --seed 0

echo "== train (QLoRA, NF4 base)"
$ct train configs/tiny_demo.yaml

echo "== chat: base + adapter"
for q in "Who are you?" "What is your name?"; do
  echo ">>> $q"
  $ct chat "$work/base" --adapter "$work/adapter" --quant nf4 --temperature 0 \
    --max-new-tokens 48 --prompt "$q"
done

echo "== merge the adapter into the base weights"
$ct merge --base "$work/base" --adapter "$work/adapter" --out "$work/merged"
echo ">>> Who are you?   (merged model)"
$ct chat "$work/merged" --temperature 0 --max-new-tokens 48 --prompt "Who are you?"

echo
echo "done: loss curve $work/loss_curve.svg, metrics $work/metrics.jsonl,"
echo "      adapter $work/adapter, merged model $work/merged"
