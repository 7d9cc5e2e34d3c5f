#!/usr/bin/env bash
# kpiwatch get, gate and run over an execution in flight, as a user runs
# them (kpiwatch --sandbox, whose "in-flight" run test starts a run when the
# sandbox starts): get warns that the KPIs are partial, gate fails closed
# with one line naming the status, run prints the id at once and into
# $GITHUB_OUTPUT, a wait that times out exits 3 naming the execution, bad
# arguments exit 2 before anything starts.
set -eu
. "${KPIWATCH_SRC:-.}/spec/e2e/lib.sh"

RUNNING=c0ffee00-0000-4000-a000-000000000001 # the in-flight run test's run
kw() {
  set +e
  "$KPIWATCH" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  set -e
}
expect() { # rc what
  [ "$rc" = "$1" ] || fail "$2: exit $rc, expected $1: $(cat "$tmp/err")"
}
one_line() { # pattern what
  [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$2: stderr is not one line: $(cat "$tmp/err")"
  grep -Eq "$1" "$tmp/err" || fail "$2: stderr does not match '$1': $(cat "$tmp/err")"
}

kw --sandbox get "$RUNNING"
expect 0 "get of a running execution"
grep -Eq "^kpiwatch: warning: execution $RUNNING is (pending|running): its KPIs are partial$" "$tmp/err" ||
  fail "get: no partial warning: $(cat "$tmp/err")"
grep -Eq '^status  (pending|running)$' "$tmp/out" || fail "get: no status line: $(cat "$tmp/out")"

kw --sandbox gate "$RUNNING" --require 'avg_score>=0'
expect 1 "gate of a running execution"
one_line "^kpiwatch gate: execution is (pending|running): its KPIs are partial; use --wait \(execution $RUNNING\)$" "gate"
grep -q "FAIL  execution status" "$tmp/out" || fail "gate: the report lacks the status: $(cat "$tmp/out")"

kw --sandbox gate "$RUNNING" --require 'total_calls>=0' --format json --allow-incomplete
expect 0 "gate --allow-incomplete"
grep -Eq '"execution_status":"(pending|running)"' "$tmp/out" || fail "gate json: no status: $(cat "$tmp/out")"

kw --sandbox gate "$RUNNING" --baseline previous --max-drop 'avg_score=0.1'
expect 2 "gate --baseline previous without --run-test"
one_line "^kpiwatch gate: --baseline previous needs the run test" "baseline previous"

: >"$tmp/gh"
GITHUB_OUTPUT="$tmp/gh" kw --sandbox run --name nightly --timeout 1 --require 'avg_score>=0.8'
expect 3 "run whose wait times out"
id=$(head -1 "$tmp/out")
[[ "$id" =~ ^[0-9a-f-]{36}$ ]] || fail "run: the first line of stdout is not the id: $(cat "$tmp/out")"
[ "$(cat "$tmp/gh")" = "execution_id=$id" ] || fail "run: GITHUB_OUTPUT: $(cat "$tmp/gh")"
grep -q "timeout" "$tmp/err" || fail "run: no timeout: $(cat "$tmp/err")"
grep -q "$id" <(tail -1 "$tmp/err") || fail "run: the message lacks the id: $(cat "$tmp/err")"
grep -Eq "^kpiwatch: execution $id: (pending|running)" "$tmp/err" || fail "run: no progress line: $(cat "$tmp/err")"

for args in "--name nightly" "--name nightly --require avg_score>>1" "not-a-uuid --require avg_score>=0" \
  "--name nightly --wait --require avg_score>=0"; do
  # shellcheck disable=SC2086
  kw --sandbox run $args
  expect 2 "run $args"
  one_line "^kpiwatch run: " "run $args"
  [ ! -s "$tmp/out" ] || fail "run $args printed an id: $(cat "$tmp/out")"
done

kw run --help
expect 0 "run --help"
grep -q -- "--baseline previous" "$tmp/out" || fail "run --help does not explain --baseline previous"
echo "ok"
