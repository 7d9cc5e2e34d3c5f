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

local function usage_error(msg)
  io.stderr:write("kpiwatch: exporter: ", msg, "\n", USAGE)
  return 2
end

return function(args)
  local errors = require "kpiwatch.errors"
  local kpis = require "kpiwatch.kpis"
  local metrics = require "kpiwatch.metrics"
  local task = require "kpiwatch.task"
  local targets, listen, every = {}, nil, 60
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if name then a = name end
    local function value()
      if inline then return inline end
      i = i + 1
      if args[i] == nil then error({ usage = "option '" .. a .. "' needs a value" }) end
      return args[i]
    end
    local ok, perr = pcall(function()
      if a == "--run-test" then
        targets[#targets + 1] = { run_test = value() }
      elseif a == "--name" then
        targets[#targets + 1] = { name = value() }
      elseif a == "--id" then
        local id = value()
        local okid, e = pcall(kpis.check_id, id)
        if not okid then error({ usage = errors.is(e) and e.message or tostring(e) }) end
        targets[#targets + 1] = { id = id }
      elseif a == "--listen" then
        listen = value()
        local host, msg = metrics.parse_listen(listen)
        if not host then error({ usage = "--listen: " .. msg }) end
      elseif a == "--every" then
        local v = value()
        local d, msg = require("kpiwatch.alert").parse_duration(v)
        if not d or d <= 0 then error({ usage = "--every: " .. (msg or "must be positive") }) end
        every = d
      elseif a == "-h" or a == "--help" then
        error({ help = true })
      else
        error({ usage = "unknown argument '" .. kpis._show_id(a) .. "'" })
      end
    end)
    if not ok then
      if type(perr) == "table" and perr.help then
        io.stdout:write(USAGE)
        return 0
      end
      if type(perr) == "table" and perr.usage then return usage_error(perr.usage) end
      error(perr, 0)
    end
    i = i + 1
  end
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
