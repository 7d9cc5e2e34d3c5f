# spec/e2e/lib.sh: what the shell end-to-end tests (and benchmarks) share.
# Source it after `set -eu`: it sets KPIWATCH and SRC, makes $tmp (removed
# at exit, with the background server killed) and defines fail and
# start_server.

KPIWATCH=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-$(pwd)}
tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# start_server OUT CMD...: run CMD in the background with its stdout in the
# file OUT and wait (5 s at most) until it has printed something, e.g. its
# port or URL; sets server_pid. Fails when nothing comes.
start_server() {
  out=$1
  shift
  "$@" >"$out" &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$out" ] && return 0
    sleep 0.05
  done
  fail "server did not start: $*"
}
