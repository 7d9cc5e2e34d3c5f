#!/usr/bin/env bash
# HTTP client benchmark (issue 3): fetch N small JSON documents with
# concurrency C from a local server, once from a kpiwatch script
# (http_bench_client.lua: C tasks looping over http.request) and once from a
# C program driving libcurl's multi interface directly (http_bench_curl.c,
# the ceiling for any libcurl client). Prints requests per second and the
# client's own CPU time per 1000 requests for both, and the ratios.
#
# The server is kpiwatch's own http.serve (h2o) in a separate process
# (http_bench_server.lua), shared by both clients. Runs alternate between
# the two clients and medians are reported, because this machine is shared
# and noisy: ratios measured side by side hold, absolute figures drift.
#
# Usage: spec/bench/http_bench.sh [N [C [ROUNDS]]]     (defaults 20000 64 5)
# Env:   KPIWATCH (default build/kpiwatch), BENCH_URL to use another server.
set -euo pipefail

N=${1:-20000}
C=${2:-64}
ROUNDS=${3:-5}
cd "$(dirname "$0")/../.."
. spec/e2e/lib.sh
KPIWATCH=$(realpath "$KPIWATCH")

cc -O2 -o "$tmp/http_bench_curl" spec/bench/http_bench_curl.c \
  $(pkg-config --cflags --libs libcurl)

if [ -n "${BENCH_URL:-}" ]; then
  url=$BENCH_URL
else
  start_server "$tmp/url" "$KPIWATCH" spec/bench/http_bench_server.lua
  url=$(cat "$tmp/url")
fi

# run NAME CMD...: appends "wall cpu" (seconds: wall clock, and the
# client's user + system time from its rusage) to $tmp/NAME.
cat >"$tmp/timeit.py" <<'EOF'
import resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
if p.returncode != 0:
    sys.stderr.write(p.stdout.decode(errors="replace"))
    sys.exit(1)
with open(sys.argv[1], "a") as f:
    f.write("%.4f %.4f\n" % (wall, ru.ru_utime + ru.ru_stime))
EOF
run() {
  local name=$1
  shift
  python3 "$tmp/timeit.py" "$tmp/$name" "$@" || { echo "$name failed" >&2; exit 1; }
}

ua=$(KPIWATCH_LUALIB= "$KPIWATCH" -e 'print(require("kpiwatch.http").user_agent)')
# Warm up the server (and the page cache) once.
"$tmp/http_bench_curl" "$url" 2000 "$C" >/dev/null
for i in $(seq "$ROUNDS"); do
  run curl "$tmp/http_bench_curl" "$url" "$N" "$C"
  run kpiwatch "$KPIWATCH" spec/bench/http_bench_client.lua "$url" "$N" "$C"
  run curl_ua "$tmp/http_bench_curl" "$url" "$N" "$C" "$ua"
done

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
for name in curl curl_ua kpiwatch; do
  wall=$(awk '{print $1}' "$tmp/$name" | median)
  cpu=$(awk '{print $2}' "$tmp/$name" | median)
  echo "$name $wall $cpu" >>"$tmp/summary"
done

echo "N=$N C=$C rounds=$ROUNDS server=$url ($(nproc) CPUs, $(uname -m))"
awk -v n="$N" -v ua="$ua" '
  { wall[$1] = $2; cpu[$1] = $3 }
  END {
    name["curl"] = "libcurl multi (C)"
    name["curl_ua"] = "libcurl multi (C), User-Agent " ua
    name["kpiwatch"] = "kpiwatch script"
    printf "%-44s %10s %14s\n", "client", "req/s", "CPU ms/1000"
    split("curl curl_ua kpiwatch", order, " ")
    for (i = 1; i <= 3; i++) {
      k = order[i]
      printf "%-44s %10.0f %14.1f\n", name[k], n / wall[k], cpu[k] * 1000000 / n
    }
    printf "kpiwatch / libcurl:                throughput %.2f, CPU per request %.2f\n",
      wall["curl"] / wall["kpiwatch"], cpu["kpiwatch"] / cpu["curl"]
    printf "kpiwatch / libcurl, same User-Agent: throughput %.2f, CPU per request %.2f\n",
      wall["curl_ua"] / wall["kpiwatch"], cpu["kpiwatch"] / cpu["curl_ua"]
  }' "$tmp/summary"
