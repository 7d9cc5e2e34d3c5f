-- report.lua: fetch executions and print the KPI summary of each.
--
--   kpiwatch --sandbox scripts/report.lua            the sandbox's fixtures
--   kpiwatch scripts/report.lua ID [ID ...]          real executions
--                                                    (FI_API_KEY, FI_SECRET_KEY)
-- Exit status 0 when every execution was fetched, 3 otherwise.

local errors = require "kpiwatch.errors"
local fixtures = require "kpiwatch.fixtures"

local ids = { ... }
if #ids == 0 then ids = fixtures.kpi_ids() end

-- All at once (4 in flight); a failure comes back as an error object in
-- the place of its execution instead of stopping the others.
local results = kpis.get_all(ids, { concurrency = 4 })

local failed = 0
for i, k in ipairs(results) do
  if errors.is(k) then
    failed = failed + 1
    print(string.format("execution %s: %s", ids[i], tostring(k)))
  else
    print(k)
    -- the eval metrics under 70, the usual alerting threshold
    local low = {}
    for name, v in pairs(k:evals()) do
      if type(v) == "number" and v < 70 then low[#low + 1] = string.format("%s %.1f", name, v) end
    end
    table.sort(low)
    if #low > 0 then print("  below 70: " .. table.concat(low, ", ")) end
  end
  print()
end
print(string.format("%d execution(s), %d fetched, %d failed", #ids, #ids - failed, failed))
if failed > 0 then os.exit(3) end
