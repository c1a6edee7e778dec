#!/usr/bin/env bash
# The dispatcher: help texts, exit codes for unknown commands and flags.
# $1 = ctuner binary.
set -u
bin="$1"
. "$(dirname "$0")/../../lib_e2e.sh"
e2e_workdir cli
expect_all 0 "$bin" --help
expect_all 0 "$bin" --version
expect_all 2 "$bin"
expect_all 2 "$bin" no-such-command
# every listed command has a --help that exits 0, and rejects an unknown flag with 2
for cmd in $("$bin" --help | awk '/^commands:/{on=1; next} on && !NF {exit} on {print $1}'); do
  expect_all 0 "$bin" "$cmd" --help
  expect_all 2 "$bin" "$cmd" --definitely-not-a-flag
done
"$bin" no-such-command 2>&1 | grep -q "unknown command 'no-such-command'" && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL: message for unknown command"; }
finish
