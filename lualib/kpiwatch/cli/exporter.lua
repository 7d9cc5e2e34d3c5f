-- kpiwatch exporter: serve the KPIs of run tests and executions as
-- Prometheus / OpenMetrics metrics until Ctrl-C or SIGTERM.

local USAGE = [[
usage: kpiwatch exporter [--run-test RT | --name N]... [--id ID]...
                         --listen ADDR:PORT [--every 60s]

Poll the targets every interval and serve the last values on
http://ADDR:PORT/metrics (OpenMetrics 1.0.0 or Prometheus text 0.0.4, as
the scraper asks). A scrape never waits for the API.
  --run-test RT     the latest completed execution of run test RT
  --name N          the same, for the run test named N
  --id ID           the execution ID
  --listen A:P      address and port to serve on (e.g. 127.0.0.1:9464)
  --every D         poll interval: 30s, 5m, ... (default 60s)
  -h, --help        show this help
Metric names and labels: doc/monitoring.md.
Exit status: 130 after SIGINT, 143 after SIGTERM, 2 usage error,
3 the address cannot be bound.
]]

local args = require "kpiwatch.cli.args"

local function usage_error(msg)
  return args.usage_error("kpiwatch: exporter", msg)
end

-- --run-test, --name and --id add to one list of targets, in their order
local OPTIONS = {
  ["--run-test"] = { repeats = true, key = "targets", check = function(v) return { run_test = v } end },
  ["--name"] = { repeats = true, key = "targets", check = function(v) return { name = v } end },
  ["--id"] = { repeats = true, key = "targets", check = function(v, name)
    local id, msg = args.uuid(v, name)
    if not id then return nil, msg end
    return { id = v }
  end },
  ["--listen"] = { check = args.listen },
  ["--every"] = { check = args.duration },
}

return function(argv)
  local o, stop = args.command(argv, { prog = "kpiwatch: exporter", usage = USAGE, options = OPTIONS,
    positionals = false })
  if not o then return stop end
  local errors = require "kpiwatch.errors"
  local kpis = require "kpiwatch.kpis"
  local metrics = require "kpiwatch.metrics"
  local task = require "kpiwatch.task"
  local targets, listen, every = o.targets, o.listen, o.every or 60
  if #targets == 0 then return usage_error("needs at least one --run-test, --name or --id") end
  if not listen then return usage_error("needs --listen ADDR:PORT") end

  local c = metrics.collector()
  kpis._observer = c:observer()
  local okc, srv = pcall(metrics.serve, c, listen)
  if not okc then
    io.stderr:write("kpiwatch: exporter: cannot listen on ", listen, ": ", tostring(errors.is(srv)
      and srv.message or srv), "\n")
    return 3
  end
  io.stderr:write("kpiwatch exporter: serving ", srv.url, "/metrics\n")

  local me = task.running()
  local signal
  local watchers = {}
  for _, sig in ipairs({ "int", "term" }) do
    watchers[#watchers + 1] = task.spawn(function()
      task.wait_signal(sig)
      signal = sig
      task.cancel(me, "stopping")
    end)
  end
  pcall(function()
    while true do
      local ok, failures = metrics.poll(c, targets)
      if not ok then
        for _, f in ipairs(failures) do
          io.stderr:write("kpiwatch: exporter: ", f.target, ": ", tostring(errors.is(f.error)
            and f.error.message or f.error), "\n")
        end
      end
      task.sleep(every)
    end
  end)
  for _, w in ipairs(watchers) do pcall(task.cancel, w) end
  kpis._observer = nil
  srv:close()
  return signal == "term" and 143 or 130
end
