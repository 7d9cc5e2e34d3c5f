#!/usr/bin/env bash
# tools/fuzz.sh BUILD SECONDS [TARGET...]: run the libFuzzer targets of
# spec/fuzz (built in BUILD with -DKW_FUZZ=ON; `make fuzz` and
# `make test-fuzz` do both). For each target (default: every spec/fuzz/*.c):
#
#  1. replay spec/fuzz/regressions/<target>/*, the inputs of crashes found
#     before (each must now pass);
#  2. fuzz for SECONDS, starting from the seeds of spec/fuzz/corpus/<target>
#     and the corpus grown by earlier runs in BUILD/fuzz-corpus/<target>
#     (the checked-in seeds are never written to).
#
# Two targets run at a time (FUZZ_JOBS). A crash, a sanitizer report, an
# input slower than 10 s or a driver's failed check fails the run; the input
# is left in BUILD/fuzz-artifacts/<target>/ with the command to replay it.
# Once fixed, copy it into spec/fuzz/regressions/<target>/.
set -u

BUILD=${1:?usage: tools/fuzz.sh BUILD SECONDS [TARGET...]}
SECONDS_EACH=${2:?usage: tools/fuzz.sh BUILD SECONDS [TARGET...]}
shift 2
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "$BUILD" && pwd)
JOBS=${FUZZ_JOBS:-2}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for c in "$SRC"/spec/fuzz/*.c; do
    n=$(basename "$c" .c)
    targets+=("${n#fuzz_}")
  done
fi

# The Lua state lives for the whole run, so memory grows between inputs by
# design: libFuzzer's per-input leak check would only report the GC's
# garbage. LeakSanitizer still checks at exit.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
unset KPIWATCH_LUALIB

run_one() {
  local t=$1 bin="$BUILD/fuzz_$1" log="$BUILD/fuzz-logs/$1.log"
  local seeds="$SRC/spec/fuzz/corpus/$t" regs="$SRC/spec/fuzz/regressions/$t"
  local work="$BUILD/fuzz-corpus/$t" art="$BUILD/fuzz-artifacts/$t/"
  local dict=() files=()
  mkdir -p "$work" "$art" "$(dirname "$log")"
  : >"$log"
  if [ ! -x "$bin" ]; then
    echo "fuzz $t: FAILED: no $bin (build with -DKW_FUZZ=ON)"
    return 1
  fi
  [ -f "$SRC/spec/fuzz/$t.dict" ] && dict=(-dict="$SRC/spec/fuzz/$t.dict")
  if [ -d "$regs" ]; then
    for f in "$regs"/*; do [ -f "$f" ] && files+=("$f"); done
  fi
  if [ ${#files[@]} -gt 0 ]; then
    if ! "$bin" -timeout=10 "${files[@]}" >>"$log" 2>&1; then
      echo "fuzz $t: FAILED: a regression input fails again (log: $log)"
      tail -n 40 "$log" | sed "s/^/  $t| /"
      return 1
    fi
  fi
  if ! "$bin" "${dict[@]}" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2560 -detect_leaks=0 \
      -artifact_prefix="$art" -print_final_stats=1 "$work" "$seeds" >>"$log" 2>&1; then
    echo "fuzz $t: FAILED (log: $log)"
    grep -A12 "==kpiwatch fuzz==\|ERROR: \|runtime error\|SUMMARY" "$log" | head -n 40 | sed "s/^/  $t| /"
    grep "Test unit written to" "$log" | sed "s|.*written to |  replay: $bin |"
    return 1
  fi
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz $t: ok (${#files[@]} regressions, ${runs:-?} inputs in ${SECONDS_EACH}s)"
}

mkdir -p "$BUILD/fuzz-logs"
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  (run_one "$t"; echo $? >"$BUILD/fuzz-logs/$t.status") &
done
wait
status=0
for t in "${targets[@]}"; do
  [ "$(cat "$BUILD/fuzz-logs/$t.status" 2>/dev/null)" = 0 ] || status=1
done
exit $status
