-- Watch test executions and page when they regress; restart-safe.
--
--   kpiwatch --sandbox scripts/watch.lua c0ffee00-0000-4000-8000-000000000005
--   kpiwatch scripts/watch.lua ID [ID...]          (with FI_API_KEY/FI_SECRET_KEY)
--
-- Environment: WATCH_EVERY (default 60s), WATCH_STATE (alert state file,
-- default kpiwatch-watch.json), WATCH_CYCLES (stop after N polls),
-- KPIWATCH_ALERT_LOG (JSON-lines log, default kpiwatch-alerts.jsonl),
-- SLACK_WEBHOOK_URL (optional). Stops cleanly on Ctrl-C or SIGTERM.

local alert  = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"

local ids = { table.unpack(arg) }
if #ids == 0 then
  io.stderr:write("usage: kpiwatch [--sandbox] scripts/watch.lua EXECUTION_ID [...]\n")
  os.exit(2)
end

alert.hook("console", notify.stdout())
alert.hook("log", notify.file(os.getenv("KPIWATCH_ALERT_LOG") or "kpiwatch-alerts.jsonl"))
if os.getenv("SLACK_WEBHOOK_URL") then
  alert.hook("slack", notify.slack { url = os.getenv("SLACK_WEBHOOK_URL") })
end

-- Page on a low score only when it holds for two polls in a row; a score
-- that dips and recovers within ten minutes does not page twice.
alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
             after = 2, keep_firing_for = "10m", repeat_interval = "1h",
             labels = { agent = "{agent_type}" } }

-- Latency passes through in the server's units (see kpiwatch.model in doc/lua-api.md).
alert.rule { name = "agent-latency", metric = "avg_agent_latency", above = 1500, after = "5m",
             summary = "agent latency is {value:%.0f}, above {threshold}" }

-- A choice eval, tested with a predicate: more than 10% of calls looping.
alert.rule { name = "loops", severity = "warning", no_data = "ok",
             when = function(k)
               local c = k:evals().customer_agent_loop_detection
               if not c then return false end
               return c.loop > 0.1 * (c.loop + c.no_loop), c.loop
             end,
             summary = "{value} calls looped ({customer_agent_loop_detection})" }

local summary = alert.watch {
  ids = ids,
  every = os.getenv("WATCH_EVERY") or "60s",
  state = os.getenv("WATCH_STATE") or "kpiwatch-watch.json",
  max_cycles = math.tointeger(tonumber(os.getenv("WATCH_CYCLES") or "")),
  on_cycle = function(report, n)
    io.stderr:write(string.format("kpiwatch: poll %d: %d firing, %d pending, %d no data, %d errors\n",
      n, #report.firing, #report.pending, #report.no_data, #report.errors))
  end,
}
if summary.interrupted then
  io.stderr:write("kpiwatch: stopped (SIG", summary.interrupted:upper(), "), state saved\n")
end
os.exit(summary.lost > 0 and 3 or 0)
