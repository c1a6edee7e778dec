#!/usr/bin/env bash
# End-to-end: `ctuner list-cfg` and `ctuner copy-cfg` on the built-in configs
# (found from the binary: the source tree's configs/ for a build directory) and
# on a CTUNER_CONFIG_DIR; exit codes and messages of the error cases.
# $1 = ctuner binary ($2, the fixtures dir, is not needed).
set -u
CT="$1"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0
fail=0
check() { # check NAME GOT WANT
    if [ "$2" == "$3" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); printf 'FAIL %s\n  got:  %s\n  want: %s\n' "$1" "$2" "$3"; fi
}
expect_exit() { # expect_exit NAME CODE NEEDLE -- ARGS...: exit code and a message naming NEEDLE
    local name=$1 code=$2 needle=$3
    shift 4
    "$CT" "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    check "$name: exit code" "$rc" "$code"
    if [ -n "$needle" ] && ! grep -qF -- "$needle" "$TMP/err"; then
        fail=$((fail + 1)); echo "FAIL $name: message does not mention '$needle': $(cat "$TMP/err")"
    fi
}

# list-cfg: every shipped config, sorted, one per line
all=$(cd "$SRC/configs" && ls -1 *.yaml | sed 's/\.yaml$//' | LC_ALL=C sort)
expect_exit "list-cfg" 0 "" -- list-cfg
check "list-cfg lists configs/" "$(cat "$TMP/out")" "$all"
for name in internlm2_chat_1_8b_qlora_alpaca_e3 internlm2_chat_7b_qlora_alpaca_e3 internlm2_chat_20b_qlora_alpaca_e3 \
    internlm2_5_chat_7b_qlora_alpaca_e3 internlm2_chat_7b_qlora_oasst1_e3 internlm2_chat_7b_qlora_self_cognition \
    internlm2_chat_7b_lora_alpaca_e3 tiny_demo; do
    check "list-cfg has $name" "$(grep -cx "$name" "$TMP/out")" "1"
done

# -p: a substring in any case, or a glob
check "-p substring, any case" "$("$CT" list-cfg -p QLoRA)" "$(grep -i qlora <<<"$all")"
check "-p glob" "$("$CT" list-cfg -p '*_e3')" "$(grep '_e3$' <<<"$all")"
check "--pattern" "$("$CT" list-cfg --pattern 20b)" "internlm2_chat_20b_qlora_alpaca_e3"
check "-p without a match" "$("$CT" list-cfg -p no-such-config; echo "rc=$?")" "rc=0"
expect_exit "list-cfg with an argument" 2 "unexpected argument" -- list-cfg extra
expect_exit "-p without a value" 2 "-p needs a value" -- list-cfg -p

# copy-cfg: DIR/NAME_copy.yaml, byte for byte; DIR is created
expect_exit "copy-cfg" 0 "" -- copy-cfg internlm2_chat_7b_qlora_alpaca_e3 "$TMP/a/b"
dst="$TMP/a/b/internlm2_chat_7b_qlora_alpaca_e3_copy.yaml"
check "copy-cfg says where" "$(cat "$TMP/out")" "Copy to $dst"
check "copy is identical" "$(cmp "$SRC/configs/internlm2_chat_7b_qlora_alpaca_e3.yaml" "$dst" && echo same)" "same"
expect_exit "copy-cfg NAME.yaml" 0 "" -- copy-cfg tiny_demo.yaml "$TMP/a/b"
check "NAME.yaml copied" "$(cmp "$SRC/configs/tiny_demo.yaml" "$TMP/a/b/tiny_demo_copy.yaml" && echo same)" "same"
echo "edited" >"$dst"
expect_exit "no overwrite" 2 "already exists" -- copy-cfg internlm2_chat_7b_qlora_alpaca_e3 "$TMP/a/b"
check "existing file kept" "$(cat "$dst")" "edited"
check "no temp files left" "$(ls -A "$TMP/a/b" | grep -c tmp)" "0"

# unknown names: exit 2 with the close names, the closest first
expect_exit "typo" 2 "close matches: internlm2_chat_7b_qlora_alpaca_e3," -- \
    copy-cfg internlm2_chat_7b_qlora_alpaka_e3 "$TMP/c"
expect_exit "partial name" 2 "close matches: internlm2_chat_7b_qlora_oasst1_e3" -- copy-cfg oasst1 "$TMP/c"
expect_exit "nothing close" 2 "unknown config 'zzz' (see the names with: ctuner list-cfg)" -- copy-cfg zzz "$TMP/c"
check "nothing written for unknown names" "$([ -e "$TMP/c" ] && echo exists || echo none)" "none"
expect_exit "a path is not a name" 2 "is not a config name" -- copy-cfg ../configs/tiny_demo "$TMP/c"
expect_exit "missing DIR" 2 "missing argument" -- copy-cfg tiny_demo
touch "$TMP/file"
expect_exit "DIR is a file" 2 "$TMP/file" -- copy-cfg tiny_demo "$TMP/file"

# CTUNER_CONFIG_DIR replaces the built-in directory
mkdir -p "$TMP/mine"
printf 'pretrained_model_name_or_path: m\ndata_path: d.json\n' >"$TMP/mine/my_run.yaml"
touch "$TMP/mine/notes.txt" "$TMP/mine/.hidden.yaml"
check "CTUNER_CONFIG_DIR" "$(CTUNER_CONFIG_DIR="$TMP/mine" "$CT" list-cfg)" "my_run"
CTUNER_CONFIG_DIR="$TMP/mine" "$CT" copy-cfg my_run "$TMP/d" >/dev/null
check "copy from CTUNER_CONFIG_DIR" "$(cmp "$TMP/mine/my_run.yaml" "$TMP/d/my_run_copy.yaml" && echo same)" "same"
CTUNER_CONFIG_DIR="$TMP/none" "$CT" list-cfg >/dev/null 2>"$TMP/err"
check "CTUNER_CONFIG_DIR missing: exit code" "$?" "2"
check "CTUNER_CONFIG_DIR missing: message" "$(grep -c "CTUNER_CONFIG_DIR=$TMP/none is not a directory" "$TMP/err")" "1"

expect_exit "list-cfg --help" 0 "" -- list-cfg --help
expect_exit "copy-cfg --help" 0 "" -- copy-cfg --help

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
