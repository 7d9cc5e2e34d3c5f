#!/usr/bin/env bash
# Closing an http.serve server while requests are in flight: handlers still
# sleeping, an idle keep-alive connection, a half-sent request, HTTP/1.1 and
# HTTP/2 clients. close() must answer the waiting requests (503), close every
# connection and let the script finish (exit 0) at once, not when the
# handlers would have finished. Then the same with SIGTERM and SIGINT, which
# close the server at exit. In the ASan build any sanitizer report (leak,
# use after free) fails the run.
set -u
cd "${KPIWATCH_SRC:-$(dirname "$0")/../..}"
BIN=${KPIWATCH:-build/kpiwatch}
command -v curl >/dev/null || { echo "curl is required"; exit 1; }

T=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null
  exec 3>&- 4>&- 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok - $1"; }
not_ok() { fails=$((fails + 1)); echo "not ok - $1"; }
check() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: expected [$2], got [$3]"; fi; }
no_sanitizer_report() {
  if grep -q "AddressSanitizer\|LeakSanitizer\|runtime error:" "$1"; then
    not_ok "$2: sanitizer report"; cat "$1"
  else
    ok "$2: no sanitizer report"
  fi
}
H2=0
curl --version | grep -qw HTTP2 && H2=1

# The script closes the server itself once WANT requests are in its handlers
# (mode "close"), or just serves until a signal (mode "signal").
cat >"$T/serve.lua" <<'EOF'
local mode, want = arg[1], tonumber(arg[2])
local srv = http.serve{ handler = function(req)
  if req.path == "/slow" then task.sleep(30) end
  return "fast\n"
end }
io.stdout:write(srv.port, "\n")
io.stdout:flush()
if mode == "close" then
  while srv:stats().in_flight < want do task.sleep(0.02) end
  srv:close()
  srv:wait()
  local s = srv:stats()
  print("state=" .. s.state)
else
  srv:wait()
end
EOF

start_server() { # start_server MODE WANT
  : >"$T/out"
  "$BIN" "$T/serve.lua" "$1" "$2" >"$T/out" 2>"$T/err" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    [ -s "$T/out" ] && break
    sleep 0.05
  done
  PORT=$(head -n1 "$T/out")
  [[ "$PORT" =~ ^[0-9]+$ ]] || { echo "server did not start"; cat "$T/err"; exit 1; }
  U="http://127.0.0.1:$PORT"
}

# Slow requests from separate curl processes, an idle keep-alive connection
# (fd 3: one request answered, then nothing) and a request cut in the middle
# of its headers (fd 4).
load() { # load N_HTTP1 N_HTTP2
  rm -f "$T"/code.*
  for i in $(seq 1 "$1"); do
    curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$U/slow" >"$T/code.h1.$i" &
  done
  if [ "$H2" = 1 ]; then
    for i in $(seq 1 "$2"); do
      curl -s -o /dev/null -w '%{http_code}' --max-time 20 --http2-prior-knowledge "$U/slow" \
        >"$T/code.h2.$i" &
    done
  fi
  exec 3<>"/dev/tcp/127.0.0.1/$PORT"
  printf 'GET /fast HTTP/1.1\r\nHost: x\r\n\r\n' >&3
  exec 4<>"/dev/tcp/127.0.0.1/$PORT"
  printf 'GET /slow HTTP/1.1\r\nHost: x\r\nX-Half: ' >&4
}

wait_exit() { # wait_exit NAME SECONDS -> sets STATUS
  local i
  for i in $(seq 1 $(($2 * 20))); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    not_ok "$1: process still running after $2 s"
    kill -9 "$SERVER_PID"
  else
    ok "$1: process ended within $2 s"
  fi
  wait "$SERVER_PID"
  STATUS=$?
  SERVER_PID=
}

connections_closed() { # both raw connections see the end of the stream
  local idle half
  idle=$(timeout 5 cat <&3 | tr -d '\r')
  half=$(timeout 5 cat <&4 | wc -c | tr -d ' ')
  exec 3>&- 4>&-
  case "$idle" in
    "HTTP/1.1 200"*fast) ok "$1: idle keep-alive connection closed after its answer" ;;
    *) not_ok "$1: idle keep-alive connection: [$idle]" ;;
  esac
  check "$1: half-sent request connection closed" 0 "$half"
}

# --- close() from the script ---------------------------------------------
N1=6 N2=2
want=$N1
[ "$H2" = 1 ] && want=$((N1 + N2))
start_server close "$want"
load "$N1" "$N2"
wait_exit "close()" 5
check "close(): exit status" 0 "$STATUS"
check "close(): wait() saw the server closed" "state=closed" "$(sed -n 2p "$T/out")"
wait
check "close(): waiting HTTP/1.1 requests answered 503" "$N1" "$(cat "$T"/code.h1.* | grep -o 503 | wc -l | tr -d ' ')"
if [ "$H2" = 1 ]; then
  check "close(): waiting HTTP/2 requests answered 503" "$N2" "$(cat "$T"/code.h2.* | grep -o 503 | wc -l | tr -d ' ')"
fi
connections_closed "close()"
no_sanitizer_report "$T/err" "close()"

# --- a signal at exit closes the server -----------------------------------
for sig in TERM INT; do
  start_server signal 0
  load 4 1
  for _ in $(seq 1 100); do
    [ "$(curl -s "$U/fast")" = fast ] && break
    sleep 0.05
  done
  sleep 0.3 # let the slow requests reach their handlers
  kill -s "$sig" "$SERVER_PID"
  wait_exit "SIG$sig" 5
  if [ "$sig" = TERM ]; then exp=143; else exp=130; fi
  check "SIG$sig: exit status" "$exp" "$STATUS"
  wait
  connections_closed "SIG$sig"
  no_sanitizer_report "$T/err" "SIG$sig"
done

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
