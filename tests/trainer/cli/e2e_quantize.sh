#!/usr/bin/env bash
# ctuner quantize end to end on the stories260k fixture: exit codes, the
# summary line, the files of the output directory (bitsandbytes parts,
# quantization_config, tokenizer files copied), the fp4/blocksize/head/shard/
# dtype flags, `ctuner eval` of the 4-bit output equal to eval --quant nf4 of
# the original and close to fp32 (the gap is printed), and refusals (missing or
# bad flags, non-empty --out, an already-quantized model) with exit code 2 and
# no output or temp directory left. $1 = ctuner binary, $2 = fixtures dir.
# Exits 77 without the fixture (after the checks that do not need it).
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir quantize
val() { sed -n "s/^$1 //p" "$work/out"; } # the value of a "name value" line

# flags checked before any file is read
expect_exit "no model" 2 "MODEL_DIR" -- quantize --out "$work/o"
expect_exit "no --out" 2 "--out" -- quantize "$work/m"
expect_exit "quant type" 2 "--quant-type 'int4'" -- quantize "$work/m" --out "$work/o" --quant-type int4
expect_exit "blocksize 100" 2 "--blocksize 100" -- quantize "$work/m" --out "$work/o" --blocksize 100
expect_exit "blocksize 0" 2 "--blocksize 0" -- quantize "$work/m" --out "$work/o" --blocksize 0
expect_exit "blocksize text" 2 "--blocksize" -- quantize "$work/m" --out "$work/o" --blocksize big
expect_exit "double quant both" 2 "contradict" -- quantize "$work/m" --out "$work/o" --double-quant --no-double-quant
expect_exit "dtype" 2 "--dtype 'int8'" -- quantize "$work/m" --out "$work/o" --dtype int8
expect_exit "shard size" 2 "not a size" -- quantize "$work/m" --out "$work/o" --max-shard-size lots
expect_exit "unknown flag" 2 "--bits" -- quantize "$work/m" --out "$work/o" --bits 4
expect_exit "missing model" 2 "$work/m" -- quantize "$work/m" --out "$work/o"
check "[ ! -e '$work/o' ]"
expect_all 0 "$bin" quantize --help
has "--quantize-output"
has "--no-double-quant"

st="$fx/stories260k-internlm2"
if [ ! -f "$st/model.safetensors" ]; then echo "no stories260k fixture: skipping the rest"; finish 77; fi

# ---- defaults: nf4, double quant, blocksize 64, head unquantized, fp32
q="$work/nf4"
expect 0 "$bin" quantize "$st" --out "$q"
has "quantize: wrote $q: 25 weights to nf4 (double quant, blocksize 64, head unquantized)"
has "MB ->"
has "peak RSS"
cat "$work/out"
for f in config.json model.safetensors tokenizer.model tokenizer_config.json; do check "[ -f '$q/$f' ]"; done
check "cmp -s '$st/tokenizer.model' '$q/tokenizer.model'"
check "[ \$(stat -c %s '$q/model.safetensors') -lt \$(stat -c %s '$st/model.safetensors') ]"
# the safetensors header names every bitsandbytes part (python3-free: grep the header bytes)
hdr="$work/hdr"; head -c 65536 "$q/model.safetensors" | tr -c '[:print:]' '\n' >"$hdr"
for k in model.layers.4.feed_forward.w2.weight.absmax model.layers.4.feed_forward.w2.weight.quant_map \
         model.layers.4.feed_forward.w2.weight.nested_absmax model.layers.4.feed_forward.w2.weight.nested_quant_map \
         model.layers.0.attention.wqkv.weight.quant_state.bitsandbytes__nf4; do
  check "grep -qF '\"$k\"' '$hdr'"
done
check "! grep -qF 'output.weight.absmax' '$hdr'"
check "! grep -qF 'tok_embeddings.weight.absmax' '$hdr'"
check "grep -qF '\"quant_method\": \"bitsandbytes\"' '$q/config.json'"
check "grep -qF '\"bnb_4bit_quant_type\": \"nf4\"' '$q/config.json'"
check "grep -qF '\"bnb_4bit_use_double_quant\": true' '$q/config.json'"
check "grep -qF '\"load_in_4bit\": true' '$q/config.json'"

# ---- refusals: nothing written, nothing left
expect_exit "non-empty out" 2 "not empty" -- quantize "$st" --out "$q"
check "[ -z \"\$(ls -A '$q' | grep -v -e config.json -e model.safetensors -e '^tokenizer')\" ]"
expect_exit "already quantized" 2 "already a quantized model" -- quantize "$q" --out "$work/qq"
check "[ ! -e '$work/qq' ]"
no_temp_left

# ---- fp4, no double quant, blocksize 128, head quantized, bf16, shards
q2="$work/fp4"
expect 0 "$bin" quantize "$st" --out "$q2" --quant-type fp4 --no-double-quant --blocksize 128 --quantize-output \
  --dtype bf16 --max-shard-size 150KB
has "26 weights to fp4 (no double quant, blocksize 128, head quantized)"
has "bf16"
check "[ -f '$q2/model.safetensors.index.json' ] && [ ! -e '$q2/model.safetensors' ]"
check "[ \$(ls '$q2' | grep -c '^model-.*\\.safetensors\$') -gt 1 ]"
check "grep -qF 'output.weight.quant_state.bitsandbytes__fp4' '$q2/model.safetensors.index.json'"
check "! grep -qF 'nested_absmax' '$q2/model.safetensors.index.json'"
check "grep -qF '\"llm_int8_skip_modules\": []' '$q2/config.json'"
check "grep -qF '\"torch_dtype\": \"bfloat16\"' '$q2/config.json'"
expect 0 "$bin" quantize "$st" --out "$work/dq" --double-quant
has "25 weights to nf4 (double quant"
no_temp_left

# ---- eval: the 4-bit checkpoint = quantize-on-load, close to fp32
data="$work/stories.jsonl"; : >"$data"
for s in "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, she saw a big red ball in the park. She ran to the ball and kicked it very hard. The ball flew up high into the sky and landed in a tree." \
         "Tom and his mom went to the store. They wanted to buy some food for dinner. Tom saw a big box of cookies and asked his mom if he could have one. His mom said yes, but only after dinner. Tom was happy and said thank you." \
         "The cat sat on the mat. It was a sunny day and the cat was happy. A little bird came to the window and sang a song. The cat looked at the bird and wanted to play. But the bird flew away, and the cat went back to sleep." \
         "Sue had a small dog named Max. Max liked to run and jump. One day Max found a stick in the garden. He brought it to Sue and wagged his tail. Sue threw the stick far away, and Max ran after it. They played all day until the sun went down."; do
  ids=$("$bin" tokenize "$st" --text "$s") || bad "tokenize failed"
  echo "{\"input_ids\": [${ids// /, }]}" >>"$data"
done
expect 0 "$bin" eval "$st" --data "$data"; l32=$(val loss)
expect 0 "$bin" eval "$q" --data "$data"; lq=$(val loss)
expect 0 "$bin" eval "$st" --data "$data" --quant nf4; lo=$(val loss)
echo "stories260k eval loss (404 scored tokens): fp32 $l32, nf4 checkpoint $lq, nf4 on load $lo"
check_eq "nf4 checkpoint loss = quantize-on-load loss" "$lq" "$lo"
check "awk -v a='$l32' -v b='$lq' 'BEGIN { d = b - a; exit !(a > 0 && d > -0.05 && d < 0.3) }'"
expect 0 "$bin" eval "$q2" --data "$data"; lf=$(val loss)
echo "fp4 / blocksize 128 / head 4-bit / bf16 checkpoint loss: $lf"
check "awk -v a='$l32' -v b='$lf' 'BEGIN { exit !(b > 0 && b - a < 1.0) }'"
no_temp_left
finish
