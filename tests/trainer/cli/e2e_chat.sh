#!/usr/bin/env bash
# ctuner chat end to end on the real stories260k model:
#  --prompt: greedy continuation, non-empty, stable across runs; fewer new
#  tokens give a prefix of it; the default template of this tokenizer is none;
#  a seed repeats sampled text and another seed changes it; a stop word cuts
#  the text before it; nf4 loading works.
#  interactive (stdin): the first answer equals the --prompt answer, RESET
#  forgets the history (the same message gets the same answer again), EXIT
#  and end of input exit 0.
#  bad flags and inputs: exit 2 with a message naming the problem.
# $1 = ctuner binary, $2 = fixtures dir (exit 77 = skip).
set -u
BIN=$1
FIX=${2:-}
MODEL=$FIX/stories260k-internlm2
if [ ! -d "$MODEL" ]; then
    echo "fixtures not found ($MODEL): skipping"
    exit 77
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() { # check DESCRIPTION CONDITION...
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAIL: $what"; fail=1; fi
}

chat() { "$BIN" chat "$MODEL" "$@"; }

# ---- --prompt, greedy ----
chat --template none --prompt "Once upon a time" --temperature 0 --max-new-tokens 40 >"$TMP/a1" 2>"$TMP/e1"
rc=$?
check "greedy --prompt exits 0 (rc $rc; $(head -c 300 "$TMP/e1"))" test $rc -eq 0
chat --template none --prompt "Once upon a time" --temperature 0 --max-new-tokens 40 >"$TMP/a2" 2>/dev/null
A1=$(cat "$TMP/a1")
echo "answer: $A1"
check "greedy answer is non-empty text" test "$(printf '%s' "$A1" | tr -d '[:space:]' | wc -c)" -ge 40
check "greedy answer has words" grep -Eq ' (was|the|a|and|to) ' "$TMP/a1"
check "greedy answer is stable across runs" cmp -s "$TMP/a1" "$TMP/a2"
check "answer + newline only on stdout (one trailing newline)" test "$(tail -c 1 "$TMP/a1" | od -An -c | tr -d ' ')" = '\n'
check "--prompt prints nothing on stderr" test ! -s "$TMP/e1"
A5=$(chat --template none --prompt "Once upon a time" --temperature 0 --max-new-tokens 5 2>/dev/null)
check "5 new tokens are a strict prefix of 40 ('$A5')" test -n "$A5" -a "${A1#"$A5"}" != "$A1" -a "$A5" != "$A1"
AD=$(chat --prompt "Once upon a time" --temperature 0 --max-new-tokens 40 2>/dev/null)
check "default template for a tokenizer without <|im_start|> is none" test "$AD" = "$A1"

# ---- sampling: seeds ----
S1=$(chat --template none --prompt "Once upon a time" --temperature 1 --top-k 0 --top-p 1 --seed 11 --max-new-tokens 40 2>/dev/null)
S1b=$(chat --template none --prompt "Once upon a time" --temperature 1 --top-k 0 --top-p 1 --seed 11 --max-new-tokens 40 2>/dev/null)
S2=$(chat --template none --prompt "Once upon a time" --temperature 1 --top-k 0 --top-p 1 --seed 12 --max-new-tokens 40 2>/dev/null)
check "a seed repeats the sampled text" test -n "$S1" -a "$S1" = "$S1b"
check "another seed gives other text" test "$S1" != "$S2"
S3=$(chat --template none --prompt "Once upon a time" --top-k 1 --seed 5 --temperature 1 --max-new-tokens 40 2>/dev/null)
check "top-k 1 is greedy" test "$S3" = "$A1"

# ---- stop words ----
ST=$(chat --template none --prompt "Once upon a time" --temperature 0 --max-new-tokens 40 --stop-word "Lily" --stop-word=park 2>/dev/null)
check "a stop word cuts the text before it ('$ST')" test -n "$ST" -a "${A1#"$ST"}" != "$A1" -a "${ST/Lily/}" = "$ST"
case "$A1" in *Lily*) check "the stop word was in the full answer" true ;; *) check "the stop word was in the full answer" false ;; esac

# ---- nf4 ----
Q=$(chat --template none --prompt "Once upon a time" --temperature 0 --max-new-tokens 20 --quant nf4 2>/dev/null)
check "--quant nf4 answers ('$Q')" test "$(printf '%s' "$Q" | wc -w)" -ge 4

# ---- interactive ----
PROMPT='double enter to end input (EXIT: exit chat, RESET: reset history) >>> '
chat --template none --temperature 0 --max-new-tokens 40 >"$TMP/i1" 2>"$TMP/ie1" <<'EOF'
Once upon a time

Once upon a time

RESET

Once upon a time

EXIT
EOF
rc=$?
check "interactive session exits 0 (rc $rc; $(head -c 300 "$TMP/ie1"))" test $rc -eq 0
check "interactive prompt shown for each of the 5 messages" test "$(grep -cF "$PROMPT" "$TMP/i1")" -eq 5
check "RESET acknowledged" grep -qF 'Log: History responses have been removed!' "$TMP/i1"
mapfile -t ANS < <(grep -F "$PROMPT" "$TMP/i1" | sed "s/^.*>>> //")
check "first interactive answer equals the --prompt answer" test "${ANS[0]:-}" = "$A1"
check "RESET answered on its prompt line" test "${ANS[2]:-}" = "Log: History responses have been removed!"
check "after RESET the same message gets the same answer" test "${ANS[3]:-}" = "$A1"
check "without RESET the history changes the answer" test "${ANS[1]:-}" != "$A1"
printf 'Once upon a time\n' | chat --template none --temperature 0 --max-new-tokens 10 >"$TMP/i2" 2>/dev/null
rc=$?
check "end of input without EXIT exits 0 after answering (rc $rc)" test $rc -eq 0 -a "$(grep -cF "$PROMPT" "$TMP/i2")" -eq 1
check "its answer is the greedy one" grep -qF ">>> ${A5}" "$TMP/i2"

# ---- a chat template: a small random model with the real InternLM2 tokenizer ----
if [ -f "$FIX/internlm2-chat-7b/tokenizer.model" ]; then
    cat >"$TMP/cfg.json" <<'EOF'
{"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": false, "hidden_size": 48,
 "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "vocab_size": 92544, "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
 "torch_dtype": "bfloat16"}
EOF
    "$BIN" make-model --config "$TMP/cfg.json" --out "$TMP/chatm" --tokenizer "$FIX/internlm2-chat-7b" >/dev/null
    check "make-model for the template test" test -f "$TMP/chatm/model.safetensors"
    printf 'Hi\n\nHow are you?\n\nRESET\n\nHi\n\nEXIT\n' |
        "$BIN" chat "$TMP/chatm" --system "Be brief." --max-new-tokens 6 --show-prompt >"$TMP/t1" 2>"$TMP/te1"
    rc=$?
    check "template chat exits 0 (rc $rc)" test $rc -eq 0
    check "default template with <|im_start|> is internlm2_chat" grep -q "template internlm2_chat" "$TMP/te1"
    mapfile -t P < <(grep '^prompt: ' "$TMP/te1" | sed 's/^prompt: //')
    FIRST='<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
    NEXT='<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n'
    check "3 turns fed" test ${#P[@]} -eq 3
    check "turn 1: BOS, SYSTEM, INSTRUCTION" test "${P[0]:-}" = "$FIRST"
    check "turn 2: the answer's unfed last token, SUFFIX, SEP, INSTRUCTION; no BOS, no system" \
        test "${P[1]:-}" != "${P[1]%"$NEXT"}" -a "${P[1]/<s>/}" = "${P[1]:-}" -a "${P[1]/system/}" = "${P[1]:-}"
    check "after RESET: BOS and SYSTEM again" test "${P[2]:-}" = "$FIRST"
    check "4 messages, a prompt line each, and the EXIT prompt" test "$(grep -cF "$PROMPT" "$TMP/t1")" -eq 5
    Q1=$("$BIN" chat "$TMP/chatm" --prompt "Hi" --temperature 0 --max-new-tokens 12 --show-prompt 2>"$TMP/te2")
    check "--prompt with a template: BOS + INSTRUCTION" grep -qxF 'prompt: <s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n' "$TMP/te2"
    check "--prompt with a template answers" test -n "$Q1"
    Q2=$("$BIN" chat "$TMP/chatm" --prompt "Hi" --template internlm2_chat --temperature 0 --max-new-tokens 12 2>/dev/null)
    check "explicit internlm2_chat equals the default" test "$Q1" = "$Q2"
    "$BIN" chat "$TMP/chatm" --prompt "Hi" --template default --temperature 0 --max-new-tokens 4 --show-prompt >/dev/null 2>"$TMP/te3"
    check "--template default: <|User|>:...<|Bot|>:" grep -qxF 'prompt: <s><|User|>:Hi\n<|Bot|>:' "$TMP/te3"
fi

# ---- bad flags and inputs: exit 2 ----
expect2() { # expect2 DESCRIPTION PATTERN ARGS...
    local what=$1 pat=$2
    shift 2
    "$BIN" chat "$@" >/dev/null 2>"$TMP/err" </dev/null
    local rc=$?
    check "$what: exit 2 (got $rc)" test $rc -eq 2
    check "$what: message mentions '$pat'" grep -q -- "$pat" "$TMP/err"
}
expect2 "unknown flag" "--bogus" "$MODEL" --bogus
expect2 "unknown template" "unknown prompt template" "$MODEL" --template nope --prompt x
expect2 "missing model dir" "/nonexistent/model" /nonexistent/model --prompt x
expect2 "no model dir" "missing argument"
expect2 "negative temperature" "temperature" "$MODEL" --temperature -1 --prompt x
expect2 "top-p 0" "top_p" "$MODEL" --top-p 0 --prompt x
expect2 "top-p not a number" "--top-p" "$MODEL" --top-p abc --prompt x
expect2 "max-new-tokens 0" "--max-new-tokens" "$MODEL" --max-new-tokens 0 --prompt x
expect2 "negative top-k" "--top-k" "$MODEL" --top-k -3 --prompt x
expect2 "zero repetition penalty" "repetition penalty" "$MODEL" --repetition-penalty 0 --prompt x
expect2 "bad quant" "int8" "$MODEL" --quant int8 --prompt x
expect2 "system without a template" "--system" "$MODEL" --template none --system hi --prompt x
expect2 "missing adapter" "adapter_config.json" "$MODEL" --adapter "$TMP/none" --prompt x
expect2 "flag without its value" "--seed" "$MODEL" --prompt x --seed
expect2 "prompt longer than the context" "context" "$MODEL" --template none --max-context 4 --prompt "Once upon a time there was"

exit $fail
