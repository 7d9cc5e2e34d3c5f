#!/usr/bin/env bash
# TLS verification of http.request against python3's ssl module serving a
# self-signed certificate for 127.0.0.1: refused by default (kind tls),
# accepted with ca_file (per request or through http.configure). Then the
# same for the KPIs client: kpis.get, `kpiwatch get` and `kpiwatch gate`
# refuse the server with a one-line message that says how to trust a
# private CA, and accept it with ca_file / --ca-file / KPIWATCH_CA_FILE;
# another CA, or a host name the certificate does not name, stay refused.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
command -v openssl >/dev/null || { echo "SKIP: no openssl command"; exit 0; }

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$tmp/other-key.pem" -out "$tmp/other.pem" 2>/dev/null

cat >"$tmp/server.py" <<'EOF'
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"tls": true}'
        if self.path.startswith("/simulate/test-executions/"):
            body = b'{"status": true, "result": {"total_calls": 42, "avg_score": 0.91, "agent_type": "voice"}}'
            if "/kpis/" not in self.path:  # the execution's status, which the gate reads first
                body = (b'{"count": 0, "next": null, "previous": null, "results": [], "total_pages": 1,'
                        b' "current_page": 1, "status": "completed", "provider": "vapi", "agent_type": "voice",'
                        b' "error_messages": [], "column_order": []}')
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
start_server "$tmp/port" python3 "$tmp/server.py" "$tmp/cert.pem" "$tmp/key.pem" 2>"$tmp/server.log"
port=$(cat "$tmp/port")

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

# ---- the KPIs client ---------------------------------------------------------
ID=c0ffee00-0000-4000-8000-000000000001
export FI_API_KEY=tls-test-key FI_SECRET_KEY=tls-test-secret
unset KPIWATCH_CA_FILE FI_BASE_URL
base="https://127.0.0.1:$port"
kw() { "$KPIWATCH" "$@" >"$tmp/out" 2>"$tmp/err"; rc=$?; }
one_line() { # rc pattern what
  [ "$rc" = "$1" ] || fail "$3: exit $rc, expected $1: $(cat "$tmp/err")"
  [ "$(wc -l <"$tmp/err")" = 1 ] || fail "$3: stderr is not one line: $(cat "$tmp/err")"
  grep -Eq "$2" "$tmp/err" || fail "$3: stderr does not match '$2': $(cat "$tmp/err")"
}
set +e
kw --base-url "$base" get $ID
one_line 3 '^kpiwatch: tls: SSL certificate problem: self-signed certificate .*--ca-file FILE or KPIWATCH_CA_FILE\)' "get refuses by default"
kw --base-url "$base" gate $ID --require 'avg_score>=0.9'
one_line 3 '^kpiwatch gate: .*tls: SSL certificate problem: .*--ca-file' "gate refuses by default"
kw --base-url "$base" --ca-file "$tmp/cert.pem" get $ID
[ "$rc" = 0 ] || fail "get --ca-file: exit $rc: $(cat "$tmp/err")"
grep -q 'total_calls *42' "$tmp/out" || fail "get --ca-file: $(cat "$tmp/out")"
KPIWATCH_CA_FILE="$tmp/cert.pem" kw --base-url "$base" get $ID --json
[ "$rc" = 0 ] || fail "get with KPIWATCH_CA_FILE: exit $rc: $(cat "$tmp/err")"
grep -q '"total_calls":42' "$tmp/out" || fail "get with KPIWATCH_CA_FILE: $(cat "$tmp/out")"
kw --base-url "$base" gate $ID --require 'avg_score>=0.9' --ca-file "$tmp/cert.pem"
[ "$rc" = 0 ] || fail "gate --ca-file: exit $rc: $(cat "$tmp/err")"
kw --base-url "$base" --ca-file "$tmp/other.pem" get $ID
one_line 3 '^kpiwatch: tls: SSL certificate problem: .*\(not signed by a CA of .*other\.pem\)' "another CA"
kw --base-url "https://localhost:$port" --ca-file "$tmp/cert.pem" get $ID
one_line 3 "^kpiwatch: tls: .*(localhost|subject name|match)" "a host name the certificate does not name"
kw --base-url "$base" --ca-file "$tmp/missing.pem" get $ID
one_line 2 '^kpiwatch: config: cannot read the CA file .*missing\.pem' "a missing CA file"
set -e

"$KPIWATCH" - "$base" "$tmp/cert.pem" <<'EOF'
local base, ca = arg[1], arg[2]
local id = "c0ffee00-0000-4000-8000-000000000001"
kpis.configure{ base_url = base, retries = 2, backoff = 0 }
local ok, err = pcall(kpis.get, id)
assert(not ok and err.kind == "tls" and err.retryable == false, tostring(err))
assert(err.attempts == 1, "a tls error is not retried")
assert(kpis.get(id, { ca_file = ca }).total_calls == 42, "per call")
kpis.configure{ ca_file = ca }
assert(kpis.get(id).avg_score == 0.91, "configured")
local r = kpis.get_all({ id, id })
assert(r[1].total_calls == 42 and r[2].total_calls == 42)
print("ok")
EOF
echo "all passed"
