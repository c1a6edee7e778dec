#!/usr/bin/env bash
# ctuner eval end to end on the real stories260k-internlm2 model: pre-tokenized
# JSON Lines made with `ctuner tokenize`, the printed loss/ppl (ppl = exp(loss)),
# the --json object (per-sample sums add up to the loss), packing with
# --batch-tokens (same numbers), --quant nf4 (close to fp32), an alpaca file
# through the template, adapters written here in PEFT's format (B = 0 changes
# nothing, a random B changes the loss), and bad inputs (exit 2 naming the file
# and line, or the flag). $1 = ctuner binary, $2 = fixtures dir; exit 77 without
# the fixture or python3.
set -u
bin="$1"; fx="${2:-}"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_need_story
e2e_workdir eval
val() { sed -n "s/^$1 //p" "$work/out"; } # the value of a "name value" line

# --- data: three stories, tokenized by the model's own tokenizer
data="$work/stories.jsonl"; : >"$data"
for s in "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine." \
         "Tom and his mom went to the store. They wanted to buy some food." \
         "The cat sat on the mat. It was a sunny day and the cat was happy."; do
  ids=$("$bin" tokenize "$st" --text "$s") || bad "tokenize failed"
  echo "{\"input_ids\": [${ids// /, }]}" >>"$data"
done
# the second sample with labels: its first 5 tokens not scored
python3 - "$data" <<'EOF'
import json, sys
p = sys.argv[1]
rows = [json.loads(l) for l in open(p)]
rows[1]["labels"] = [-100] * 5 + rows[1]["input_ids"][5:]
open(p, "w").write("".join(json.dumps(r) + "\n" for r in rows))
EOF
ntok=$(python3 -c "import json,sys; r=[json.loads(l) for l in open('$data')]; print(sum(len(x['input_ids'])-1 for x in r) - 4)")

# --- loss and ppl lines, ppl = exp(loss)
expect 0 "$bin" eval "$st" --data "$data"
loss=$(val loss); ppl=$(val ppl)
check "[ -n '$loss' ] && [ -n '$ppl' ]"
check "python3 -c 'import math; l=float(\"$loss\"); p=float(\"$ppl\"); assert 0.3 < l < 3 and abs(p - math.exp(l)) <= 1e-5 * p, (l, p)'"
check "[ \$(grep -c . '$work/out') -eq 2 ]"

# --- --json: one object; per-sample sums and counts add up to loss and tokens
expect 0 "$bin" eval "$st" --data "$data" --json
cp "$work/out" "$work/one.json"
check "python3 -c '
import json, math
j = json.load(open(\"$work/one.json\"))
s = j[\"samples\"]
assert len(s) == 3 and j[\"tokens\"] == $ntok == sum(x[\"tokens\"] for x in s), j
assert abs(sum(x[\"nll_sum\"] for x in s) / j[\"tokens\"] - j[\"loss\"]) < 1e-9
assert abs(j[\"loss\"] - $loss) < 1e-6 and abs(j[\"ppl\"] - math.exp(j[\"loss\"])) < 1e-9 * j[\"ppl\"]
'"

# --- packed: the same per-sample sums up to fp32 noise
expect 0 "$bin" eval "$st" --data "$data" --json --batch-tokens 4096
cp "$work/out" "$work/packed.json"
check "python3 -c '
import json
a = json.load(open(\"$work/one.json\"))[\"samples\"]; b = json.load(open(\"$work/packed.json\"))[\"samples\"]
assert all(x[\"tokens\"] == y[\"tokens\"] and abs(x[\"nll_sum\"] - y[\"nll_sum\"]) <= 1e-5 * x[\"nll_sum\"] for x, y in zip(a, b)), (a, b)
'"

# --- NF4 on load: close to fp32, not identical
expect 0 "$bin" eval "$st" --data "$data" --quant nf4
lq=$(val loss)
check "python3 -c 'l=$loss; q=$lq; assert q != l and abs(q - l) < 0.15 * l, (l, q)'"

# --- an alpaca record through the chat template; --max-length cuts
printf '[{"instruction": "Tell me a story.", "input": "", "output": "Once upon a time, there was a cat."}]\n' >"$work/alpaca.json"
expect 0 "$bin" eval "$st" --data "$work/alpaca.json" --template internlm2_chat
check "[ -n \"\$(val loss)\" ]"
expect 0 "$bin" eval "$st" --data "$data" --max-length 8 --json
check "python3 -c 'import json; j=json.load(open(\"$work/out\")); assert j[\"tokens\"] == 7 + 3 + 7, j'"

# --- adapters in PEFT's format, written here: B = 0 changes nothing, random B does
mkadapter() { # mkadapter DIR BSCALE
python3 - "$1" "$2" <<'EOF'
import json, os, random, struct, sys
d, bscale = sys.argv[1], float(sys.argv[2])
os.makedirs(d, exist_ok=True)
json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4, "lora_dropout": 0.1,
           "target_modules": ["wqkv", "w2"], "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
           "base_model_name_or_path": "stories260k"}, open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
rng = random.Random(1)
shapes = {"attention.wqkv": (128, 64), "feed_forward.w2": (64, 172)}
tensors = []
for l in range(5):
    for m, (out, inn) in shapes.items():
        k = "base_model.model.model.layers.%d.%s." % (l, m)
        tensors.append((k + "lora_A.weight", (2, inn), [rng.uniform(-1, 1) / inn ** 0.5 for _ in range(2 * inn)]))
        tensors.append((k + "lora_B.weight", (out, 2), [bscale * rng.gauss(0, 1) for _ in range(2 * out)]))
header, blob = {"__metadata__": {"format": "pt"}}, b""
for name, shape, vals in tensors:
    data = struct.pack("<%df" % len(vals), *vals)
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(blob), len(blob) + len(data)]}
    blob += data
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
open(os.path.join(d, "adapter_model.safetensors"), "wb").write(struct.pack("<Q", len(h)) + h + blob)
EOF
}
mkadapter "$work/zero" 0
expect 0 "$bin" eval "$st" --data "$data" --adapter "$work/zero"
check "[ '$(val loss)' = '$loss' ]"
mkadapter "$work/rand" 0.5
expect 0 "$bin" eval "$st" --data "$data" --adapter "$work/rand"
la=$(val loss)
check "python3 -c 'l=$loss; a=$la; assert abs(a - l) > 1e-3, (l, a)'"
expect 0 "$bin" eval "$st" --data "$data" --adapter "$work/rand" --batch-tokens 1000
check "python3 -c 'a=$la; b=$(val loss); assert abs(a - b) <= 1e-5 * a, (a, b)'"

# --- bad input: exit 2 naming the file and line, or the flag
head -1 "$data" >"$work/bad.jsonl"; echo '{"input_ids": [1, 2, 3' >>"$work/bad.jsonl"
expect 2 "$bin" eval "$st" --data "$work/bad.jsonl"
has_err "bad.jsonl:2"
head -1 "$data" >"$work/oov.jsonl"; echo '{"input_ids": [1, 600, 3]}' >>"$work/oov.jsonl"
expect 2 "$bin" eval "$st" --data "$work/oov.jsonl"
has_err "oov.jsonl:2"
expect 2 "$bin" eval "$st" --data "$work/none.jsonl"
has_err "none.jsonl"
expect 2 "$bin" eval "$st"
has_err "--data"
expect 2 "$bin" eval "$st" --data "$data" --quant int8
has_err "int8"
expect 2 "$bin" eval "$st" --data "$data" --template nope
has_err "--template"
expect 2 "$bin" eval "$work/nomodel" --data "$data" --tokenizer "$st"
has_err "nomodel"
mkdir "$work/binad"; cp "$work/zero/adapter_config.json" "$work/binad/"; echo x >"$work/binad/adapter_model.bin"
expect 2 "$bin" eval "$st" --data "$data" --adapter "$work/binad"
has_err "pickle"
expect 0 "$bin" eval --help
check "grep -qF -- '--batch-tokens' '$work/out'"

finish
