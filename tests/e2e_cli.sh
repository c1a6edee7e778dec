#!/usr/bin/env bash
# The dispatcher: help texts, exit codes for unknown commands and flags.
# $1 = ctuner binary.
set -u
bin="$1"
fail=0; pass=0
expect() { # expect CODE CMD...
  local want="$1"; shift
  "$@" >/tmp/ct_e2e_cli.out 2>&1; local got=$?
  if [ "$got" -eq "$want" ]; then pass=$((pass+1)); else
    fail=$((fail+1)); echo "FAIL: '$*' exited $got, want $want"; cat /tmp/ct_e2e_cli.out; fi
}
expect 0 "$bin" --help
expect 0 "$bin" --version
expect 2 "$bin"
expect 2 "$bin" no-such-command
# every listed command has a --help that exits 0, and rejects an unknown flag with 2
for cmd in $("$bin" --help | awk '/^commands:/{on=1; next} on && !NF {exit} on {print $1}'); do
  expect 0 "$bin" "$cmd" --help
  expect 2 "$bin" "$cmd" --definitely-not-a-flag
done
"$bin" no-such-command 2>&1 | grep -q "unknown command 'no-such-command'" && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL: message for unknown command"; }
rm -f /tmp/ct_e2e_cli.out
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
