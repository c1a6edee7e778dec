#!/usr/bin/env bash
# Checks that bench/peer_qlora.py converts a ctuner model to the Llama layout
# without changing it: for each model below, the per-sample losses of
# `ctuner eval --json` (the CPU, fp32) and of transformers' LlamaForCausalLM
# on the converted weights (`peer_qlora.py --eval-only`, fp32, on --device)
# must agree to --tol (largest |mean-NLL difference| over the samples).
#   stories260k       the real fixture: fp32, 8 query / 4 KV heads of 8, theta 1e4
#   stories-nf4       it through `ctuner quantize` (NF4, double quantization):
#                     the peer's own dequantizer against ctuner's
#   stories-fp4       `ctuner quantize --quant-type fp4 --no-double-quant --blocksize 128`
#   gqa4-nf4          `ctuner make-model --quantize nf4`, bf16, 8 query heads
#                     over 2 KV heads of 16 (G = 4, InternLM2-7B's ratio), theta 1e6
# Data: 3 pretokenized records of random ids (33, 100 and 64 tokens).
#
#   bench/check_peer_convert.sh --ctuner PATH [--python PY] [--device cpu|cuda]
#                               [--fixtures DIR] [--work DIR] [--tol 1e-4]
# Needs a python with torch, transformers, accelerate and safetensors (not
# bitsandbytes): on the CPU, bench/setup_peer_venv.sh makes one. env CT_LD_PATH: LD_LIBRARY_PATH for the ctuner runs only. Prints one line per model and "N passed, M failed"; exit 0
# when all pass, 1 otherwise, 2 for bad arguments or a missing fixture.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CT="" PY=${PYTHON:-python3} DEV=cpu FIX=$ROOT/../shared/fixtures WORK="" TOL=1e-4
while [ $# -gt 0 ]; do
    case "$1" in
        --ctuner) CT=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --device) DEV=$2; shift 2 ;;
        --fixtures) FIX=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --tol) TOL=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "check_peer_convert: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$CT" ] || { echo "check_peer_convert: --ctuner PATH (the ctuner binary) is required" >&2; exit 2; }
ST=$FIX/stories260k-internlm2
[ -f "$ST/config.json" ] || { echo "check_peer_convert: $ST not found (--fixtures)" >&2; exit 2; }
LDENV=()
[ -n "${CT_LD_PATH:-}" ] && LDENV=(LD_LIBRARY_PATH="$CT_LD_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
ctuner() { env "${LDENV[@]}" "$CT" "$@"; }
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/ct_peer_convert.XXXXXX); trap 'rm -rf "$WORK"' EXIT; fi
mkdir -p "$WORK"

"$PY" - "$WORK/data.jsonl" <<'EOF'
import json, random, sys
r = random.Random(5)
with open(sys.argv[1], "w") as f:
    for n in (33, 100, 64):
        f.write(json.dumps({"input_ids": [1] + [r.randrange(3, 512) for _ in range(n - 1)]}) + "\n")
EOF
cat >"$WORK/gqa4.json" <<'EOF'
{"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": false, "bos_token_id": 1,
 "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "hidden_size": 128, "intermediate_size": 192,
 "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512,
 "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "rope_scaling": null,
 "tie_word_embeddings": false, "initializer_range": 0.1, "torch_dtype": "bfloat16"}
EOF
prep() { # NAME CMD... : makes $WORK/NAME unless it exists
    local name=$1; shift
    [ -f "$WORK/$name/config.json" ] || "$@" >"$WORK/$name.log" 2>&1 ||
        { echo "check_peer_convert: making $name failed:"; tail -3 "$WORK/$name.log"; return 1; }
}
models=(stories260k stories-nf4 stories-fp4 gqa4-nf4)
rm -rf "$WORK/stories260k"; ln -s "$ST" "$WORK/stories260k"
prep stories-nf4 ctuner quantize "$ST" --out "$WORK/stories-nf4" || exit 1
prep stories-fp4 ctuner quantize "$ST" --out "$WORK/stories-fp4" --quant-type fp4 --no-double-quant --blocksize 128 || exit 1
prep gqa4-nf4 ctuner make-model --config "$WORK/gqa4.json" --out "$WORK/gqa4-nf4" --quantize nf4 --seed 3 --tokenizer "$ST" || exit 1

# the peer once for all models (one python start), then each against ctuner eval
args=()
for m in "${models[@]}"; do args+=(--model "$WORK/$m"); done
"$PY" "$ROOT/bench/peer_qlora.py" "${args[@]}" --data "$WORK/data.jsonl" --device "$DEV" --eval-only --dtype float32 \
    >"$WORK/peer.jsonl" 2>"$WORK/peer.err" ||
    { echo "FAIL peer_qlora.py --eval-only: $(tail -3 "$WORK/peer.err")"; echo "0 passed, ${#models[@]} failed"; exit 1; }
pass=0 fail=0
for m in "${models[@]}"; do
    c=$(ctuner eval "$WORK/$m" --tokenizer "$ST" --data "$WORK/data.jsonl" --format pretokenized --json 2>"$WORK/eval.err") ||
        { echo "FAIL $m: ctuner eval: $(tail -1 "$WORK/eval.err")"; fail=$((fail + 1)); continue; }
    t=$(grep -F "\"model\": \"$WORK/$m\"" "$WORK/peer.jsonl" | head -1)
    [ -n "$t" ] || { echo "FAIL $m: no answer from the peer"; fail=$((fail + 1)); continue; }
    if "$PY" - "$m" "$c" "$t" "$TOL" <<'EOF'; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
import json, sys
m, c, t, tol = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), float(sys.argv[4])
ok = len(c["samples"]) == len(t["samples"]) and all(a["tokens"] == b["tokens"] for a, b in zip(c["samples"], t["samples"]))
d = max(abs(a["nll_sum"] / a["tokens"] - b["nll_sum"] / b["tokens"]) for a, b in zip(c["samples"], t["samples"]))
ok = ok and d < tol
print("%s %-12s loss ctuner %.6f, transformers Llama %.6f; largest per-sample mean-NLL difference %.2e (tol %g)"
      % ("ok  " if ok else "FAIL", m, c["loss"], t["loss"], d, tol))
sys.exit(0 if ok else 1)
EOF
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
