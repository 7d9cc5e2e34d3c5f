-- kpiwatch watch RULES.lua [--run-test RT]... [--id ID]...: alert.watch
-- with the rules file's rules and hooks until SIGINT or SIGTERM.

local args = require "kpiwatch.cli.args"
local cmd = require "kpiwatch.cli.rules_cmd"

local PROG = "kpiwatch watch"

local USAGE = [[
usage: kpiwatch [options] watch RULES.lua [--run-test RT]... [--id ID]...
                [--every DUR] [--state FILE] [--metrics ADDR:PORT]

Poll executions and notify the hooks RULES.lua registers (alert.hook) as
its rules fire and resolve (alert.watch), until SIGINT or SIGTERM. RULES.lua
is a rules file as `gate --rules` and `check` read it.
  --run-test RT      follow run test RT (its id or its name): each execution
                     it starts is judged once, when completed; on_status and
                     stale rules apply (repeatable)
  --id ID            poll execution ID every cycle (repeatable)
  --every DUR        poll interval: 30s, 5m, ... (default 60s)
  --state FILE       keep the alert state (firing alerts, followed runs,
                     undelivered notifications) in FILE, so a restart
                     neither repeats nor loses a notification; the spool of
                     failed deliveries is FILE.spool
  --metrics A:P      serve Prometheus metrics on http://A:P/metrics
  -h, --help         show this help
Global options (--sandbox, --base-url, --timeout, --retries, --verbose) go
before 'watch'. Credentials: FI_API_KEY and FI_SECRET_KEY.
Exit status:
  130, 143  stopped by SIGINT or SIGTERM, the state saved
  2         usage error, bad or unreadable rules file
  3         a notification could be neither delivered, spooled nor kept
            in the state, or the metrics address cannot be bound
]]

local OPTIONS = args.merge(cmd.OPTIONS, {
  ["--every"] = { check = args.duration },
  ["--state"] = {},
  ["--metrics"] = { check = args.listen },
})

local function plural(n, what)
  return n .. " " .. what .. (n == 1 and "" or "s")
end

return function(argv)
  local o, stop = args.command(argv, { prog = PROG, usage = USAGE, options = OPTIONS })
  if not o then return stop end
  local path = o.args[1]
  if not path then return cmd.usage_error(PROG, "missing the rules file") end
  if o.args[2] then
    return cmd.usage_error(PROG, "unexpected argument '" .. cmd.show(o.args[2]) .. "' (execution ids go after --id)")
  end
  local run_tests, ids = o.run_test, o.id
  if #run_tests == 0 and #ids == 0 then
    return cmd.usage_error(PROG, "nothing to watch: give --run-test or --id")
  end
  if o.state == "" then return cmd.usage_error(PROG, "bad --state: an empty file name") end
  local reg, lerr = cmd.load(path)
  if not reg then return cmd.usage_error(PROG, lerr) end

  io.stderr:write(PROG, ": watching ", plural(#run_tests, "run test"), " and ", plural(#ids, "execution"),
    " every ", tostring(o.every or 60), "s", o.state and (", state in " .. o.state) or "", "\n")
  io.stderr:flush()
  local ok, s = pcall(reg.watch, reg, {
    ids = #ids > 0 and ids or nil,
    run_tests = #run_tests > 0 and run_tests or nil,
    every = o.every, state = o.state, metrics = o.metrics,
    on_cycle = function(rep, n)
      local events = rep.events or {}
      if #events > 0 or #rep.errors > 0 then
        io.stderr:write(string.format("%s: cycle %d: %d firing, %d notified, %d errors\n",
          PROG, n, #rep.firing, #events, #rep.errors))
        io.stderr:flush()
      end
    end,
  })
  if not ok then return cmd.fail(PROG, s) end
  io.stderr:write(string.format("%s: stopped (%s) after %s: %d delivered, %d spooled, %d lost%s\n",
    PROG, s.interrupted and ("SIG" .. s.interrupted:upper()) or "done", plural(s.cycles, "cycle"),
    s.delivered, s.spooled, s.lost, o.state and ("; state saved in " .. o.state) or ""))
  if s.lost > 0 then return 3 end
  if s.interrupted then return cmd.signal_code(s.interrupted) end
  return 0
end
