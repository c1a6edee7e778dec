#!/usr/bin/env bash
# End-to-end: `ctuner list-cfg` and `ctuner copy-cfg` on the built-in configs
# (found from the binary: the source tree's configs/ for a build directory) and
# on a CTUNER_CONFIG_DIR; exit codes and messages of the error cases.
# $1 = ctuner binary ($2, the fixtures dir, is not needed).
set -u
bin="$1"
SRC="$(cd "$(dirname "$0")/../../.." && pwd)"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir cfg

# list-cfg: every shipped config, sorted, one per line
all=$(cd "$SRC/configs" && ls -1 *.yaml | sed 's/\.yaml$//' | LC_ALL=C sort)
expect_exit "list-cfg" 0 "" -- list-cfg
check_eq "list-cfg lists configs/" "$(cat "$work/out")" "$all"
for name in internlm2_chat_1_8b_qlora_alpaca_e3 internlm2_chat_7b_qlora_alpaca_e3 internlm2_chat_20b_qlora_alpaca_e3 \
    internlm2_5_chat_7b_qlora_alpaca_e3 internlm2_chat_7b_qlora_oasst1_e3 internlm2_chat_7b_qlora_self_cognition \
    internlm2_chat_7b_lora_alpaca_e3 tiny_demo; do
    check_eq "list-cfg has $name" "$(grep -cx "$name" "$work/out")" "1"
done

# -p: a substring in any case, or a glob
check_eq "-p substring, any case" "$("$bin" list-cfg -p QLoRA)" "$(grep -i qlora <<<"$all")"
check_eq "-p glob" "$("$bin" list-cfg -p '*_e3')" "$(grep '_e3$' <<<"$all")"
check_eq "--pattern" "$("$bin" list-cfg --pattern 20b)" "internlm2_chat_20b_qlora_alpaca_e3"
check_eq "-p without a match" "$("$bin" list-cfg -p no-such-config; echo "rc=$?")" "rc=0"
expect_exit "list-cfg with an argument" 2 "unexpected argument" -- list-cfg extra
expect_exit "-p without a value" 2 "-p needs a value" -- list-cfg -p

# copy-cfg: DIR/NAME_copy.yaml, byte for byte; DIR is created
expect_exit "copy-cfg" 0 "" -- copy-cfg internlm2_chat_7b_qlora_alpaca_e3 "$work/a/b"
dst="$work/a/b/internlm2_chat_7b_qlora_alpaca_e3_copy.yaml"
check_eq "copy-cfg says where" "$(cat "$work/out")" "Copy to $dst"
check_eq "copy is identical" "$(cmp "$SRC/configs/internlm2_chat_7b_qlora_alpaca_e3.yaml" "$dst" && echo same)" "same"
expect_exit "copy-cfg NAME.yaml" 0 "" -- copy-cfg tiny_demo.yaml "$work/a/b"
check_eq "NAME.yaml copied" "$(cmp "$SRC/configs/tiny_demo.yaml" "$work/a/b/tiny_demo_copy.yaml" && echo same)" "same"
echo "edited" >"$dst"
expect_exit "no overwrite" 2 "already exists" -- copy-cfg internlm2_chat_7b_qlora_alpaca_e3 "$work/a/b"
check_eq "existing file kept" "$(cat "$dst")" "edited"
check_eq "no temp files left" "$(ls -A "$work/a/b" | grep -c tmp)" "0"

# unknown names: exit 2 with the close names, the closest first
expect_exit "typo" 2 "close matches: internlm2_chat_7b_qlora_alpaca_e3," -- \
    copy-cfg internlm2_chat_7b_qlora_alpaka_e3 "$work/c"
expect_exit "partial name" 2 "close matches: internlm2_chat_7b_qlora_oasst1_e3" -- copy-cfg oasst1 "$work/c"
expect_exit "nothing close" 2 "unknown config 'zzz' (see the names with: ctuner list-cfg)" -- copy-cfg zzz "$work/c"
check_eq "nothing written for unknown names" "$([ -e "$work/c" ] && echo exists || echo none)" "none"
expect_exit "a path is not a name" 2 "is not a config name" -- copy-cfg ../configs/tiny_demo "$work/c"
expect_exit "missing DIR" 2 "missing argument" -- copy-cfg tiny_demo
touch "$work/file"
expect_exit "DIR is a file" 2 "$work/file" -- copy-cfg tiny_demo "$work/file"

# CTUNER_CONFIG_DIR replaces the built-in directory
mkdir -p "$work/mine"
printf 'pretrained_model_name_or_path: m\ndata_path: d.json\n' >"$work/mine/my_run.yaml"
touch "$work/mine/notes.txt" "$work/mine/.hidden.yaml"
check_eq "CTUNER_CONFIG_DIR" "$(CTUNER_CONFIG_DIR="$work/mine" "$bin" list-cfg)" "my_run"
CTUNER_CONFIG_DIR="$work/mine" "$bin" copy-cfg my_run "$work/d" >/dev/null
check_eq "copy from CTUNER_CONFIG_DIR" "$(cmp "$work/mine/my_run.yaml" "$work/d/my_run_copy.yaml" && echo same)" "same"
CTUNER_CONFIG_DIR="$work/none" "$bin" list-cfg >/dev/null 2>"$work/err"
check_eq "CTUNER_CONFIG_DIR missing: exit code" "$?" "2"
check_eq "CTUNER_CONFIG_DIR missing: message" "$(grep -c "CTUNER_CONFIG_DIR=$work/none is not a directory" "$work/err")" "1"

expect_exit "list-cfg --help" 0 "" -- list-cfg --help
expect_exit "copy-cfg --help" 0 "" -- copy-cfg --help

finish
