#!/usr/bin/env bash
# ctuner merge end to end on the stories260k fixture with a PEFT-style adapter
# written here byte by byte (r=2 on all five linears): exit codes, the files of
# the output directory, dtypes, sharding, the 4-bit checkpoint's config, and
# refusals (missing flags, bad values, non-empty --out, mismatched adapter,
# quantized base) with exit code 2 and no output or temp directory left.
# $1 = ctuner binary, $2 = fixtures dir. Exits 77 without the fixture (after
# the checks that do not need it).
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir merge

# flags checked before any file is read
expect_all 2 "$bin" merge --adapter "$work/a" --out "$work/o"
has "--base"
expect_all 2 "$bin" merge --base "$work/b" --out "$work/o"
has "--adapter"
expect_all 2 "$bin" merge --base "$work/b" --adapter "$work/a"
has "--out"
expect_all 2 "$bin" merge --base "$work/b" --adapter "$work/a" --out "$work/o" --dtype int8
has "--dtype 'int8'"
expect_all 2 "$bin" merge --base "$work/b" --adapter "$work/a" --out "$work/o" --quantize int4
has "--quantize 'int4'"
expect_all 2 "$bin" merge --base "$work/b" --adapter "$work/a" --out "$work/o" --max-shard-size lots
has "not a size"
expect_all 0 "$bin" merge --help
has "--max-shard-size"

st="$fx/stories260k-internlm2"
if [ ! -f "$st/model.safetensors" ]; then echo "no stories260k fixture: skipping the rest"; finish 77; fi

# ---- a PEFT adapter for stories260k (dim 64, 8 heads, 4 kv heads, ffn 172, 5 layers)
# written by hand: A = 0.01, B = 0.1 everywhere (f32), r = 2, alpha = 4 (scale 2)
ad="$work/adapter"; mkdir -p "$ad"
cat >"$ad/adapter_config.json" <<'EOF'
{
  "base_model_name_or_path": "stories260k-internlm2",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "lora_alpha": 4,
  "lora_dropout": 0.05,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 2,
  "target_modules": ["wqkv", "wo", "w1", "w2", "w3"],
  "task_type": "CAUSAL_LM",
  "use_rslora": false
}
EOF
rep() { local i; for ((i = 0; i < $2; i++)); do printf "$1"; done; } # a 4-byte pattern N times
A='\x0a\xd7\x23\x3c'; B='\xcd\xcc\xcc\x3d'  # 0.01f, 0.1f little-endian
header='{"__metadata__":{"format":"pt"}'; off=0; : >"$work/data"
for l in 0 1 2 3 4; do
  for m in "attention.wqkv 128 64" "attention.wo 64 64" "feed_forward.w1 172 64" "feed_forward.w3 172 64" \
           "feed_forward.w2 64 172"; do
    set -- $m
    key="base_model.model.model.layers.$l.$1"
    n=$((2 * $3)); rep "$A" $n >>"$work/data"
    header+=",\"$key.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[2,$3],\"data_offsets\":[$off,$((off + 4 * n))]}"
    off=$((off + 4 * n))
    n=$(($2 * 2)); rep "$B" $n >>"$work/data"
    header+=",\"$key.lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[$2,2],\"data_offsets\":[$off,$((off + 4 * n))]}"
    off=$((off + 4 * n))
  done
done
header+='}'
while [ $(( ${#header} % 8 )) -ne 0 ]; do header+=' '; done
len=${#header}
{ for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(( (len >> (8 * i)) & 255 )))"; done
  printf '%s' "$header"; cat "$work/data"; } >"$ad/adapter_model.safetensors"

# ---- the merge: default dtype (the fixture's float32), one shard
expect_all 0 "$bin" merge --base "$st" --adapter "$ad" --out "$work/m"
has "25 weights merged (r=2, scale 2)"
has "peak RSS"
for f in config.json model.safetensors tokenizer.model tokenizer_config.json; do check "[ -s '$work/m/$f' ]"; done
check "[ ! -e '$work/m/model.safetensors.index.json' ]"
check "grep -q '\"torch_dtype\": \"float32\"' '$work/m/config.json'"
check "! grep -q quantization_config '$work/m/config.json'"
check "cmp -s '$st/tokenizer.model' '$work/m/tokenizer.model'"
check "[ \$(stat -c %s '$work/m/model.safetensors') -ge \$(stat -c %s '$st/model.safetensors') ]"
no_temp_left

# bf16: about half the bytes; config says bfloat16
expect_all 0 "$bin" merge --base "$st" --adapter "$ad" --out "$work/m16" --dtype bf16
has "bf16"
check "grep -q '\"torch_dtype\": \"bfloat16\"' '$work/m16/config.json'"
s32=$(stat -c %s "$work/m/model.safetensors"); s16=$(stat -c %s "$work/m16/model.safetensors")
check "[ $((s32 * 100 / s16)) -ge 190 ] && [ $((s32 * 100 / s16)) -le 200 ]"

# shards: 300KB -> several files + an index naming each one
expect_all 0 "$bin" merge --base "$st" --adapter "$ad" --out "$work/msh" --max-shard-size 300KB
nsh=$(ls "$work/msh" | grep -c '^model-000..-of-000..\.safetensors$')
check "[ $nsh -ge 3 ]"
check "[ -s '$work/msh/model.safetensors.index.json' ] && [ ! -e '$work/msh/model.safetensors' ]"
for f in "$work"/msh/model-*.safetensors; do check "grep -q '$(basename "$f")' '$work/msh/model.safetensors.index.json'"; done

# 4-bit: bitsandbytes keys and quantization_config
expect_all 0 "$bin" merge --base "$st" --adapter "$ad" --out "$work/mq" --dtype bf16 --quantize nf4
has "25 quantized to nf4"
check "grep -q '\"quant_method\": \"bitsandbytes\"' '$work/mq/config.json'"
check "grep -q '\"load_in_4bit\": true' '$work/mq/config.json'"
check "grep -q '\"bnb_4bit_quant_type\": \"nf4\"' '$work/mq/config.json'"
check "grep -q '\"bnb_4bit_use_double_quant\": true' '$work/mq/config.json'"
check "grep -aq 'model.layers.4.feed_forward.w2.weight.quant_state.bitsandbytes__nf4' '$work/mq/model.safetensors'"
check "grep -aq '\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": \\[64, 172\\]' '$work/mq/model.safetensors'"
check "[ \$(stat -c %s '$work/mq/model.safetensors') -lt $s16 ]"

# ---- refusals: exit 2, a message, nothing written
mkdir -p "$work/full" && echo keep >"$work/full/notes.txt"
expect_all 2 "$bin" merge --base "$st" --adapter "$ad" --out "$work/full"
has "not empty"
check "[ \"\$(ls '$work/full')\" = notes.txt ]"
expect_all 2 "$bin" merge --base "$work/nothing" --adapter "$ad" --out "$work/o1"
has "$work/nothing"
expect_all 2 "$bin" merge --base "$st" --adapter "$work/nothing" --out "$work/o2"
has "adapter_config.json"
sed 's/"r": 2/"r": 8/' "$ad/adapter_config.json" >"$work/cfg8" && mkdir -p "$work/ad8" &&
  cp "$work/cfg8" "$work/ad8/adapter_config.json" && cp "$ad/adapter_model.safetensors" "$work/ad8/"
expect_all 2 "$bin" merge --base "$st" --adapter "$work/ad8" --out "$work/o3"
has "does not match r = 8"
expect_all 2 "$bin" merge --base "$work/mq" --adapter "$ad" --out "$work/o4"
has "full-precision"
check "[ ! -e '$work/o1' ] && [ ! -e '$work/o2' ] && [ ! -e '$work/o3' ] && [ ! -e '$work/o4' ]"
no_temp_left
finish
