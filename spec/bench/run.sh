#!/usr/bin/env bash
# spec/bench/run.sh [KPIWATCH]: kpiwatch's performance next to what a user
# would pick instead, in one run, as medians and ratios (issue 8). `make
# bench` runs it after installing what it needs (tools/deps.sh bench).
#
#   1. throughput and client CPU: N KPI documents at concurrency C, from
#      kpis.each, from a C program driving libcurl's multi interface
#      (http_bench_curl.c, the ceiling), from Python asyncio + aiohttp and
#      from Node.js fetch; also a plain http.request loop (no decoding) and
#      the C program decoding each body with lua-cjson (the floor of a
#      client that decodes: kpis.each's goal is 1.25x its CPU, issue 14)
#   2. CI gate latency: `kpiwatch gate` against curl | jq and a Python
#      urllib script (hyperfine, whole processes)
#   3. startup: `kpiwatch -e ''` against `curl -V` (the same libraries
#      loaded; issue 14's goal) and `lua5.4 -e ''` (hyperfine)
#   4. memory: peak RSS of kpis.each at N and N/10, results consumed as
#      they arrive
#   5. idle watch: alert.watch over 200 executions every second, CPU share
#   7. history: reading one metric of a 10,000-execution history file, and
#      what recording an execution adds to a gate's CPU
#
# Every client talks to one `kpiwatch sandbox` running as its own process
# on 127.0.0.1; it is stopped on exit (and by `timeout` in any case). Every
# client run is bounded (N requests, a fixed number of polls) and killed if
# it outlives its time limit. This machine is shared and noisy: runs of the
# different clients alternate and medians are reported; the ratios, measured
# side by side, are the figures that hold. Benchmarks, not tests: the exit
# status is 0 whatever the figures, non-zero only when a run failed.
#
# Environment:
#   BENCH_QUICK=1         smoke mode: N=1000, 1 round, 5 hyperfine runs, a
#                         3 s watch (seconds in all, not meaningful figures)
#   BENCH_N, BENCH_C      requests and concurrency (default 20000, 64)
#   BENCH_ROUNDS          rounds of the throughput/memory runs (default 5)
#   BENCH_RUNS            hyperfine runs per command (default 30)
#   BENCH_WATCH_SECONDS   length of one idle-watch run (default 30)
#   BENCH_WATCH_ROUNDS    idle-watch runs (default 3)
#   BENCH_WATCH_IDS       executions watched (default 200)
#   BENCH_RUNS_PAST       past executions of each of the 3 run tests of the
#                         run-test watch (default 200)
#   BENCH_HISTORY_N       executions in the history read (default 10000)
#   BENCH_HISTORY_BEFORE  a lualib folder (e.g. another commit's, from git
#                         archive): its recording is measured too, in the same
#                         rounds, for a before/after figure side by side
#   BENCH_ONLY            comma-separated subset of
#                         throughput,gate,startup,memory,watch,runs,history
#   BENCH_PYTHON          Python with aiohttp (default /usr/bin/python3)
#   BENCH_KEEP=DIR        keep the raw measurements in DIR
set -euo pipefail

cd "$(dirname "$0")/../.."
KW=$(realpath "${1:-build/kpiwatch}")
[ -x "$KW" ] || { echo "run.sh: no kpiwatch binary at $KW (build it first: make)" >&2; exit 2; }
# the User-Agent kpiwatch sends (kpiwatch/VERSION), for the floor client
UA="kpiwatch/$("$KW" --version 2>/dev/null | sed -n 's/^kpiwatch \([^ ]*\).*/\1/p' | head -1)"

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  d_n=1000 d_rounds=1 d_runs=5 d_watch=3 d_wrounds=1 d_past=20 d_hist=500
else
  d_n=20000 d_rounds=5 d_runs=30 d_watch=30 d_wrounds=3 d_past=200 d_hist=10000
fi
HISTORY_N=${BENCH_HISTORY_N:-$d_hist}
N=${BENCH_N:-$d_n}
C=${BENCH_C:-64}
ROUNDS=${BENCH_ROUNDS:-$d_rounds}
RUNS=${BENCH_RUNS:-$d_runs}
WATCH_SECONDS=${BENCH_WATCH_SECONDS:-$d_watch}
WATCH_ROUNDS=${BENCH_WATCH_ROUNDS:-$d_wrounds}
WATCH_IDS=${BENCH_WATCH_IDS:-200}
RUNS_PAST=${BENCH_RUNS_PAST:-$d_past}
ONLY=${BENCH_ONLY:-throughput,gate,startup,memory,watch,runs,history}
N_SMALL=$((N / 10))
[ "$N_SMALL" -ge 1 ] || N_SMALL=1
wants() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

tmp=$(mktemp -d)
sandbox_pid=
cleanup() {
  if [ -n "$sandbox_pid" ]; then kill "$sandbox_pid" 2>/dev/null || true; fi
  if [ -n "${BENCH_KEEP:-}" ]; then
    mkdir -p "$BENCH_KEEP" && cp -r "$tmp"/. "$BENCH_KEEP"/
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "bench: $*" >&2; }

# ---- tools ------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }
PYTHON=${BENCH_PYTHON:-}
if [ -z "$PYTHON" ]; then
  # Debian's python3-aiohttp lives in /usr/bin/python3's path; a python3
  # earlier on PATH (pyenv, a venv) may not see it.
  for p in /usr/bin/python3 python3; do
    if have "$p" && "$p" -c 'import aiohttp' 2>/dev/null; then PYTHON=$p; break; fi
  done
fi
GATE_PYTHON=${PYTHON:-$(command -v /usr/bin/python3 python3 | head -1)}
NODE_OK=
if have node && node -e 'process.exit(typeof fetch === "function" ? 0 : 1)' 2>/dev/null; then NODE_OK=1; fi
missing() { say "skipping $1: $2 not found"; }

say "building the C helpers"
cc -O2 -o "$tmp/measure" spec/bench/measure.c
if pkg-config --exists libcurl; then
  cc -O2 -o "$tmp/http_bench_curl" spec/bench/http_bench_curl.c $(pkg-config --cflags --libs libcurl)
  # the same, decoding every body with lua-cjson (-j): issue 14 §5's floor
  cjson_a=$(find /usr/lib -name liblua5.4-cjson.a 2>/dev/null | head -1)
  if [ -n "$cjson_a" ] && pkg-config --exists lua5.4; then
    cc -O2 -DKW_BENCH_CJSON -o "$tmp/http_bench_curl_json" spec/bench/http_bench_curl.c \
      $(pkg-config --cflags --libs libcurl lua5.4) "$cjson_a" -lm
  fi
fi

# measure NAME [TIMEOUT] -- CMD...: one run, appended to $tmp/NAME
measure() {
  local name=$1 limit=600
  shift
  if [ "$1" != "--" ]; then limit=$1; shift; fi
  shift
  "$tmp/measure" -t "$limit" "$tmp/$name" -- "$@" || { say "$name failed"; exit 1; }
}

# ---- the sandbox --------------------------------------------------------------

KEY=kw-sandbox-api-key
SECRET=kw-sandbox-secret-key
mkdir -p "$tmp/fixtures" "$tmp/wstate" "$tmp/xdg"
"$KW" spec/bench/watch_bench.lua fixtures "$tmp/fixtures" "$WATCH_IDS" >"$tmp/watch_ids"
timeout 7200 "$KW" sandbox --port 0 --fixtures "$tmp/fixtures" >"$tmp/sandbox.out" 2>&1 &
sandbox_pid=$!
url=
for _ in $(seq 200); do
  url=$(sed -n 's/^kpiwatch sandbox: serving .* on \(http:[^ ]*\).*/\1/p' "$tmp/sandbox.out")
  [ -n "$url" ] && break
  kill -0 "$sandbox_pid" 2>/dev/null || break
  sleep 0.05
done
[ -n "$url" ] || { say "the sandbox did not start:"; cat "$tmp/sandbox.out" >&2; exit 1; }
case "$url" in http://127.0.0.1:*) ;; *) say "unexpected sandbox URL $url"; exit 1 ;; esac
export FI_BASE_URL=$url FI_API_KEY=$KEY FI_SECRET_KEY=$SECRET
ID=c0ffee00-0000-4000-8000-000000000001 # avg_score 0.87: the gate passes
urls=
for i in 1 2 3 4 5; do
  urls="$urls${urls:+,}$url/simulate/test-executions/c0ffee00-0000-4000-8000-00000000000$i/kpis/"
done
say "sandbox at $url"

# ---- 1 and 4: throughput, client CPU, memory ------------------------------------

if wants throughput || wants memory; then
  limit=$((N / 50 + 120)) # generous: a stall, not slowness, should trip it
  if [ -x "$tmp/http_bench_curl" ]; then
    "$tmp/http_bench_curl" -H "X-Api-Key: $KEY" -H "X-Secret-Key: $SECRET" "$urls" 2000 "$C" >/dev/null
  fi
  for r in $(seq "$ROUNDS"); do
    say "throughput round $r/$ROUNDS (N=$N, C=$C)"
    measure kw_each "$limit" -- "$KW" spec/bench/kpis_bench.lua "$N" "$C"
    measure kw_each_small "$limit" -- "$KW" spec/bench/kpis_bench.lua "$N_SMALL" "$C"
    wants throughput || continue
    if [ -x "$tmp/http_bench_curl" ]; then
      measure curl "$limit" -- "$tmp/http_bench_curl" -H "X-Api-Key: $KEY" -H "X-Secret-Key: $SECRET" "$urls" "$N" "$C"
    fi
    if [ -x "$tmp/http_bench_curl_json" ]; then
      # The floor sends the request kpiwatch sends, byte for byte: the two
      # keys, Accept: application/json and kpiwatch's User-Agent (what the
      # API's content negotiation and its logs see). curl_json_bare sends
      # the keys alone, to show what those two headers cost libcurl.
      measure curl_json "$limit" -- "$tmp/http_bench_curl_json" -j -H "X-Api-Key: $KEY" -H "X-Secret-Key: $SECRET" \
        -H "Accept: application/json" "$urls" "$N" "$C" "$UA"
      measure curl_json_bare "$limit" -- "$tmp/http_bench_curl_json" -j -H "X-Api-Key: $KEY" -H "X-Secret-Key: $SECRET" \
        "$urls" "$N" "$C"
    fi
    measure kw_http "$limit" -- "$KW" spec/bench/http_bench_client.lua \
      -H "X-Api-Key: $KEY" -H "X-Secret-Key: $SECRET" -H "Accept: application/json" "$urls" "$N" "$C"
    if [ -n "$PYTHON" ]; then measure python "$limit" -- "$PYTHON" spec/bench/kpis_bench_aiohttp.py "$N" "$C"; fi
    if [ -n "$NODE_OK" ]; then measure node "$limit" -- node spec/bench/kpis_bench_fetch.mjs "$N" "$C"; fi
  done
  [ -x "$tmp/http_bench_curl" ] || missing "the libcurl client" "libcurl's pkg-config file (libcurl4-openssl-dev)"
  [ -n "$PYTHON" ] || missing "the Python client" "a python3 with aiohttp (python3-aiohttp)"
  [ -n "$NODE_OK" ] || missing "the Node.js client" "node >= 18 (nodejs)"
fi

# ---- 2 and 3: gate latency, startup (hyperfine) ------------------------------------

# hyperfine_medians OUT ARGS...: runs hyperfine, writes "name median_s" lines
hyperfine_medians() {
  local out=$1
  shift
  hyperfine --style none --export-json "$out.json" "$@" >"$out.log" 2>&1 ||
    { say "hyperfine failed:"; cat "$out.log" >&2; exit 1; }
  "$GATE_PYTHON" -c '
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(r["command"].replace(" ", "_"), r["median"])' "$out.json" >"$out"
}

if wants gate; then
  if have hyperfine && have curl && have jq && [ -n "$GATE_PYTHON" ]; then
    say "gate latency ($RUNS runs each)"
    # The floor, in the same run: one bare curl request (no jq), and
    # kpiwatch doing nothing. Both load libcurl and the ~35 libraries
    # Debian's libcurl needs; the gate can be no faster than they are.
    # The gate keeps its default history, in this run's own folder.
    hyperfine_medians "$tmp/gate" --warmup 3 --runs "$RUNS" \
      -n kpiwatch "XDG_DATA_HOME=$tmp/xdg $KW gate $ID --require 'avg_score>=0.8'" \
      -n curl_jq "curl -s -H 'X-Api-Key: $KEY' -H 'X-Secret-Key: $SECRET' $url/simulate/test-executions/$ID/kpis/ | jq -e '.avg_score >= 0.8'" \
      -n python "$GATE_PYTHON spec/bench/gate_urllib.py $ID 0.8" \
      -n curl "curl -s -o /dev/null -H 'X-Api-Key: $KEY' -H 'X-Secret-Key: $SECRET' $url/simulate/test-executions/$ID/kpis/" \
      -n kpiwatch_e "$KW -e ''"
  else
    missing "the gate latency" "hyperfine, curl, jq or python3"
  fi
fi

if wants startup; then
  if have hyperfine && have lua5.4 && have curl; then
    say "startup ($((RUNS * 3)) runs each)"
    hyperfine_medians "$tmp/startup" -N --warmup 5 --runs $((RUNS * 3)) \
      -n kpiwatch "$KW -e ''" -n curl_V "curl -V" -n lua "lua5.4 -e ''"
  else
    missing "the startup" "hyperfine, curl or lua5.4"
  fi
fi

# ---- 5: idle watch ------------------------------------------------------------

if wants watch; then
  for r in $(seq "$WATCH_ROUNDS"); do
    say "idle watch round $r/$WATCH_ROUNDS ($WATCH_IDS executions, every 1 s, ${WATCH_SECONDS} s)"
    rm -f "$tmp/wstate"/watch-state.json*
    # one poll at the start, then one a second: WATCH_SECONDS + 1 polls
    measure watch $((WATCH_SECONDS * 3 + 60)) -- "$KW" spec/bench/watch_bench.lua watch \
      "$tmp/watch_ids" $((WATCH_SECONDS + 1)) "$tmp/wstate"
  done
fi

# ---- 6: watch of run tests ----------------------------------------------------

if wants runs; then
  say "watch of run tests (3 run tests, $RUNS_PAST past executions each; requests per cycle)"
  # its own sandbox in its process: it counts the requests it answers
  "$KW" spec/bench/watch_runs_bench.lua "$RUNS_PAST" 5 >"$tmp/runs" || { say "watch_runs_bench.lua failed"; exit 1; }
fi

# ---- 7: history -----------------------------------------------------------------

if wants history; then
  say "history: $HISTORY_N executions into a fresh file, then reads and records"
  "$KW" spec/bench/history_bench.lua fill "$tmp/history.db" "$HISTORY_N"
  "$KW" spec/bench/history_bench.lua read "$tmp/history.db" 9 >"$tmp/history_read"
  for r in $(seq "$ROUNDS"); do
    "$KW" spec/bench/history_bench.lua record "$tmp/history.db" 40 >>"$tmp/history_record"
    if [ -n "${BENCH_HISTORY_BEFORE:-}" ]; then
      KPIWATCH_LUALIB=$BENCH_HISTORY_BEFORE "$KW" spec/bench/history_bench.lua record "$tmp/history.db" 40 \
        >>"$tmp/history_record_before"
    fi
    # the gate alone (no history), whole process: what recording is weighed against
    measure gate_cpu 120 -- "$KW" --no-history gate "$ID" --require 'avg_score>=0.8'
  done
fi

# ---- the table ----------------------------------------------------------------

# med NAME COLUMN: median of a column of $tmp/NAME (empty when absent)
med() {
  [ -s "$tmp/$1" ] || return 0
  awk -v c="$2" '{print $c}' "$tmp/$1" | sort -g |
    awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
# hmed FILE NAME: a hyperfine median (seconds)
hmed() { [ -s "$tmp/$1" ] && awk -v n="$2" '$1 == n {print $2}' "$tmp/$1" || true; }
# calc FORMAT EXPRS A [B]: printf FORMAT, EXPRS in awk with a=A, b=B
# (nothing when an argument is empty: a run that was skipped)
calc() {
  local fmt=$1 expr=$2
  shift 2
  for v in "$@"; do [ -n "$v" ] || return 0; done
  awk -v a="${1:-0}" -v b="${2:-0}" "BEGIN {printf \"$fmt\", $expr}"
}
met=0 missed=0
# goal TEXT VALUE OP LIMIT UNIT: one goal line
goal() {
  local text=$1 value=$2 op=$3 limit=$4 unit=$5 verdict
  if [ -z "$value" ]; then
    printf '   goal: %-52s %10s\n' "$text" "n/a"
    return
  fi
  if awk -v v="$value" -v l="$limit" "BEGIN {exit !(v $op l)}"; then
    verdict=met
    met=$((met + 1))
  else
    verdict=MISSED
    missed=$((missed + 1))
  fi
  printf '   goal: %-52s %9s%s  %s\n' "$text" "$value" "$unit" "$verdict"
}
row() { printf '   %-46s %10s %14s %12s\n' "$@"; }
na() { [ -n "$1" ] && echo "$1" || echo "n/a"; }

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "kpiwatch benchmarks: $("$KW" --version 2>/dev/null | head -1), $(nproc) CPUs ($cpu_model), $(uname -sr)"
echo "server: kpiwatch sandbox on 127.0.0.1 (own process); medians of $ROUNDS rounds, $RUNS hyperfine runs"
[ "${BENCH_QUICK:-0}" = 1 ] && echo "QUICK MODE: small N, single runs; the figures are not meaningful"

if wants throughput; then
  echo
  echo "1. Throughput and client cost: N=$N KPI documents, concurrency $C"
  row "client" "req/s" "CPU ms/1000" "peak RSS MiB"
  for k in curl curl_json_bare curl_json kw_each kw_http python node; do
    wall=$(med $k 1) cpu=$(med $k 2) rss=$(med $k 3)
    case $k in
      curl) label="libcurl multi, C (no JSON decoding; ceiling)" ;;
      curl_json_bare) label="libcurl multi, C + lua-cjson, keys only" ;;
      curl_json) label="libcurl multi, C + lua-cjson, kpiwatch's request (floor)" ;;
      kw_each) label="kpiwatch kpis.each (JSON -> KPI objects)" ;;
      kw_http) label="kpiwatch http.request loop (no decoding)" ;;
      python) label="Python asyncio + aiohttp (resp.json())" ;;
      node) label="Node.js fetch (res.json())" ;;
    esac
    row "$label" "$(na "$(calc '%.0f' 'b / a' "$wall" "$N")")" "$(na "$(calc '%.1f' 'b * 1000000 / a' "$N" "$cpu")")" \
      "$(na "$(calc '%.1f' 'a / 1024' "$rss")")"
  done
  each_cpu=$(med kw_each 2) http_cpu=$(med kw_http 2) curl_cpu=$(med curl 2) cj_cpu=$(med curl_json 2)
  goal "kpis.each CPU/request <= 1.25x libcurl + lua-cjson's" "$(calc '%.2f' 'a / b' "$each_cpu" "$cj_cpu")" "<=" 1.25 x
  echo "         (against the floor sending the keys alone: $(na "$(calc '%.2fx' 'a / b' "$each_cpu" "$(med curl_json_bare 2)")");"
  echo "          kpis.each against libcurl without decoding: $(na "$(calc '%.2fx' 'a / b' "$each_cpu" "$curl_cpu")");"
  echo "          the http.request loop, no decoding either: $(na "$(calc '%.2fx' 'a / b' "$http_cpu" "$curl_cpu")"))"
  goal "kpiwatch CPU/request <= 0.5x Python's" "$(calc '%.2f' 'a / b' "$each_cpu" "$(med python 2)")" "<=" 0.5 x
  goal "kpiwatch CPU/request <= 0.5x Node's" "$(calc '%.2f' 'a / b' "$each_cpu" "$(med node 2)")" "<=" 0.5 x
fi

if wants gate; then
  echo
  echo "2. CI gate latency, whole process (fixture avg_score 0.87, passes)"
  kg=$(hmed gate kpiwatch) cj=$(hmed gate curl_jq) py=$(hmed gate python)
  printf '   %-46s %10s\n' "command" "ms"
  printf '   %-46s %10s\n' "kpiwatch gate ID --require 'avg_score>=0.8'" "$(na "$(calc '%.1f' 'a * 1000' "$kg")")"
  printf '   %-46s %10s\n' "curl -s ... | jq -e '.avg_score >= 0.8'" "$(na "$(calc '%.1f' 'a * 1000' "$cj")")"
  printf '   %-46s %10s\n' "python3 gate_urllib.py (urllib, json)" "$(na "$(calc '%.1f' 'a * 1000' "$py")")"
  kc=$(hmed gate curl) ke=$(hmed gate kpiwatch_e)
  printf '   %-46s %10s\n' "floor: curl -s -o /dev/null ... (one request)" "$(na "$(calc '%.1f' 'a * 1000' "$kc")")"
  printf '   %-46s %10s\n' "floor: kpiwatch -e ''" "$(na "$(calc '%.1f' 'a * 1000' "$ke")")"
  goal "kpiwatch / (curl | jq) <= 0.6" "$(calc '%.2f' 'a / b' "$kg" "$cj")" "<=" 0.6 x
  echo "         (one bare curl request: $(na "$(calc '%.2fx' 'a / b' "$kc" "$cj")") of curl | jq;"
  echo "          kpiwatch -e '': $(na "$(calc '%.2fx' 'a / b' "$ke" "$cj")"); the gate over kpiwatch -e '': +$(na "$(calc '%.1f ms' '(a - b) * 1000' "$kg" "$ke")"))"
  goal "python / kpiwatch >= 3" "$(calc '%.2f' 'a / b' "$py" "$kg")" ">=" 3 x
fi

if wants startup; then
  echo
  echo "3. Startup"
  ks=$(hmed startup kpiwatch) cs=$(hmed startup curl_V) ls=$(hmed startup lua)
  printf '   %-46s %10s\n' "kpiwatch -e ''" "$(na "$(calc '%.2f ms' 'a * 1000' "$ks")")"
  printf '   %-46s %10s\n' "curl -V" "$(na "$(calc '%.2f ms' 'a * 1000' "$cs")")"
  printf '   %-46s %10s\n' "lua5.4 -e ''" "$(na "$(calc '%.2f ms' 'a * 1000' "$ls")")"
  goal "kpiwatch -e '' / curl -V <= 1" "$(calc '%.2f' 'a / b' "$ks" "$cs")" "<=" 1 x
fi

if wants memory; then
  echo
  echo "4. Memory: peak RSS of kpis.each, results consumed as they arrive (C=$C)"
  big=$(med kw_each 3) small=$(med kw_each_small 3)
  printf '   %-46s %10s\n' "N=$N" "$(na "$(calc '%.1f MiB' 'a / 1024' "$big")")"
  printf '   %-46s %10s\n' "N=$N_SMALL" "$(na "$(calc '%.1f MiB' 'a / 1024' "$small")")"
  goal "peak RSS at N=$N < 64 MiB" "$(calc '%.1f' 'a / 1024' "$big")" "<" 64 " MiB"
  goal "peak RSS N=$N / N=$N_SMALL <= 1.2" "$(calc '%.2f' 'a / b' "$big" "$small")" "<=" 1.2 x
fi

if wants watch; then
  echo
  echo "5. Idle watch: alert.watch, $WATCH_IDS executions every 1 s for ${WATCH_SECONDS} s, 3 rules"
  ww=$(med watch 1) wc=$(med watch 2)
  printf '   %-46s %10s\n' "wall, CPU (user+sys)" "$(na "$(calc '%.1f s, %.2f s' 'a, b' "$ww" "$wc")")"
  goal "CPU share of one core < 5%" "$(calc '%.2f' 'b * 100 / a' "$ww" "$wc")" "<" 5 "%"
fi

if wants runs; then
  echo
  echo "6. API requests per steady-state watch cycle: 3 run tests, $RUNS_PAST past executions each"
  # kv NAME: a value of the key=value line of watch_runs_bench.lua
  kv() { [ -s "$tmp/runs" ] && tr ' ' '\n' <"$tmp/runs" | sed -n "s/^$1=//p" || true; }
  printf '   %-46s %10s\n' "watch" "requests"
  printf '   %-46s %10s\n' "alert.watch{run_tests}, nothing in flight" "$(na "$(kv runs)")"
  printf '   %-46s %10s\n' "alert.watch{run_tests}, $(na "$(kv inflight)") runs in flight" "$(na "$(kv running)")"
  printf '   %-46s %10s\n' "alert.watch{ids}, all $(na "$(kv executions)") executions" "$(na "$(kv ids)")"
  goal "run_tests cycle <= 1 per run test" "$(kv runs_max)" "<=" 3 ""
  goal "cycle in flight <= 1 per run test + 1 per running" "$(kv running_max)" "<=" $((3 + $(kv inflight || echo 0))) ""
fi

if wants history; then
  echo
  echo "7. History (SQLite, WAL): one metric of $HISTORY_N executions; recording one execution"
  read -r _ hw hc hf hn <"$tmp/history_read" || true
  rec_cpu=$(awk '$1 == "record_cpu_ms" {print $2}' "$tmp/history_record" | sort -g |
    awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}')
  rec_wall=$(awk '$1 == "record_wall_ms" {print $2}' "$tmp/history_record" | sort -g |
    awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}')
  gate_cpu=$(med gate_cpu 2)
  printf '   %-46s %10s\n' "read $hn points, median of 9: wall, CPU" "$(na "$(calc '%.1f, %.1f ms' 'a, b' "$hw" "$hc")")"
  printf '   %-46s %10s\n' "read $hn points, first read (cold): wall" "$(na "$(calc '%.1f ms' 'a' "$hf")")"
  printf '   %-46s %10s\n' "record (open, record, close): CPU, wall" "$(na "$(calc '%.2f, %.1f ms' 'a, b' "$rec_cpu" "$rec_wall")")"
  printf '   %-46s %10s\n' "gate, whole process, --no-history: CPU" "$(na "$(calc '%.1f ms' 'a * 1000' "$gate_cpu")")"
  goal "read one metric of $HISTORY_N executions < 50 ms (CPU)" "$(calc '%.1f' 'a' "$hc")" "<" 50 " ms"
  goal "recording <= 5% of a gate's CPU" "$(calc '%.1f' 'a / (b * 1000) * 100' "$rec_cpu" "$gate_cpu")" "<=" 5 "%"
  if [ -s "$tmp/history_record_before" ]; then
    rec_before=$(awk '$1 == "record_cpu_ms" {print $2}' "$tmp/history_record_before" | sort -g |
      awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}')
    printf '   %-46s %10s\n' "record, $BENCH_HISTORY_BEFORE: CPU" "$(na "$(calc '%.2f ms' 'a' "$rec_before")")"
    echo "         (before: $(na "$(calc '%.1f%%' 'a / (b * 1000) * 100' "$rec_before" "$gate_cpu")") of the gate's CPU;" \
      "after / before: $(na "$(calc '%.2fx' 'a / b' "$rec_cpu" "$rec_before")"))"
  fi
fi

echo
echo "goals: $met met, $missed missed"
