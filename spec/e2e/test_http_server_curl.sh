#!/usr/bin/env bash
# http.serve as a user runs it, talked to by the real `curl` command (not by
# kpiwatch's own client): statuses, headers both ways, bodies both ways
# (5 MiB), a handler that raises (500, logged, server keeps serving),
# keep-alive reuse seen by the server, HEAD, HTTP/2 over cleartext, then a
# clean shutdown from a handler (exit 0, port released).
set -u
cd "${KPIWATCH_SRC:-$(dirname "$0")/../..}"
BIN=${KPIWATCH:-build/kpiwatch}
command -v curl >/dev/null || { echo "curl is required"; exit 1; }

T=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok - $1"; }
not_ok() { fails=$((fails + 1)); echo "not ok - $1"; }
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1: expected [$2], got [$3]"; fi
}
contains() { # contains NAME NEEDLE HAYSTACK
  case "$3" in *"$2"*) ok "$1" ;; *) not_ok "$1: [$2] not in [$3]" ;; esac
}

cat >"$T/serve.lua" <<'EOF'
local srv
srv = http.serve{
  max_body = 8 * 1024 * 1024,
  handler = function(req)
    if req.path == "/echo" then
      local names = {}
      for k in pairs(req.headers) do names[#names + 1] = k end
      table.sort(names)
      local lines = { "method=" .. req.method, "path=" .. req.path, "query=" .. req.query,
                      "param_x=[" .. tostring(req.params.x) .. "]", "http=" .. req.http_version,
                      "x-custom=" .. tostring(req.headers["x-custom"]),
                      "x-multi=" .. tostring(req.headers["x-multi"]),
                      "bodylen=" .. #req.body }
      return { status = tonumber(req.params.status) or 200,
               headers = { ["X-Reply"] = "pong", ["x-list"] = { "a", "b" },
                           ["content-type"] = "text/plain" },
               body = table.concat(lines, "\n") .. "\n" }
    elseif req.path == "/body" then
      return { headers = { ["content-type"] = "application/octet-stream" }, body = req.body }
    elseif req.path == "/big" then
      local chunk = {}
      for i = 0, 255 do chunk[#chunk + 1] = string.char(i) end
      return string.rep(table.concat(chunk), 5 * 1024 * 1024 // 256)
    elseif req.path == "/raise" then
      error("boom from the handler")
    elseif req.path == "/sleep" then
      task.sleep(0.2)
      return "slept\n"
    elseif req.path == "/stats" then
      return { json = srv:stats() }
    elseif req.path == "/quit" then
      srv:close()
      return "bye\n"
    end
    return { status = 404, body = "no route\n" }
  end,
}
io.stdout:write(srv.port, "\n")
io.stdout:flush()
srv:wait()
print("closed")
EOF

"$BIN" "$T/serve.lua" >"$T/out" 2>"$T/err" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  [ -s "$T/out" ] && break
  sleep 0.05
done
PORT=$(head -n1 "$T/out")
if ! [[ "$PORT" =~ ^[0-9]+$ ]]; then
  echo "server did not start"; cat "$T/err"; exit 1
fi
U="http://127.0.0.1:$PORT"

# status codes and headers both ways
code=$(curl -s -o "$T/b1" -D "$T/h1" -w '%{http_code}' -H 'X-Custom: abc' -H 'X-Multi: 1' \
  -H 'X-Multi: 2' "$U/echo?status=201&x=%20y")
check "status from the handler" 201 "$code"
b1=$(cat "$T/b1")
contains "request method" "method=GET" "$b1"
contains "path without query" "path=/echo" "$b1"
contains "raw query" "query=status=201&x=%20y" "$b1"
contains "decoded params" "param_x=[ y]" "$b1"
contains "request header, lowercased name" "x-custom=abc" "$b1"
contains "repeated request header joined" "x-multi=1, 2" "$b1"
h1=$(tr -d '\r' <"$T/h1")
contains "response header" "x-reply: pong" "$h1"
contains "repeated response header a" "x-list: a" "$h1"
contains "repeated response header b" "x-list: b" "$h1"
contains "content-type" "content-type: text/plain" "$h1"
contains "server header" "server: kpiwatch/" "$h1"
check "404 from the handler" 404 "$(curl -s -o /dev/null -w '%{http_code}' "$U/nowhere")"
check "503 status passes through" 503 "$(curl -s -o /dev/null -w '%{http_code}' "$U/echo?status=503")"

# request and response bodies
printf 'hello\0world' >"$T/small"
curl -s --data-binary @"$T/small" "$U/body" -o "$T/small.out"
if cmp -s "$T/small" "$T/small.out"; then ok "binary request body echoed"; else not_ok "binary request body echoed"; fi
head -c $((5 * 1024 * 1024)) /dev/urandom >"$T/big.in"
curl -s --data-binary @"$T/big.in" -H 'content-type: application/octet-stream' "$U/body" -o "$T/big.echo"
if cmp -s "$T/big.in" "$T/big.echo"; then ok "5 MiB request body echoed"; else not_ok "5 MiB request body echoed"; fi
curl -s "$U/big" -o "$T/big.out"
check "5 MiB response body size" $((5 * 1024 * 1024)) "$(wc -c <"$T/big.out" | tr -d ' ')"
python3 - "$T/big.out" <<'EOF' && ok "5 MiB response body content" || not_ok "5 MiB response body content"
import sys
data = open(sys.argv[1], "rb").read()
sys.exit(0 if data == bytes(range(256)) * (len(data) // 256) and len(data) == 5 << 20 else 1)
EOF

# HEAD: the length of the body that GET would send, no body
head_out=$(curl -s -I "$U/big" | tr -d '\r')
contains "HEAD content-length" "content-length: 5242880" "${head_out,,}"
# raw bytes: everything the server sends for a HEAD on a connection it closes
python3 - "$PORT" <<'EOF' && ok "HEAD has no body" || not_ok "HEAD has no body"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"HEAD /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, sep, rest = data.partition(b"\r\n\r\n")
sys.exit(0 if sep and head.startswith(b"HTTP/1.1 200") and rest == b"" else 1)
EOF

# a handler that raises: 500, logged with a traceback, and the server goes on
check "handler error gives 500" 500 "$(curl -s -o /dev/null -w '%{http_code}' "$U/raise")"
check "next request still answered" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$U/echo")"
err=$(cat "$T/err")
contains "handler error logged" "boom from the handler" "$err"
contains "handler error has a traceback" "stack traceback" "$err"

# keep-alive: one curl, several requests, one connection as the server sees it
before=$(curl -s "$U/stats")
c0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["connections"])' "$before")
r0=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$before")
after=$(curl -s -o /dev/null "$U/echo" -o /dev/null "$U/sleep" -o /dev/null "$U/echo" "$U/stats")
c1=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["connections"])' "$after")
r1=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$after")
check "keep-alive: 4 requests on one new connection" "1 4" "$((c1 - c0)) $((r1 - r0))"

# HTTP/2 over cleartext (prior knowledge and upgrade), when curl has it
if curl --version | grep -qw HTTP2; then
  contains "h2c prior knowledge" "http=2" "$(curl -s --http2-prior-knowledge "$U/echo")"
  contains "h2c upgrade" "http=2" "$(curl -s --http2 "$U/echo")"
  curl -s --http2-prior-knowledge --data-binary @"$T/big.in" "$U/body" -o "$T/big.h2"
  if cmp -s "$T/big.in" "$T/big.h2"; then ok "5 MiB over HTTP/2"; else not_ok "5 MiB over HTTP/2"; fi
else
  echo "ok - HTTP/2 checks skipped: curl without HTTP2 # SKIP"
fi

# a concurrent burst from separate curl processes
for i in $(seq 1 20); do
  curl -s -o /dev/null -w '%{http_code}\n' "$U/sleep" >>"$T/burst" &
done
wait $(jobs -p | grep -v "^$SERVER_PID\$") 2>/dev/null
check "20 concurrent requests answered" 20 "$(grep -c '^200$' "$T/burst")"

# shutdown from inside a handler: that request is answered, the process ends
check "quit answered" "bye" "$(curl -s "$U/quit")"
for _ in $(seq 1 100); do
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.05
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
  not_ok "server exits after close"
  kill "$SERVER_PID"
fi
wait "$SERVER_PID"
status=$?
SERVER_PID=
check "exit status after close" 0 "$status"
contains "wait() returned" "closed" "$(cat "$T/out")"
curl -s -o /dev/null --max-time 2 "$U/echo"
check "port released (connection refused)" 7 "$?"
if grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T/err"; then
  not_ok "sanitizer report"; cat "$T/err"
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
