#!/usr/bin/env bash
# notify.exec hooks (issue 13 item 11): the API credentials never reach the
# child's environment (FI_API_KEY, FI_SECRET_KEY, and any variable holding
# a configured secret), and a timed-out hook takes what it started with it.
set -eu
. spec/e2e/lib.sh

# 1. environment: FI_* by name, MY_KEY because it holds the configured key
FI_API_KEY=kw-exec-api-key FI_SECRET_KEY=kw-exec-secret MY_KEY=kw-configured-9f2c KEEP_ME=visible \
  "$KPIWATCH" -e "
    kpis.configure{ api_key = os.getenv('MY_KEY'), secret_key = 'kw-exec-secret' }
    local notify = require 'kpiwatch.notify'
    notify.exec{ 'sh', '-c', 'env > \"\$1\"', 'sh', '$tmp/env.txt' }{ id = 'e1', state = 'firing', rule = 'r' }
  " || fail "the exec hook failed"
[ -s "$tmp/env.txt" ] || fail "the hook wrote no environment"
grep -q '^KEEP_ME=visible$' "$tmp/env.txt" || fail "an ordinary variable was dropped"
grep -q '^KPIWATCH_EVENT_ID=e1$' "$tmp/env.txt" || fail "no KPIWATCH_EVENT_ID"
if grep -E 'kw-exec|kw-configured|^FI_API_KEY=|^FI_SECRET_KEY=|^MY_KEY=' "$tmp/env.txt"; then
  fail "a secret reached the hook's environment"
fi
echo "ok: credentials stripped from an exec hook's environment"

# 2. timeout: the hook's grandchild (a background sleep) is killed with it
rc=0
"$KPIWATCH" -e "
  local notify = require 'kpiwatch.notify'
  local ok, e = pcall(notify.exec{ 'sh', '-c', 'sleep 30 & echo \$! > \"\$1\"; wait', 'sh', '$tmp/pid',
    timeout = 0.5 }, { id = 'e2', state = 'firing', rule = 'r' })
  assert(not ok and tostring(e.message):find('timed out'), tostring(e and e.message or e))
" 2>"$tmp/err" || rc=$?
[ "$rc" = 0 ] || fail "the timed-out hook: $(cat "$tmp/err")"
pid=$(cat "$tmp/pid")
[ -n "$pid" ] || fail "no grandchild pid"
for _ in $(seq 50); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid" 2>/dev/null || true
  fail "the grandchild $pid of a timed-out hook is still running"
fi
echo "ok: a timed-out hook's process group is killed"
