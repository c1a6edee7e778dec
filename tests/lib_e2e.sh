# Helpers shared by the end-to-end tests (tests/trainer/cli/e2e_*.sh), sourced after the
# test has set $bin (the ctuner binary) and $fx (the fixtures dir): counters,
# assertions, a scratch directory. Not a test itself (the glob is e2e_*.sh).
#   e2e_need_story          $st = the stories260k fixture under $fx; exits 77 (skip)
#                           without it or without python3
#   e2e_workdir NAME        $work = a fresh /tmp/ct_e2e_NAME.XXXXXX, removed on exit
#   ok / bad MSG            count a pass / a failure (MSG printed)
#   check 'SHELL TEST'      eval'ed; a pass when it succeeds
#   check_eq NAME GOT WANT  a pass when GOT == WANT, else both shown
#   expect CODE CMD...      CMD's exit code; stdout in $work/out, stderr in $work/err
#   expect_all CODE CMD...  the same with stdout and stderr together in $work/out
#   expect_exit NAME CODE NEEDLE -- ARGS...  `$bin ARGS` exits CODE and its stderr names NEEDLE
#   has TEXT / has_err TEXT the last expect's $work/out / $work/err contains TEXT
#   no_temp_left            no *.tmp-* entry left in $work
#   e2e_story_data FILE N   FILE = the first N (1..6) of six short conversations the
#                           tiny story model can learn, each twice (XTuner's JSON)
#   finish [CODE]           print the counts; exit 1 on a failure, else CODE (0)
pass=0
fail=0
e2e_need_story() {
    st="$fx/stories260k-internlm2"
    [ -f "$st/model.safetensors" ] || { echo "stories260k fixture missing: skip"; exit 77; }
    command -v python3 >/dev/null || { echo "python3 missing: skip"; exit 77; }
}
e2e_workdir() {
    work="$(mktemp -d "/tmp/ct_e2e_$1.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
}
ok()  { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$1"; fi; }
check_eq() { # check_eq NAME GOT WANT
    if [ "$2" == "$3" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); printf 'FAIL %s\n  got:  %s\n  want: %s\n' "$1" "$2" "$3"; fi
}
expect() {
  local want="$1"; shift
  "$@" >"$work/out" 2>"$work/err"; local got=$?
  if [ "$got" -eq "$want" ]; then ok; else bad "'$*' exited $got, want $want"; tail -n 20 "$work/out" "$work/err"; fi
}
expect_all() {
  local want="$1"; shift
  "$@" >"$work/out" 2>&1; local got=$?
  if [ "$got" -eq "$want" ]; then ok; else bad "'$*' exited $got, want $want"; cat "$work/out"; fi
}
expect_exit() {
    local name=$1 code=$2 needle=$3
    shift 4
    "$bin" "$@" >"$work/out" 2>"$work/err"
    local rc=$?
    check_eq "$name: exit code" "$rc" "$code"
    if [ -n "$needle" ] && ! grep -qF -- "$needle" "$work/err"; then
        fail=$((fail + 1)); echo "FAIL $name: message does not mention '$needle': $(cat "$work/err")"
    fi
}
has()     { if grep -qF -- "$1" "$work/out"; then ok; else bad "output lacks '$1':"; cat "$work/out"; fi; }
has_err() { if grep -qF -- "$1" "$work/err"; then ok; else bad "stderr lacks '$1':"; cat "$work/err"; fi; }
no_temp_left() { check "[ -z \"\$(ls -A '$work' | grep '\\.tmp-' || true)\" ]"; }
e2e_story_data() {
    python3 - "$1" "$2" <<'PY'
import json, sys
qa = [("Tell me a story.", "Once upon a time, there was a little girl named Lily."),
      ("Who is Tom?", "Tom is a big boy who likes to run."),
      ("Where is the cat?", "The cat sat on the mat."),
      ("What did the dog find?", "The dog found a red ball."),
      ("Why was Ben sad?", "Ben was sad because his toy broke."),
      ("What is the sun like?", "The sun was warm and bright.")][:int(sys.argv[2])]
json.dump([{"conversation": [{"input": q, "output": a}]} for q, a in qa * 2], open(sys.argv[1], "w"), indent=1)
PY
}
finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ] || exit 1; exit "${1:-0}"; }
