#!/bin/sh
# `make run`'s main job (scripts/demo.sh) works end to end against the
# in-process sandbox: every step ends with the exit code it announces.
set -eu
KW=${KPIWATCH:-build/kpiwatch}
out=$(scripts/demo.sh "$KW" 2>&1) || { echo "$out"; echo "FAIL: scripts/demo.sh exited non-zero"; exit 1; }
n=$(printf '%s\n' "$out" | grep -c 'as expected)$' || true)
if [ "$n" -ne 7 ]; then
  echo "$out"
  echo "FAIL: expected 7 steps with their announced exit codes, saw $n"
  exit 1
fi
printf '%s\n' "$out" | grep -q '^gate FAIL: 6 checks' || { echo "FAIL: the failing gate step did not report"; exit 1; }
printf '%s\n' "$out" | grep -q 'execution failed: ' || { echo "FAIL: the failed run did not name its error"; exit 1; }
echo "ok: demo ran its 7 steps"
