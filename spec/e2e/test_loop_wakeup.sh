#!/usr/bin/env bash
# A completion that happens in a callback run before the poll phase of a
# loop turn (a timer already due when the turn starts: task.sleep(0), or
# libcurl's 0 ms timeout finishing transfers whose answers were already
# there) must resume its task in that turn, not when some unrelated event
# next wakes the poll: with libuv 1.44 the poll otherwise blocks, forever
# when something else keeps the loop alive (a server, a signal waiter). The
# alert.watch benchmark polled every 11 s instead of every second because
# of it (spec/bench/run.sh).
#
# Each case runs in a fresh process, so that no handle is closing at that
# moment (a closing handle makes the poll non-blocking and hides the bug);
# a stall shows as the 10 s timeout killing the process.
set -u
KW=${KPIWATCH:-build/kpiwatch}
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

check() {
  local name=$1 setup=$2
  local out rc
  out=$(timeout 10 "$KW" -e "$setup
    local t0 = task.now()
    task.sleep(0)
    io.write(string.format('%.3f', task.now() - t0))
    os.exit(0)" 2>&1)
  rc=$?
  if [ $rc -ne 0 ]; then
    fail "$name: task.sleep(0) did not return (exit $rc): $out"
  elif ! awk -v t="$out" 'BEGIN { exit !(t + 0 < 5) }'; then
    fail "$name: task.sleep(0) took $out s"
  else
    echo "ok: $name ($out s)"
  fi
}

check "sleep(0) with a task waiting for SIGTERM" 'task.spawn(task.wait_signal, "term")'
check "sleep(0) with a task waiting for SIGINT" 'task.spawn(task.wait_signal, "int")'
check "sleep(0) with a server listening" \
  'local srv = http.serve{ handler = function() return { status = 204 } end }'
check "sleep(0) with a long sleep in another task" 'task.spawn(task.sleep, 60)'

[ $fails -eq 0 ] || exit 1
echo "all loop wake-up checks passed"
