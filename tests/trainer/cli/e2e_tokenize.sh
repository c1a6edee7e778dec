#!/usr/bin/env bash
# End-to-end: `ctuner tokenize` on the real InternLM2 and stories260k tokenizers.
# $1 = ctuner binary, $2 = fixtures dir. Exit 77 (skip) without the fixtures.
# Expected ids were obtained once from sentencepiece 0.1.97 + the HF rule
# (tests/data/sp_reference.py); single lines are also compared with spm_encode
# (SentencePiece's C++ command) at run time when it is installed.
set -u
bin="$1"
FX="$2"
LM="$FX/internlm2-chat-7b"
ST="$FX/stories260k-internlm2"
[ -f "$LM/tokenizer.model" ] && [ -f "$ST/tokenizer.model" ] || { echo "fixtures missing: skip"; exit 77; }
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir tokenize

chat=$'<|im_start|>user\nHello<|im_end|>\n'
check_eq "chat ids" "$("$bin" tokenize "$LM" --text "$chat")" "1 92543 1008 364 9843 92542 364"
check_eq "chat ids --no-bos" "$("$bin" tokenize "$LM" --text "$chat" --no-bos)" "92543 1008 364 9843 92542 364"
check_eq "chat pieces" "$("$bin" tokenize "$LM" --text "$chat" --pieces)" '<s> <|im_start|> user \n Hello <|im_end|> \n'
check_eq "model file instead of dir" "$("$bin" tokenize "$LM/tokenizer.model" --text "$chat")" "1 92543 1008 364 9843 92542 364"
check_eq "pieces with spaces" "$("$bin" tokenize "$LM" --text '  Hello world' --pieces --no-bos)" "▁▁ Hello ▁world"
check_eq "empty text" "$("$bin" tokenize "$LM" --text '')" "1"
check_eq "empty text --no-bos" "$("$bin" tokenize "$LM" --text '' --no-bos)" ""
check_eq "stories dummy prefix" "$("$bin" tokenize "$ST" --text 'Once upon a time')" "1 403 407 261 378"
check_eq "stories byte fallback" "$("$bin" tokenize "$ST" --text '  Lily  saw 你 ' --no-bos --pieces)" \
    "▁Lily ▁saw ▁ <0xE4> <0xBD> <0xA0>"

# --file: the whole content as one text, NUL bytes and invalid UTF-8 included
printf '\0hi' >"$work/nul.txt"
check_eq "file with NUL" "$("$bin" tokenize "$LM" --file "$work/nul.txt" --no-bos)" "354 6176"
printf 'a\377b' >"$work/bad.txt"
check_eq "file with invalid UTF-8" "$("$bin" tokenize "$LM" --file "$work/bad.txt" --no-bos)" "264 65746 260"
printf '%s' "$chat" >"$work/chat.txt"
check_eq "file = text" "$("$bin" tokenize "$LM" --file "$work/chat.txt")" "1 92543 1008 364 9843 92542 364"

# single lines against spm_encode (no special strings in them: plain SentencePiece)
if command -v spm_encode >/dev/null; then
    lines=("Hello world" "你好，世界！今天天气很好。" "    def f(x):	return x * 2  # tab" "1234567890 3.14159"
           "Привет, мир! こんにちは 안녕하세요 مرحبا नमस्ते" "😀 👨‍👩‍👧 🇨🇳 𠮷野家" "  leading and trailing  "
           "Ａｂｃ——测试……" "a  b   c    d" "email: x@y.z, url: https://example.com/?q=1&r=2")
    for model in "$LM" "$ST"; do
        for l in "${lines[@]}"; do
            want=$(printf '%s\n' "$l" | spm_encode --model="$model/tokenizer.model" --output_format=id)
            check_eq "spm_encode parity: $l" "$("$bin" tokenize "$model" --text "$l" --no-bos)" "$want"
        done
    done
else
    echo "spm_encode not installed: line parity skipped"
fi

# 10 MB without spaces: must finish quickly (O(n log n)), one id line
python3 - "$work/long.txt" <<'EOF' || head -c 10000000 /dev/zero | tr '\0' 'a' >"$work/long.txt"
import sys
units = ["模型", "abc", "123", "数据", "xyz", "😀", "αβγ", "の", "！"]
out, n, i = [], 0, 0
while n < 10_000_000:
    u = units[(i * 7 + i // 3) % len(units)]; out.append(u); n += len(u.encode()); i += 1
open(sys.argv[1], "w").write("".join(out))
EOF
start=$(date +%s%N)
n_ids=$("$bin" tokenize "$LM" --file "$work/long.txt" --no-bos | wc -w)
ms=$((($(date +%s%N) - start) / 1000000))
echo "10 MB without spaces: $n_ids ids in $ms ms"
check_eq "10 MB encodes" "$([ "$n_ids" -gt 1000000 ] && echo ok)" "ok"
check_eq "10 MB in under 60 s" "$([ "$ms" -lt 60000 ] && echo ok)" "ok"

# errors: exit 2 with a message that names the problem
expect_exit "missing dir" 2 "/nonexistent/tok" -- tokenize /nonexistent/tok --text hi
expect_exit "both --text and --file" 2 "exactly one" -- tokenize "$LM" --text hi --file "$work/chat.txt"
expect_exit "neither --text nor --file" 2 "exactly one" -- tokenize "$LM"
expect_exit "no directory" 2 "missing argument" -- tokenize --text hi
expect_exit "missing --file" 2 "$work/nope.txt" -- tokenize "$LM" --file "$work/nope.txt"
expect_exit "unknown flag" 2 "--frobnicate" -- tokenize "$LM" --text hi --frobnicate
mkdir -p "$work/corrupt"
head -c 5000 "$ST/tokenizer.model" >"$work/corrupt/tokenizer.model"
expect_exit "truncated model" 2 "$work/corrupt/tokenizer.model" -- tokenize "$work/corrupt" --text hi
mkdir -p "$work/empty"
expect_exit "dir without a model" 2 "no tokenizer.model" -- tokenize "$work/empty" --text hi
cp "$ST/tokenizer.model" "$work/corrupt/tokenizer.model"
echo '{"add_bos_token": "yes"}' >"$work/corrupt/tokenizer_config.json"
expect_exit "bad tokenizer_config.json" 2 "tokenizer_config.json" -- tokenize "$work/corrupt" --text hi
expect_exit "--help" 0 "" -- tokenize --help

finish
