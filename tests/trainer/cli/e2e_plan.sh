#!/usr/bin/env bash
# ctuner plan end to end: the built-in InternLM2-7B QLoRA config on the real
# 7B config.json fits 8 GiB (table, largest max_length, the last line's
# format, exit 0); a budget it does not fit exits 3 with ": does not fit"; the
# items that have a closed form are checked against an independent computation
# (python, from config.json: LoRA parameters, 4-bit bytes with double quant,
# the layer-input checkpoints, the staged batch inputs); a longer max_length costs more; refusals (bad
# budget, device, missing config or model directory, bad --set) exit 2.
# $1 = ctuner binary, $2 = fixtures dir. Exits 77 without the 7B config.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir plan
m7="$fx/internlm2-chat-7b"
if [ ! -f "$m7/config.json" ]; then echo "no 7B config fixture: skipping"; finish 77; fi
cfg="$(dirname "$bin")/../configs/internlm2_chat_7b_qlora_alpaca_e3.yaml"
[ -f "$cfg" ] || cfg="$(cd "$(dirname "$0")/../../.." && pwd)/configs/internlm2_chat_7b_qlora_alpaca_e3.yaml"
set7="pretrained_model_name_or_path=$m7"
mib() { sed -n "s/^$1  *\([0-9.]*\) .*/\1/p" "$work/out"; } # the MiB column of an item

expect 0 "$bin" plan "$cfg" --set "$set7"
cat "$work/out"
last="$(tail -n 1 "$work/out")"
check "[[ '$last' =~ ^predicted\ peak:\ [0-9]+\.[0-9]{2}\ GiB\ of\ 8\.00\ GiB:\ fits$ ]]"
has "quantized weights"
has "layer-input checkpoints"
has "optimizer state"
has "allocator slack"
has "largest max_length within 8.00 GiB:"
has "150994944 params, r 64"
# the closed-form items, from config.json alone
python3 - "$m7/config.json" "$work/out" <<'PY' && ok || bad "plan items differ from the independent computation"
import json, sys, re
c = json.load(open(sys.argv[1])); out = open(sys.argv[2]).read()
D, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
hd = D // c["num_attention_heads"]; Q = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * hd
lin = [(Q, D), (D, c["num_attention_heads"] * hd), (F, D), (F, D), (D, F)]
up = lambda b: (b + 255) // 256 * 256
def nf4(n):  # codes, u8 absmax per 64, f32 per 256 absmax blocks (bitsandbytes' double quant)
    nb = -(-n // 64)
    return [(n + 1) // 2, nb, -(-nb // 256) * 4]
quant = sum(sum(nf4(o * i)) for o, i in lin) * L
lora = sum(64 * (o + i) for o, i in lin) * L
T = 2048
ckpt = L * T * D * 2  # the layer inputs; the embedding's rows are staged with the batch (table on the host)
inputs = 2 * (3 * up(4 * T) + up(4 * T + 4) + T * D * 2)  # two slots: ids, labels, positions, runs, rows
def item(name):
    m = re.search(r"^%s +([0-9.]+) " % re.escape(name), out, re.M)
    return float(m.group(1))
for name, want in [("quantized weights", quant), ("LoRA weights", lora * 4), ("LoRA grads", lora * 4),
                   ("layer-input checkpoints", ckpt), ("batch inputs", inputs)]:
    got = item(name) * 2**20
    assert abs(got - want) <= 0.06 * 2**20, (name, got, want)
print("closed-form items agree: quant %.1f MiB, LoRA %d params, checkpoints %.1f MiB" % (quant / 2**20, lora, ckpt / 2**20))
PY
peak2k="$(sed -n 's/^predicted peak: \([0-9.]*\) GiB.*/\1/p' "$work/out")"

# a budget it does not fit: exit 3, same table
expect 3 "$bin" plan "$cfg" --set "$set7" --budget 4GiB
check "[[ '$(tail -n 1 "$work/out")' =~ ^predicted\ peak:\ [0-9.]+\ GiB\ of\ 4\.00\ GiB:\ does\ not\ fit$ ]]"
check "[ ! -s '$work/err' ]"

# longer rows cost more; the CPU plan has no CUDA context
expect 0 "$bin" plan "$cfg" --set "$set7" --set max_length=4096 --budget 64GiB
peak4k="$(sed -n 's/^predicted peak: \([0-9.]*\) GiB.*/\1/p' "$work/out")"
check "python3 -c 'import sys; sys.exit(not ($peak4k > $peak2k))'"
expect 0 "$bin" plan "$cfg" --set "$set7" --device cpu --budget 64GiB
check_eq "cpu: no CUDA context" "$(mib 'CUDA context')" "0.0"

# refusals
expect_exit "bad budget" 2 "--budget 'lots'" -- plan "$cfg" --set "$set7" --budget lots
expect_exit "zero budget" 2 "--budget '0'" -- plan "$cfg" --set "$set7" --budget 0
expect_exit "bad device" 2 "--device 'tpu'" -- plan "$cfg" --set "$set7" --device tpu
expect_exit "no config" 2 "nope.yaml" -- plan "$work/nope.yaml"
expect_exit "no model dir" 2 "pretrained_model_name_or_path" -- plan "$cfg" --set "pretrained_model_name_or_path=$work/none"
expect_exit "bad set" 2 "lora.r" -- plan "$cfg" --set "$set7" --set lora.r=0
expect_exit "no args" 2 "" -- plan
finish
