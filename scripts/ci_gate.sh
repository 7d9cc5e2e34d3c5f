#!/usr/bin/env bash
# ci_gate.sh: fail a CI job when a Future AGI simulation run got worse.
#
#   scripts/ci_gate.sh EXECUTION_ID [BASELINE_ID] [extra kpiwatch gate args...]
#
# Checks the run's avg_score and every eval metric against floors, and,
# given a baseline run (e.g. main's last run), fails on a drop larger than
# allowed. Writes JUnit and JSON reports for the CI to pick up; on GitHub
# Actions the annotations and the step summary come for free.
#
# Environment (all optional but the credentials):
#   FI_API_KEY, FI_SECRET_KEY   credentials (CI secrets; never printed)
#   FI_BASE_URL                 API base URL (default https://api.futureagi.com)
#   KPIWATCH                    the kpiwatch binary (default: kpiwatch on PATH)
#   GATE_MIN_SCORE              floor for avg_score (default 0.8)
#   GATE_MIN_EVAL               floor for every eval metric, in percent (default 70)
#   GATE_MAX_DROP_SCORE         largest allowed avg_score drop vs the baseline (default 0.05)
#   GATE_MAX_DROP_EVAL          largest allowed eval drop vs the baseline (default 5, points)
#   GATE_RULES                  an alert rules file to gate on as well
#   GATE_REPORT_DIR             where the reports go (default gate-reports)
#
# Exit status is kpiwatch gate's: 0 pass, 1 a check failed, 2 usage or
# configuration error, 3 API or network error. Only 0 lets the job pass.
set -uo pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 EXECUTION_ID [BASELINE_ID] [extra kpiwatch gate args...]" >&2
  exit 2
fi
execution_id=$1
shift
baseline_id=
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  baseline_id=$1
  shift
fi

kw=${KPIWATCH:-kpiwatch}
dir=${GATE_REPORT_DIR:-gate-reports}
mkdir -p "$dir" || exit 2

args=(
  --require "avg_score>=${GATE_MIN_SCORE:-0.8}"
  --require "eval:*>=${GATE_MIN_EVAL:-70}"
  --output "junit:$dir/kpiwatch-gate.xml"
  --output "json:$dir/kpiwatch-gate.json"
  --output "markdown:$dir/kpiwatch-gate.md"
)
if [ -n "$baseline_id" ]; then
  args+=(
    --baseline "$baseline_id"
    --max-drop "avg_score=${GATE_MAX_DROP_SCORE:-0.05}"
    --max-drop "eval:*=${GATE_MAX_DROP_EVAL:-5}"
  )
fi
if [ -n "${GATE_RULES:-}" ]; then
  args+=(--rules "$GATE_RULES")
fi

"$kw" gate "$execution_id" "${args[@]}" "$@"
rc=$?
case $rc in
  0) echo "ci_gate: passed" >&2 ;;
  1) echo "ci_gate: the simulation run does not meet the gate (reports in $dir/)" >&2 ;;
  2) echo "ci_gate: usage or configuration error (see above)" >&2 ;;
  3) echo "ci_gate: the Future AGI API could not be reached or failed (see above)" >&2 ;;
  *) echo "ci_gate: kpiwatch exited with $rc" >&2 ;;
esac
exit "$rc"
