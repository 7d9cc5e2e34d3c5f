#!/usr/bin/env bash
# kpiwatch check scripts/rules.lua end to end, as a user runs it: against the built-in
# sandbox (kpiwatch --sandbox), with its webhook pointed at a python3
# standard-library receiver that checks the Standard Webhooks signature with
# its own hmac. Exit codes: 0 healthy, 1 firing or no data, 3 when a
# notification can be neither delivered nor spooled.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
RULES="$SRC/scripts/rules.lua"

# Never touch the real home's spool; no webhook unless a test sets one.
export HOME="$tmp/home" XDG_STATE_HOME= KPIWATCH_SPOOL=
unset ALERT_WEBHOOK_URL ALERT_WEBHOOK_SECRET
mkdir -p "$HOME"

GOOD=c0ffee00-0000-4000-8000-000000000001     # voice-outbound, healthy
FAILING=c0ffee00-0000-4000-8000-000000000005  # below every threshold
EMPTY=c0ffee00-0000-4000-8000-000000000004    # null averages

run() { # run ID -> sets rc, out, err
  set +e
  "$KPIWATCH" --sandbox check "$RULES" "$1" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  set -e
  out=$(cat "$tmp/out")
  err=$(cat "$tmp/err")
}

# ---- 1. without a webhook: exit codes 0 and 1 -------------------------------------
run "$GOOD"
[ "$rc" = 0 ] || fail "healthy fixture: exit $rc, stderr: $err"
[ -z "$out" ] || fail "healthy fixture printed alerts: $out"

run "$FAILING"
[ "$rc" = 1 ] || fail "failing fixture: exit $rc, stderr: $err"
grep -q "^FIRING \[critical\] score-floor: avg_score is 0.62, below 0.8 (execution $FAILING)$" "$tmp/out" \
  || fail "no score-floor line on stdout: $out"
[ "$(grep -c '^FIRING \[warning\] eval-floor: ' "$tmp/out")" = 5 ] || fail "expected 5 eval-floor alerts: $out"
grep -q "hook 'ops' skipped: notify.webhook has no url" "$tmp/err" || fail "no skip notice: $err"

run "$EMPTY"
[ "$rc" = 1 ] || fail "empty fixture (no data) must not pass: exit $rc"
grep -q "no data: rule 'score-floor' on $EMPTY: avg_score is null" "$tmp/err" || fail "no no-data line: $err"

# ---- 2. with a signed webhook to a real receiver ----------------------------------
SECRET="whsec_$(printf 'kpiwatch e2e secret key' | base64)"
start_receiver() { # start_receiver PORT -> sets port, server_pid
  : >"$tmp/port"
  python3 "$SRC/spec/e2e/mockserver.py" webhook "$SECRET" "$tmp/received.jsonl" "$1" >"$tmp/port" &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
  port=$(cat "$tmp/port")
  [ -n "$port" ] || fail "receiver did not start"
}
stop_receiver() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }

start_receiver 0
export ALERT_WEBHOOK_URL="http://127.0.0.1:$port/kpiwatch" ALERT_WEBHOOK_SECRET="$SECRET"
run "$FAILING"
[ "$rc" = 1 ] || fail "failing fixture with webhook: exit $rc, stderr: $err"
python3 - "$tmp/received.jsonl" "$FAILING" <<'EOF' || fail "webhook deliveries wrong"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 1, rows                       # one execution: one grouped notification
assert all(r["valid"] for r in rows), rows        # signatures verified independently
g = rows[0]["event"]
assert g["id"] == rows[0]["id"] and g["type"] == "kpiwatch.alert.group", g
assert g["state"] == "firing" and g["execution_id"] == sys.argv[2] and g["firing"] == 2, g
rules = sorted(e["rule"] for e in g["alerts"])
assert rules == ["failed-calls", "score-floor"], rules   # score-floor and failed-calls go to ops
for e in g["alerts"]:
    assert e["state"] == "firing" and e["execution_id"] == sys.argv[2], e
    assert e["fired_at"].endswith("Z") and e["kpis"]["total_calls"] == 80, e
fc = [e for e in g["alerts"] if e["rule"] == "failed-calls"][0]
assert fc["summary"] == "23 of 80 calls failed", fc
EOF
grep -q "ops" "$tmp/err" && fail "unexpected hook message: $err"
[ ! -e "$HOME/.local/state/kpiwatch/spool.json" ] || fail "spool written although all was delivered"

# ---- 3. receiver down: spooled, delivered on the next run, each once ---------------
stop_receiver
rm -f "$tmp/received.jsonl"
run "$FAILING"
[ "$rc" = 1 ] || fail "receiver down: exit $rc (want 1: the alerts fired, notifications spooled)"
spool="$HOME/.local/state/kpiwatch/spool.json"
[ -f "$spool" ] || fail "nothing spooled: $err"
[ "$(stat -c %a "$spool")" = 600 ] || fail "spool mode is $(stat -c %a "$spool")"
grep -q "spooled to $spool" "$tmp/err" || fail "stderr does not say it spooled: $err"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["entries"]) == 1, d; assert len(d["entries"][0]["event"]["alerts"]) == 2, d' "$spool" \
  || fail "spool should hold 1 entry, the group of 2 alerts"

start_receiver "$port"
run "$GOOD"
[ "$rc" = 0 ] || fail "replay run: exit $rc, stderr: $err"
python3 - "$tmp/received.jsonl" "$spool" <<'EOF' || fail "spooled notifications not delivered exactly once"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 1 and all(r["valid"] for r in rows), rows
assert len(rows[0]["event"]["alerts"]) == 2, rows
assert json.load(open(sys.argv[2]))["entries"] == [], "spool not emptied"
EOF
run "$GOOD"
[ "$(wc -l <"$tmp/received.jsonl")" = 1 ] || fail "a spooled notification was delivered twice"
stop_receiver

# ---- 4. neither delivered nor spooled: exit 3 ------------------------------------
export KPIWATCH_SPOOL=/etc/passwd/not-a-dir/spool.json
run "$FAILING"
[ "$rc" = 3 ] || fail "lost notifications: exit $rc (want 3), stderr: $err"
grep -q "could be neither delivered nor spooled" "$tmp/err" || fail "no lost message: $err"
# the secret never shows
grep -qF "$SECRET" "$tmp/out" "$tmp/err" && fail "the webhook secret leaked"

echo "ok: kpiwatch check scripts/rules.lua end to end"
