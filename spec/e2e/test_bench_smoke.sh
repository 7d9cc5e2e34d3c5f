#!/usr/bin/env bash
# A short run of the benchmarks (spec/bench/run.sh in quick mode, tiny
# sizes): every program builds and runs against the sandbox, and the table
# comes out. Figures are not checked (a loaded machine proves nothing about
# them); clients whose tools are missing (hyperfine, node, aiohttp: `make
# bench` installs them) show as n/a and are not required here.
set -u
KW=${KPIWATCH:-build/kpiwatch}
SRC=${KPIWATCH_SRC:-.}
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

BENCH_QUICK=1 BENCH_N=200 BENCH_C=16 BENCH_RUNS=3 BENCH_WATCH_SECONDS=2 BENCH_WATCH_IDS=20 \
  timeout 240 "$SRC/spec/bench/run.sh" "$KW" >"$out" 2>"$err"
rc=$?
if [ $rc -ne 0 ]; then
  fail "run.sh exited $rc"
  cat "$err" >&2
fi
cat "$out"

for section in "1. Throughput" "2. CI gate latency" "3. Startup" "4. Memory" "5. Idle watch" "6. API requests" "goals: "; do
  grep -q "^$section" "$out" || fail "no '$section' in the table"
done
# The rows that need nothing but kpiwatch and a C compiler have figures.
grep -Eq '^ +kpiwatch kpis\.each .* [0-9]+ +[0-9.]+ +[0-9.]+$' "$out" || fail "no figures for kpis.each"
grep -Eq '^ +libcurl multi, C .* [0-9]+ +[0-9.]+ +[0-9.]+$' "$out" || fail "no figures for the libcurl client"
grep -Eq '^ +libcurl multi, C \+ lua-cjson[ ,].* [0-9]+ +[0-9.]+ +[0-9.]+$' "$out" || fail "no figures for libcurl + lua-cjson"
grep -Eq "goal: kpis.each CPU/request <= 1.25x libcurl \+ lua-cjson's +[0-9.]+x" "$out" || fail "no kpis.each goal against libcurl + lua-cjson"
grep -Eq '^ +N=200 +[0-9.]+ MiB$' "$out" || fail "no peak RSS at N=200"
grep -Eq '^ +wall, CPU \(user\+sys\) +[0-9.]+ s, [0-9.]+ s$' "$out" || fail "no idle-watch figures"
grep -Eq 'CPU share of one core < 5% +[0-9.]+%' "$out" || fail "no idle-watch CPU share"
grep -Eq '^ +alert\.watch\{run_tests\}, nothing in flight +[0-9]+$' "$out" || fail "no run-test watch figures"
grep -q '^7. History' "$out" || fail "no '7. History' in the table"
grep -Eq 'recording <= 5% of a gate.s CPU +[0-9.]+%' "$out" || fail "no history recording share"
grep -Eq 'read one metric of 500 executions < 50 ms \(CPU\) +[0-9.]+ ms' "$out" || fail "no history read figure"

[ $fails -eq 0 ] || exit 1
echo "bench smoke run ok"
