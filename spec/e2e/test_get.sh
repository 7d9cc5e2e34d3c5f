#!/usr/bin/env bash
# kpiwatch get against the sandbox running as a separate process
# (kpiwatch sandbox --port 0), as a user would run both: exit codes 0/2/3,
# the summary, --json, one-line errors, --verbose traces without secrets.
set -u
KW=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-.}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

API_KEY="e2e-key-$$-$RANDOM"
SECRET="e2e-secret-$$-$RANDOM$RANDOM"
OUT=c0ffee00-0000-4000-8000-000000000001
EMPTY=c0ffee00-0000-4000-8000-000000000004
UNKNOWN=0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e

# start_sandbox OUTFILE ARGS...: runs the sandbox, waits for its URL line,
# sets SB_URL (not called in $(...): the pid must be recorded here).
start_sandbox() {
  local out=$1
  shift
  "$KW" sandbox --port 0 "$@" >"$out" 2>"$out.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if grep -q '^  export FI_BASE_URL=' "$out" 2>/dev/null; then
      SB_URL=$(sed -n 's/^  export FI_BASE_URL=//p' "$out")
      return 0
    fi
    sleep 0.05
  done
  echo "sandbox did not start: $(cat "$out" "$out.err")" >&2
  return 1
}

start_sandbox "$TMP/sb.out" --api-key "$API_KEY" --secret-key "$SECRET" || exit 1
URL=$SB_URL
sleep 0.2 # the rest of the banner
grep -q "export FI_API_KEY=...  (the value given with --api-key, not shown)" "$TMP/sb.out" \
  || fail "sandbox says which API key it takes: $(cat "$TMP/sb.out")"
! grep -q -e "$API_KEY" -e "$SECRET" "$TMP/sb.out" || fail "sandbox echoes credentials given on its command line"
grep -q "$OUT  voice-outbound" "$TMP/sb.out" || fail "sandbox lists its fixtures"

# kw ARGS...: runs kpiwatch with the sandbox's credentials; sets rc, out, err.
kw() {
  FI_BASE_URL=$URL FI_API_KEY=$API_KEY FI_SECRET_KEY=$SECRET "$KW" "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  out=$(cat "$TMP/out")
  err=$(cat "$TMP/err")
  cat "$TMP/out" "$TMP/err" >>"$TMP/all-output"
}

expect_rc() { # WANT WHAT
  if [ "$rc" -ne "$1" ]; then fail "$2: exit $rc, wanted $1 (stderr: $err)"; else ok "$2"; fi
}

one_line_err() { # PATTERN WHAT
  if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then fail "$2: stderr is not one line: $err"; fi
  if ! printf '%s' "$err" | grep -qE "$1"; then fail "$2: stderr '$err' does not match $1"; fi
}

kw get "$OUT"
expect_rc 0 "get prints the summary"
printf '%s' "$out" | grep -q "^KPIs of execution $OUT" || fail "summary header: $out"
printf '%s' "$out" | grep -qE '^  calls_attempted +120$' || fail "summary calls_attempted"
printf '%s' "$out" | grep -qE '^  tone +friendly 96, neutral 14, rude 2$' || fail "summary choice eval"
[ -z "$err" ] || fail "get wrote to stderr: $err"

kw get "$OUT" --json
expect_rc 0 "get --json"
printf '%s' "$out" >"$TMP/json"
python3 - "$TMP/json" "$OUT" <<'EOF' || fail "--json content"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["execution_id"] == sys.argv[2], d.get("execution_id")
for k in d:
    assert k == k.lower(), "not snake_case: " + k
for k in ("total_calls", "calls_attempted", "connected_calls", "failed_calls", "total_duration"):
    assert type(d[k]) is int, (k, d[k])
assert d["calls_attempted"] == 120 and d["connected_calls"] == 112
assert d["calls_connected_percentage"] == 93.33
assert d["agent_talk_percentage"] == 58.2 and d["customer_talk_percentage"] == 41.8
assert isinstance(d["scenario_graphs"], dict) and len(d["scenario_graphs"]) == 2
assert d["tone"]["choices"] == ["friendly", "neutral", "rude"]
assert d["avg_task_completion"] == 91.1
assert d["is_inbound"] is False
EOF

kw get "$EMPTY" --json
expect_rc 0 "get --json with null averages"
printf '%s' "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["avg_score"] is None and d["total_calls"] == 0' \
  || fail "nulls in --json: $out"

kw get "$UNKNOWN"
expect_rc 3 "unknown id exits 3"
one_line_err "^kpiwatch: not_found: Test execution not found\. \(execution $UNKNOWN\)$" "not_found message"

kw get not-a-uuid
expect_rc 2 "invalid id exits 2"
one_line_err '^kpiwatch: invalid_id: ' "invalid_id message"

kw get
expect_rc 2 "missing id exits 2"
kw get "$OUT" --bogus
expect_rc 2 "unknown option exits 2"

FI_BASE_URL=$URL FI_API_KEY= FI_SECRET_KEY= "$KW" get "$OUT" >"$TMP/out" 2>"$TMP/err"
rc=$?
err=$(cat "$TMP/err")
expect_rc 2 "missing credentials exit 2"
one_line_err 'FI_API_KEY.*FI_SECRET_KEY' "missing credentials message"

FI_BASE_URL=$URL FI_API_KEY=$API_KEY FI_SECRET_KEY="wrong-$SECRET-wrong" "$KW" get "$OUT" >"$TMP/out" 2>"$TMP/err"
rc=$?
err=$(cat "$TMP/err")
expect_rc 3 "wrong secret exits 3"
one_line_err '^kpiwatch: auth: Invalid API key or secret key\.' "auth message"
grep -qF -- "$SECRET" "$TMP/err" && fail "the wrong secret appears on stderr"

kw --retries 1 get c0ffee00-0000-4000-8000-000000000500
expect_rc 3 "server error exits 3"
one_line_err '^kpiwatch: server: A server error occurred\.' "server message"

kw --retries 0 get c0ffee00-0000-4000-8000-000000000502
expect_rc 3 "HTML 502 exits 3"
one_line_err '^kpiwatch: server: HTTP 502 Bad Gateway' "gateway message"

kw get c0ffee00-0000-4000-8000-000000000200
expect_rc 3 "HTML page with 200 exits 3"
one_line_err '^kpiwatch: protocol: ' "protocol message"

kw --retries 0 get c0ffee00-0000-4000-8000-000000000429
expect_rc 3 "429 exits 3"
one_line_err '^kpiwatch: rate_limited: Rate limit exceeded' "rate_limited message"

kw --timeout 0.3 --retries 0 get c0ffee00-0000-4000-8000-0000000000d0
expect_rc 3 "timeout exits 3"
one_line_err '^kpiwatch: timeout: ' "timeout message"

kw --base-url http://127.0.0.1:1 --retries 0 get "$OUT"
expect_rc 3 "connection refused exits 3"
one_line_err '^kpiwatch: connect: ' "connect message"

kw --base-url http://api.example.com get "$OUT"
expect_rc 2 "plain http to a remote host exits 2"
one_line_err '^kpiwatch: config: refusing plain http://' "insecure http message"

kw --verbose get c0ffee00-0000-4000-8000-0000000000f1
expect_rc 0 "flaky id succeeds after a retry"
printf '%s' "$err" | grep -qF "GET $URL/simulate/test-executions/c0ffee00-0000-4000-8000-0000000000f1/kpis/ -> 500 server (" \
  || fail "verbose trace of the 500: $err"
printf '%s' "$err" | grep -q "retry 1/3 in" || fail "verbose trace of the retry: $err"
printf '%s' "$err" | grep -qE -- "-> 200 \([0-9.]+ ms\) after 2 attempts" || fail "verbose trace of the 200: $err"

kw --verbose --retries 1 get c0ffee00-0000-4000-8000-000000000500
kw --verbose get "$UNKNOWN" --json

# the secret and the key never appear in anything kpiwatch printed
if grep -qF -- "$SECRET" "$TMP/all-output"; then fail "the secret appears in kpiwatch's output"; else ok "no secret in any output"; fi
if grep -qF -- "$API_KEY" "$TMP/all-output"; then fail "the API key appears in kpiwatch's output"; fi

# --sandbox: the sandbox in the same process, no credentials needed
FI_API_KEY= FI_SECRET_KEY= FI_BASE_URL= "$KW" --sandbox get "$OUT" --json >"$TMP/out" 2>"$TMP/err"
rc=$?
err=$(cat "$TMP/err")
expect_rc 0 "--sandbox get"
grep -q '"calls_attempted":120' "$TMP/out" || fail "--sandbox get output: $(cat "$TMP/out")"

# a second sandbox serving a fixtures folder
start_sandbox "$TMP/sb2.out" --fixtures "$SRC/spec/fixtures/kpis" || exit 1
URL2=$SB_URL
FI_BASE_URL=$URL2 FI_API_KEY=kw-sandbox-api-key FI_SECRET_KEY=kw-sandbox-secret-key \
  "$KW" get 77a7927d-8f48-42c4-97fd-b00243ee0b44 --json >"$TMP/out" 2>"$TMP/err"
rc=$?
err=$(cat "$TMP/err")
expect_rc 0 "sandbox --fixtures serves a recorded (enveloped) body"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["calls_attempted"] == 12 and d["customer_talk_percentage"] == 48 and d["avg_eval-4f1c2d"] == 66.7, d' "$TMP/out" \
  || fail "recorded body content: $(cat "$TMP/out")"

"$KW" sandbox --port 0 --fixtures "$TMP/nonexistent" >"$TMP/out" 2>"$TMP/err"
rc=$?
err=$(cat "$TMP/err")
expect_rc 2 "sandbox with a missing fixtures folder exits 2"

# SIGTERM stops a sandbox cleanly
kill -TERM "${PIDS[0]}"
for _ in $(seq 1 40); do kill -0 "${PIDS[0]}" 2>/dev/null || break; sleep 0.05; done
if kill -0 "${PIDS[0]}" 2>/dev/null; then fail "sandbox still running after SIGTERM"; else ok "sandbox stops on SIGTERM"; fi
grep -q "stopped after" "$TMP/sb.out.err" || fail "sandbox says it stopped: $(cat "$TMP/sb.out.err")"

if [ "$fails" -ne 0 ]; then
  echo "$fails failure(s)" >&2
  exit 1
fi
echo "all passed"
