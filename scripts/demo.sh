#!/bin/sh
# The main job, against the built-in sandbox (no account needed): what
# `make run` runs. Each step prints what it does; an unexpected exit code
# stops the demo with a non-zero status.
set -u
KW=${1:-build/kpiwatch}
GOOD=c0ffee00-0000-4000-8000-000000000001   # voice outbound, healthy
BAD=c0ffee00-0000-4000-8000-000000000005    # voice outbound, below thresholds

step() {
  want=$1; shift
  printf '\n$ %s\n' "$*"
  "$@"
  got=$?
  if [ "$got" -ne "$want" ]; then
    echo "demo: expected exit code $want, got $got" >&2
    exit 1
  fi
  echo "(exit code $got, as expected)"
}

step 0 "$KW" --sandbox scripts/report.lua
step 0 "$KW" --sandbox check scripts/rules.lua "$GOOD"
step 1 "$KW" --sandbox check scripts/rules.lua "$BAD"
step 0 "$KW" --sandbox gate "$GOOD" --require 'avg_score>=0.8' --require 'eval:*>=70'
step 1 "$KW" --sandbox gate "$BAD" --require 'avg_score>=0.8' --require 'eval:*>=70'
# The CI job in one line: start a run of a run test, wait for it, gate on it
# (the sandbox's clock sped up 20 times: a run takes a third of a second).
export KPIWATCH_SANDBOX_SPEED=20
step 0 "$KW" --sandbox run --name nightly --require 'avg_score>=0.8' --baseline previous --max-drop 'avg_score=0.05'
step 1 "$KW" --sandbox run --name broken-agent --require 'avg_score>=0.8'
echo
echo "demo: done. Try 'build/kpiwatch --sandbox -i' for the REPL, or 'build/kpiwatch --help'."
