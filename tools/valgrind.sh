#!/usr/bin/env bash
# tools/valgrind.sh [BUILD]: memcheck over the C unit tests and end-to-end
# runs of the binary (make test-valgrind): `get` and `gate` against the
# in-process sandbox, and spec/valgrind/smoke.lua (server, client, faults,
# retries, alert delivery to a webhook and an exec hook, spool, tasks).
# Fails on any memcheck error (invalid read or write, uninitialised value,
# bad free) and on any definitely lost block; memory still reachable at
# exit (libcurl's and OpenSSL's global state) is not a leak.
# BUILD must be a build without sanitizers (default build/).
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
KW=$BUILD/kpiwatch
cd "$SRC" || exit 2
if [ ! -x "$KW" ]; then
  echo "valgrind: no $KW: build first" >&2
  exit 2
fi
if grep -q "KW_SANITIZE:BOOL=ON" "$BUILD/CMakeCache.txt" 2>/dev/null; then
  echo "valgrind: $BUILD is a sanitizer build; valgrind needs a plain one" >&2
  exit 2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export FI_API_KEY= FI_SECRET_KEY= FI_BASE_URL=
# the runs record into a history (the SQLite path under memcheck too), this
# run's own, never the user's
export KPIWATCH_HISTORY=$TMP/history.db

fails=0
n=0
# vg NAME CMD...: run CMD under memcheck; its own exit status must be 0
# unless EXPECT is set.
vg() {
  local name=$1 rc
  shift
  n=$((n + 1))
  valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite --error-exitcode=99 --track-origins=yes \
    --log-file="$TMP/$n.vg" "$@" >"$TMP/$n.out" 2>&1
  rc=$?
  if [ $rc -eq 99 ] || grep -q "ERROR SUMMARY: [1-9]" "$TMP/$n.vg"; then
    echo "valgrind: FAIL $name: memcheck errors"
    sed 's/^/  | /' "$TMP/$n.vg" | tail -n 60
    fails=$((fails + 1))
  elif [ $rc -ne "${EXPECT:-0}" ]; then
    echo "valgrind: FAIL $name: exit $rc, wanted ${EXPECT:-0}"
    sed 's/^/  | /' "$TMP/$n.out" | tail -n 20
    fails=$((fails + 1))
  else
    echo "valgrind: ok $name ($(grep -o 'definitely lost: [0-9,]* bytes' "$TMP/$n.vg" || echo 'no leaks'))"
  fi
}

for t in "$BUILD"/unit_*; do
  [ -x "$t" ] && vg "$(basename "$t")" "$t"
done
ID=c0ffee00-0000-4000-8000-000000000001
vg "kpiwatch --sandbox get" "$KW" --sandbox get "$ID"
vg "kpiwatch --sandbox get --json" "$KW" --sandbox get "$ID" --json
EXPECT=1 vg "kpiwatch --sandbox gate (failing check)" "$KW" --sandbox gate "$ID" \
  --require 'avg_score>=0.95' --require 'eval:*>=50'
mkdir -p "$TMP/smoke"
vg "kpiwatch --sandbox spec/valgrind/smoke.lua" "$KW" --sandbox spec/valgrind/smoke.lua "$TMP/smoke"

if [ $fails -ne 0 ]; then
  echo "valgrind: $fails of $n runs failed" >&2
  exit 1
fi
echo "valgrind: ok ($n runs, no memcheck errors, no definite leaks)"
