-- watch_runs_bench.lua: API requests per steady-state watch cycle
-- (spec/bench/run.sh, section 6).
--
--   kpiwatch spec/bench/watch_runs_bench.lua [PAST] [CYCLES]
--
-- Three run tests with PAST past executions each (default 200) in the
-- sandbox of this process, which counts every request it answers. Then:
--   runs     alert.watch{run_tests = the three}: the requests of each
--            cycle after the first (which learns the run tests)
--   running  the same while one new run is in flight on each run test
--   ids      alert.watch{ids = every execution}: what a watch of fixed ids
--            costs per cycle
-- and one line: runs=<per cycle> running=<per cycle> inflight=<runs in
-- flight> ids=<per cycle> executions=<total>.
local past = math.tointeger(tonumber(arg[1] or "200"))
local cycles = math.tointeger(tonumber(arg[2] or "5"))
assert(past and cycles, "usage: kpiwatch watch_runs_bench.lua [PAST] [CYCLES]")

local fixtures = require "kpiwatch.fixtures"
local alert = require "kpiwatch.alert"
local kpis = require "kpiwatch.kpis"

-- Three run tests shaped as kpiwatch.fixtures builds its own (see its
-- "run tests" section), appended to its list before the sandbox starts
-- and found by fixtures.run_test as its own are.
local list = fixtures.run_tests()
local extra = {}
local run_test = fixtures.run_test
fixtures.run_test = function(key) return extra[key] or run_test(key) end
local rts = {}
for r = 1, 3 do
  local index = #list + 1
  local t = {
    index = index, name = "bench-" .. r, description = "bench run test",
    id = string.format("be0c4000-0000-4000-8000-00000000a%03x", index),
    agent_type = "voice", provider = "vapi", agent_definition = "Bench", agent_version = "v1",
    scenario_names = { "Bench scenario" }, evals = { "task_completion" },
    first_start = 1780000000, history = {},
    next_run = { calls = 6, mean = 0.85, sd = 0.05, fail = 0 },
  }
  t.scenarios = { { id = string.format("be0c4000-0000-4000-b%03x-%012x", index, 1), name = "Bench scenario" } }
  for i = 1, past do
    t.history[i] = { status = "completed", calls = 6, mean = 0.85, sd = 0.05, fail = 0,
      id = string.format("be0c4000-0000-4000-9%03x-%012x", index, i), seed = index * 1000 + i,
      start = t.first_start + (i - 1) * 3600 }
  end
  list[index] = t
  extra[t.id], extra[t.name] = t, t
  rts[r] = t.id
end

local requests = 0
local sb = require("kpiwatch.sandbox").start_for_client({
  speed = 1,
  log = function() requests = requests + 1 end,
})
kpis.point_at(sb)

local reg = alert.registry()
reg:configure { quiet = true, exit_on_lost = false }
reg:rule { name = "floor", metric = "avg_score", below = 0.5 }
reg:rule { name = "broken", on_status = { "failed", "cancelled" } }
reg:hook("count", function() end)

-- per_cycle(opts, n) -> requests of each of n cycles, after a first one
local function per_cycle(opts)
  local counts, last = {}, nil
  opts.every = 0
  opts.max_cycles = cycles + 1
  opts.on_cycle = function(_, n)
    if n > 1 then counts[#counts + 1] = requests - last end
    last = requests
  end
  last = requests
  reg:watch(opts)
  table.sort(counts)
  return counts[(#counts + 1) // 2], counts[#counts]
end

local state = os.tmpname()
os.remove(state)
local runs_med, runs_max = per_cycle({ run_tests = rts, state = state })

-- a new run in flight on each run test (at speed 1 they stay in flight
-- for several seconds, longer than the cycles take)
sb.runs.set_speed(0.05)
for _, rt in ipairs(rts) do kpis.run(rt) end
local running_med, running_max = per_cycle({ run_tests = rts, state = state })
sb.runs.set_speed(1)

local ids = {}
for _, t in ipairs(list) do
  if t.id:sub(1, 8) == "be0c4000" then
    for _, h in ipairs(t.history) do ids[#ids + 1] = h.id end
  end
end
local ids_med = per_cycle({ ids = ids, concurrency = 16 })

os.remove(state)
os.remove(state .. ".spool")
sb:close()
print(string.format("runs=%d runs_max=%d running=%d running_max=%d inflight=%d ids=%d executions=%d",
  runs_med, runs_max, running_med, running_max, #rts, ids_med, #ids))
