-- watch_bench.lua: the idle-watch benchmark (spec/bench/run.sh).
--
--   kpiwatch watch_bench.lua fixtures DIR COUNT
--       writes COUNT execution bodies DIR/<uuid>.json (copies of the
--       sandbox's KPI fixtures 1, 2, 3 and 5 under distinct ids; not the
--       empty one, whose null averages would only print "no data") for
--       `kpiwatch sandbox --fixtures DIR`, and prints their ids, one a line
--   kpiwatch watch_bench.lua watch IDS_FILE CYCLES STATE_DIR
--       alert.watch over the ids of IDS_FILE every second, CYCLES polls,
--       with a few rules as scripts/watch.lua has and a hook that only
--       counts; then prints what it saw. The CPU share is measured from
--       outside (spec/bench/measure.py).
local mode = arg[1]

if mode == "fixtures" then
  local dir, count = arg[2], math.tointeger(tonumber(arg[3]))
  assert(dir and count, "usage: kpiwatch watch_bench.lua fixtures DIR COUNT")
  local fixtures = require "kpiwatch.fixtures"
  local bodies = {}
  for _, i in ipairs({ 1, 2, 3, 5 }) do
    bodies[#bodies + 1] = fixtures.get(("c0ffee00-0000-4000-8000-00000000000%d"):format(i)).body
  end
  for i = 1, count do
    local id = ("be0c4000-0000-4000-8000-%012d"):format(i)
    local f = assert(io.open(dir .. "/" .. id .. ".json", "w"))
    f:write(bodies[(i - 1) % #bodies + 1])
    f:close()
    print(id)
  end
  return
end

assert(mode == "watch", "usage: kpiwatch watch_bench.lua fixtures|watch ...")
local ids_file, cycles, state_dir = arg[2], math.tointeger(tonumber(arg[3])), arg[4]
assert(ids_file and cycles and state_dir, "usage: kpiwatch watch_bench.lua watch IDS_FILE CYCLES STATE_DIR")
local ids = {}
for line in io.lines(ids_file) do
  if line ~= "" then ids[#ids + 1] = line end
end

local alert = require "kpiwatch.alert"
local notified = 0
alert.hook("count", function() notified = notified + 1 end)
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
             after = 2, keep_firing_for = "10m", repeat_interval = "1h",
             labels = { agent = "{agent_type}" } }
alert.rule { name = "agent-latency", metric = "avg_agent_latency", above = 1500, after = "5m" }
alert.rule { name = "failed-calls", metric = "failed_calls", above = 20, no_data = "ok" }

local polls, errs = 0, 0
local summary = alert.watch {
  ids = ids,
  every = 1,
  state = state_dir .. "/watch-state.json",
  max_cycles = cycles,
  on_cycle = function(report)
    polls = polls + 1
    errs = errs + #report.errors
  end,
}
print(string.format("executions=%d polls=%d errors=%d notified=%d lost=%d", #ids, polls, errs,
  notified, summary.lost))
os.exit((errs == 0 and summary.lost == 0) and 0 or 1)
