-- kpis_bench.lua N C: fetch N KPI documents with kpis.each at concurrency
-- C, as a script watching many executions would, consuming each result as
-- it arrives (nothing kept). The N requests cycle over the ids in
-- BENCH_IDS (comma-separated; default the sandbox's five KPI fixtures).
-- Credentials and base URL come from FI_BASE_URL, FI_API_KEY,
-- FI_SECRET_KEY. Wall time, CPU time and peak RSS are measured from
-- outside (spec/bench/measure.py). Exits 1 unless every fetch succeeded.
local n, c = tonumber(arg[1]), tonumber(arg[2])
assert(n and c, "usage: kpiwatch kpis_bench.lua N C")
local pool = {}
for id in (os.getenv("BENCH_IDS") or ""):gmatch("[^,]+") do pool[#pool + 1] = id end
if #pool == 0 then
  for i = 1, 5 do pool[i] = ("c0ffee00-0000-4000-8000-00000000000%d"):format(i) end
end
local ids = {}
for i = 1, n do ids[i] = pool[(i - 1) % #pool + 1] end

kpis.configure { retries = 0 }
local scored = 0
local fetched, failed = kpis.each(ids, function(k)
  -- what a consumer does with each result: read a metric
  if k.avg_score then scored = scored + 1 end
end, { concurrency = c })
print(string.format("requests=%d fetched=%d failed=%d scored=%d connections=%d", n, fetched,
  failed, scored, http.stats().connections))
os.exit(failed == 0 and fetched == n and 0 or 1)
