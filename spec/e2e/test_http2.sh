#!/usr/bin/env bash
# http.request uses HTTP/2 where the server offers it (ALPN over TLS), many
# concurrent requests on one connection: nghttpd (Debian nghttp2-server), a
# server that is not kpiwatch's own, serves a file over h2 with a
# self-signed certificate given to the client as its CA.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
command -v nghttpd >/dev/null || fail "nghttpd is required (Debian package nghttp2-server)"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
mkdir "$tmp/www"
printf '{"avg_score": 0.9}' >"$tmp/www/doc.json"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nghttpd -d "$tmp/www" "$port" "$tmp/key.pem" "$tmp/cert.pem" >"$tmp/nghttpd.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done

out=$("$KPIWATCH" - "https://127.0.0.1:$port/doc.json" "$tmp/cert.pem" <<'LUA'
local url, ca = arg[1], arg[2]
http.configure { ca_file = ca }
local ts = {}
for i = 1, 20 do ts[i] = task.spawn(http.request, { url = url }) end
local versions = {}
for _, r in ipairs(task.all(ts)) do
  assert(r[1].status == 200, "status " .. r[1].status)
  assert(json.decode(r[1].body).avg_score == 0.9)
  versions[r[1].http_version] = (versions[r[1].http_version] or 0) + 1
end
print("h2=" .. (versions["2"] or 0), "connections=" .. http.stats().connections)
LUA
)
[ "$out" = "$(printf 'h2=20\tconnections=1')" ] || fail "expected 20 HTTP/2 responses on one connection, got: $out"
echo "ok: 20 concurrent requests over HTTP/2 on one connection"
