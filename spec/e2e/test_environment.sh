#!/usr/bin/env bash
# The process survives its environment, and a bad one is a configuration
# error (exit 2) with one clear line (issue 13 items 9, 15, 17).
set -eu
. spec/e2e/lib.sh

ID=c0ffee00-0000-4000-8000-000000000001 # the sandbox's avg_score 0.87
export FI_API_KEY=kw-test-key FI_SECRET_KEY=kw-test-secret

# 9. stdin, stdout and stderr closed: libuv must not take fds 0-2.
rc=0
"$KPIWATCH" --sandbox gate "$ID" --require 'avg_score>=0.8' >&- <&- 2>&- || rc=$?
[ "$rc" = 0 ] || fail "a passing gate with fds 0-2 closed exited $rc"
rc=0
"$KPIWATCH" --sandbox gate "$ID" --require 'avg_score>=0.9' >&- <&- 2>&- || rc=$?
[ "$rc" = 1 ] || fail "a failing gate with fds 0-2 closed exited $rc"
# only stdout closed: the report still reaches stderr, the gate its verdict
rc=0
"$KPIWATCH" --sandbox gate "$ID" --require 'avg_score>=0.8' --output "json:$tmp/closed.json" >&- 2>"$tmp/err" || rc=$?
[ "$rc" = 0 ] || fail "with stdout closed: exit $rc: $(cat "$tmp/err")"
grep -q '"verdict":"pass"' "$tmp/closed.json" || fail "no passing report with stdout closed"
echo "ok: closed standard descriptors"

# expect_config_error WHAT PATTERN ENV...: the gate exits 2 with one line
# on stderr matching PATTERN, no traceback, and writes its JSON report.
expect_config_error() {
  local what=$1 pattern=$2 rc=0
  shift 2
  rm -f "$tmp/report.json"
  env "$@" "$KPIWATCH" gate "$ID" --require 'avg_score>=0.8' --output "json:$tmp/report.json" \
    >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" = 2 ] || fail "$what: exit $rc, want 2: $(head -c 400 "$tmp/err")"
  [ "$(wc -l <"$tmp/err")" -le 1 ] || fail "$what: more than one line: $(head -c 600 "$tmp/err")"
  [ "$(wc -c <"$tmp/err")" -lt 600 ] || fail "$what: a $(wc -c <"$tmp/err")-byte message"
  grep -q "traceback" "$tmp/err" && fail "$what: a traceback: $(cat "$tmp/err")"
  grep -Eq "$pattern" "$tmp/err" || fail "$what: message does not match /$pattern/: $(cat "$tmp/err")"
  python3 - "$tmp/report.json" <<'EOF' || fail "$what: no JSON report with the error"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["exit_code"] == 2 and r["verdict"] == "error" and r["error"]["kind"] == "config", r
EOF
  return 0
}

# 15. CR/LF in a credential: named, never echoed.
closed=http://127.0.0.1:1
expect_config_error "CR/LF in FI_API_KEY" "FI_API_KEY contains a control character" \
  FI_BASE_URL=$closed FI_API_KEY=$'kw-key\r\nX-Injected: 1'
grep -q "kw-key\|Injected" "$tmp/err" "$tmp/report.json" && fail "the credential was echoed"
expect_config_error "LF in FI_SECRET_KEY" "FI_SECRET_KEY contains a control character" \
  FI_BASE_URL=$closed FI_SECRET_KEY=$'kw-secret\nX'
echo "ok: control characters in credentials"

# 17. A 100 KB host name: a config error before any request.
long=$(head -c 100000 /dev/zero | tr '\0' a)
expect_config_error "100 KB host name" "host name is 100000 characters long" \
  "FI_BASE_URL=https://$long/"
echo "ok: an overlong host name"
