-- history_bench.lua: the history benchmarks (spec/bench/run.sh, section 7).
--
--   kpiwatch history_bench.lua fill DB N
--       records N completed executions of one run test (the sandbox's
--       fixture bodies in turn, distinct ids and start times) into DB
--   kpiwatch history_bench.lua read DB ROUNDS
--       reads the avg_score series of that run test ROUNDS times (the whole
--       history, one metric) and prints "read_ms <median wall ms> <median
--       CPU ms> <first read's wall ms> <n>"
--   kpiwatch history_bench.lua record DB COUNT
--       what a gate adds when it records: open the file, record one new
--       execution, close; COUNT times. Prints "record_cpu_ms <CPU ms per
--       record>" and "record_wall_ms <wall ms per record>"
local history = require "kpiwatch.history"
local fixtures = require "kpiwatch.fixtures"
local model = require "kpiwatch.model"
local json = require "kpiwatch.json"
local task = require "kpiwatch.task"

local RT = "be0c4000-0000-4000-8000-00000000aaaa"
local mode, db, count = arg[1], arg[2], math.tointeger(tonumber(arg[3] or ""))
assert(mode and db and count, "usage: kpiwatch history_bench.lua fill|read|record DB N")

local bodies = {}
for _, i in ipairs({ 1, 2, 3, 5 }) do
  bodies[#bodies + 1] = json.decode(fixtures.get(("c0ffee00-0000-4000-8000-00000000000%d"):format(i)).body)
end

-- group: a record run's own ids (several runs write into one file)
local function info(i, group)
  return { execution_id = ("be0c4000-0000-4000-8%03x-%012d"):format(group or 0, i), run_test = RT,
    status = "completed",
    start_time = os.date("!%Y-%m-%dT%H:%M:%SZ", 1700000000 + i * 3600) }
end

if mode == "fill" then
  local s = assert(history.open(db))
  for i = 1, count do
    s:record(model.new(bodies[(i - 1) % #bodies + 1]), info(i))
  end
  s:close()
  return
end

if mode == "read" then
  local s = assert(history.open(db))
  local times, cpus, n = {}, {}, 0
  for r = 1, count do
    local t0, c0 = task.now(), os.clock()
    n = s:series(RT, "avg_score").n
    times[r], cpus[r] = (task.now() - t0) * 1000, (os.clock() - c0) * 1000
  end
  s:close()
  local first = times[1]
  table.sort(times)
  table.sort(cpus)
  print(("read_ms %.2f %.2f %.2f %d"):format(times[(#times + 1) // 2], cpus[(#cpus + 1) // 2], first, n))
  return
end

assert(mode == "record", "usage: kpiwatch history_bench.lua fill|read|record DB N")
-- ids of this process's own
local group = 1 + require("kpiwatch._fs").getpid() % 4095
local c0, t0 = os.clock(), task.now()
for i = 1, count do
  local s = assert(history.open(db))
  assert(s:record(model.new(bodies[i % #bodies + 1]), info(i, group)))
  s:close()
end
print(("record_cpu_ms %.3f"):format((os.clock() - c0) * 1000 / count))
print(("record_wall_ms %.3f"):format((task.now() - t0) * 1000 / count))
