#!/usr/bin/env bash
# kpiwatch's HTTP client against a server it did not write: python3's
# standard-library http.server serving a temp dir on a free port.
# Checks status, body, 404, lowercased response headers, reuse of the one
# HTTP/1.1 connection (seen from the server's log of client ports), and a
# connection refused once the server is gone.
set -euo pipefail

. "$(dirname "$0")/lib.sh"

mkdir "$tmp/www"
printf '{"avg_score": 0.91, "calls": 12}' >"$tmp/www/kpis.json"
head -c 300000 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/www/big.txt"

# SimpleHTTPRequestHandler with HTTP/1.1 keep-alive, logging each request's
# client port so the test can count connections from the server's side.
cat >"$tmp/server.py" <<'EOF'
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/drop":
            # Answers as if the connection stayed open, then closes it:
            # the client finds out only when it tries to reuse it.
            body = b"dropped"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if self.path != "/stream":
            return super().do_GET()
        # No Content-Length: the body ends when the connection closes, so
        # only the client's running count can cut it off.
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(64):
            self.wfile.write(b"x" * 16384)
    def log_message(self, fmt, *args):
        sys.stderr.write("port=%d %s\n" % (self.client_address[1], fmt % args))
        sys.stderr.flush()
handler = functools.partial(H, directory=sys.argv[1])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
EOF
start_server "$tmp/port" python3 "$tmp/server.py" "$tmp/www" 2>"$tmp/server.log"
port=$(cat "$tmp/port")
base="http://127.0.0.1:$port"

cat >"$tmp/client.lua" <<'EOF'
local base = arg[1]
local function check(cond, what)
  if not cond then io.stderr:write("FAIL: ", what, "\n"); os.exit(1) end
end
local r = http.request{ url = base .. "/kpis.json" }
check(r.status == 200, "status 200, got " .. tostring(r.status))
check(r.body == '{"avg_score": 0.91, "calls": 12}', "body: " .. r.body)
check(r.headers["content-type"] == "application/json", "content-type lowercased")
check(r.headers["Content-Type"] == nil, "no mixed-case header names")
check(r.headers["content-length"] == tostring(#r.body), "content-length")
local names = {}
for _, h in ipairs(r.header_list) do names[#names + 1] = h[1] end
check(#names >= 4, "header_list has the header lines")
for _, n in ipairs(names) do check(n == n:lower(), "header_list name lowercased: " .. n) end
check(json.decode(r.body).calls == 12, "json body")

-- Sequential requests reuse one connection.
for _ = 1, 5 do
  check(http.request{ url = base .. "/kpis.json" }.status == 200, "repeat")
end

-- http.server closes the connection after an error page (Connection: close).
local nf = http.request{ url = base .. "/missing" }
check(nf.status == 404, "404, got " .. tostring(nf.status))
check(nf.headers["connection"] == "close", "404 closes")

local big = http.request{ url = base .. "/big.txt" }
check(big.status == 200 and #big.body == 600000, "big body " .. #big.body)

local ok, err = pcall(http.request, { url = base .. "/big.txt", max_body = 1000 })
check(not ok and err.kind == "too_large", "too_large: " .. tostring(err))
local before = http.stats().connections
local s = http.request{ url = base .. "/stream" }
check(#s.body == 64 * 16384 and s.headers["content-length"] == nil, "close-delimited body")
ok, err = pcall(http.request, { url = base .. "/stream", max_body = 100000 })
check(not ok and err.kind == "too_large", "too_large without Content-Length: " .. tostring(err))
check(err.url == base .. "/stream", "error url")
print("connections", before)
-- A kept-alive connection the server closed while idle: the next request
-- must not fail (or hang) on it.
for _ = 1, 3 do
  local d = http.request{ url = base .. "/drop", timeout = 5 }
  check(d.status == 200 and d.body == "dropped", "request after a dropped connection")
  task.sleep(0.05)
end
EOF

out=$(KPIWATCH_LUALIB="$SRC/lualib" "$KPIWATCH" "$tmp/client.lua" "$base")
echo "$out"
# One connection until the server closed it after the 404, a second after.
conns=$(awk '/^connections/ {print $2}' <<<"$out")
if [ "$conns" -ne 2 ]; then
  echo "FAIL: expected connection reuse, client opened $conns connections" >&2
  exit 1
fi
# Server side: the six requests for kpis.json came over one connection.
ports=$(grep -c '"GET /kpis.json' "$tmp/server.log")
distinct=$(grep '"GET /kpis.json' "$tmp/server.log" | sed 's/ .*//' | sort -u | wc -l)
if [ "$ports" -ne 6 ] || [ "$distinct" -ne 1 ]; then
  echo "FAIL: server saw $ports requests from $distinct ports" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi

kill "$server_pid"
wait "$server_pid" 2>/dev/null || true
server_pid=
# Nothing listens there now: a connect error, exit status 2 (script error).
set +e
KPIWATCH_LUALIB="$SRC/lualib" "$KPIWATCH" -e "
local ok, e = pcall(http.request, {url = '$base/kpis.json'})
assert(not ok and e.kind == 'connect', tostring(e))
assert(e.url == '$base/kpis.json')
http.request{url = '$base/kpis.json'}" 2>"$tmp/err"
rc=$?
set -e
if [ "$rc" -eq 0 ] || ! grep -q "connect: " "$tmp/err"; then
  echo "FAIL: uncaught connect error: rc=$rc" >&2
  cat "$tmp/err" >&2
  exit 1
fi
echo "ok"
