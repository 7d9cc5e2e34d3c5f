#!/usr/bin/env bash
# kpiwatch get against a server it did not write: python3 -m http.server
# serving the recorded bodies of spec/fixtures/kpis/<uuid>.json at
# /simulate/test-executions/<uuid>/kpis/ (as index.html files; the client
# goes by the body, not the content type). http.server ignores the
# credential headers, so this checks parsing and error handling of a
# foreign server, not authentication.
set -u
KW=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-.}
TMP=$(mktemp -d)
PY=
cleanup() {
  [ -n "$PY" ] && kill "$PY" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

ROOT=$TMP/www
for f in "$SRC"/spec/fixtures/kpis/*.json; do
  id=$(basename "$f" .json)
  mkdir -p "$ROOT/simulate/test-executions/$id/kpis"
  cp "$f" "$ROOT/simulate/test-executions/$id/kpis/index.html"
done
# a 200 that is not JSON, as a misrouted base URL would give
mkdir -p "$ROOT/simulate/test-executions/0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0f/kpis"
echo '<html><head><title>Welcome</title></head><body>hi</body></html>' \
  >"$ROOT/simulate/test-executions/0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0f/kpis/index.html"

python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$ROOT" >"$TMP/py.out" 2>"$TMP/py.err" &
PY=$!
PORT=
for _ in $(seq 1 100); do
  PORT=$(sed -n 's/.* port \([0-9]*\).*/\1/p' "$TMP/py.out" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.05
done
[ -n "$PORT" ] || { echo "python http.server did not start: $(cat "$TMP/py.out" "$TMP/py.err")" >&2; exit 1; }

kw() {
  FI_BASE_URL=http://127.0.0.1:$PORT FI_API_KEY=py-key FI_SECRET_KEY=py-secret "$KW" "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  err=$(cat "$TMP/err")
}
expect_rc() {
  if [ "$rc" -ne "$1" ]; then fail "$2: exit $rc, wanted $1 (stderr: $err)"; else ok "$2"; fi
}

for f in "$SRC"/spec/fixtures/kpis/*.json; do
  id=$(basename "$f" .json)
  kw get "$id" --json
  expect_rc 0 "get $id --json"
  # the normalized output agrees with the recorded body, key by key
  python3 - "$f" "$TMP/out" "$id" <<'EOF' || fail "normalized $id"
import json, re, sys
raw = json.load(open(sys.argv[1]))
if isinstance(raw.get("status"), bool) and isinstance(raw.get("result"), dict):
    raw = raw["result"]
out = json.load(open(sys.argv[2]))
assert out["execution_id"] == sys.argv[3]
snake = lambda k: re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)
for k, v in raw.items():
    assert out[snake(k)] == v, (k, out.get(snake(k)), v)
for k in ("total_calls", "calls_attempted", "connected_calls", "failed_calls", "total_duration"):
    assert type(out[k]) is int, k
assert set(out) == {snake(k) for k in raw} | {"execution_id"}, set(out) ^ {snake(k) for k in raw}
EOF
  kw get "$id"
  expect_rc 0 "get $id (summary)"
  grep -q "^KPIs of execution $id" "$TMP/out" || fail "summary of $id"
done

kw get 0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0e
expect_rc 3 "python's HTML 404 exits 3"
printf '%s' "$err" | grep -q '^kpiwatch: not_found: HTTP 404' || fail "404 message: $err"

kw get 0b5e7c1d-9a2f-4e8b-8c3d-5f6a7b8c9d0f
expect_rc 3 "an HTML 200 exits 3"
printf '%s' "$err" | grep -q '^kpiwatch: protocol: expected a JSON object, got an HTML' || fail "protocol message: $err"

# the request python saw: the documented path with its trailing slash
grep -q '"GET /simulate/test-executions/c0ffee00-0000-4000-8000-000000000001/kpis/ HTTP/1.1" 200' "$TMP/py.err" \
  || fail "python's log does not show the expected request: $(head -3 "$TMP/py.err")"

if [ "$fails" -ne 0 ]; then
  echo "$fails failure(s)" >&2
  exit 1
fi
echo "all passed"
