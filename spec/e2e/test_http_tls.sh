#!/usr/bin/env bash
# TLS verification of http.request against python3's ssl module serving a
# self-signed certificate for 127.0.0.1: refused by default (kind tls),
# accepted with ca_file (per request or through http.configure).
set -euo pipefail

KPIWATCH=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-$(pwd)}
command -v openssl >/dev/null || { echo "SKIP: no openssl command"; exit 0; }
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cat >"$tmp/server.py" <<'EOF'
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"tls": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
EOF
python3 "$tmp/server.py" "$tmp/cert.pem" "$tmp/key.pem" >"$tmp/port" 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 100); do
  [ -s "$tmp/port" ] && break
  sleep 0.05
done
port=$(cat "$tmp/port")
[ -n "$port" ] || { echo "FAIL: server did not start" >&2; exit 1; }

KPIWATCH_LUALIB="$SRC/lualib" "$KPIWATCH" - "https://127.0.0.1:$port/" "$tmp/cert.pem" <<'EOF'
local url, ca = arg[1], arg[2]
local ok, err = pcall(http.request, { url = url, timeout = 5 })
assert(not ok, "a self-signed certificate must be refused")
assert(err.kind == "tls", "kind: " .. tostring(err))
assert(err.url == url)
local r = http.request{ url = url, ca_file = ca, timeout = 5 }
assert(r.status == 200 and json.decode(r.body).tls == true, "with ca_file")
http.configure{ ca_file = ca }
r = http.request{ url = url, timeout = 5 }
assert(r.status == 200, "with the configured CA")
http.configure{ ca_file = false }
ok, err = pcall(http.request, { url = url, timeout = 5 })
assert(not ok and err.kind == "tls", "back to the system bundle")
print("ok")
EOF
