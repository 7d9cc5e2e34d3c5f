-- A watch script for kpiwatch-watch@.service: install it as
-- /etc/kpiwatch/NAME.lua; the unit runs
--   kpiwatch /etc/kpiwatch/NAME.lua /var/lib/kpiwatch/NAME.state
-- with /etc/kpiwatch/NAME.env in the environment, for example:
--   FI_API_KEY=...
--   FI_SECRET_KEY=...
--   KPIWATCH_IDS=<execution id> <execution id>
--   ALERTMANAGER_URL=http://127.0.0.1:9093
--   KPIWATCH_METRICS=127.0.0.1:9464      (scraped by examples/prometheus)
-- Two machines may run the same script against one Alertmanager (or an
-- Alertmanager cluster): it de-duplicates their identical alerts.

local alert = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"

local state = arg[1] or "kpiwatch.state"
local ids = {}
for id in (os.getenv("KPIWATCH_IDS") or ""):gmatch("%S+") do ids[#ids + 1] = id end

alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
  summary = "avg_score is {value}, below {threshold}" }
alert.rule { name = "failed-calls", metric = "failed_calls", above = 10 }
alert.rule { name = "evals", evals = "*", below = 70 }

local am = os.getenv("ALERTMANAGER_URL")
if am and am ~= "" then
  alert.hook("alertmanager", notify.alertmanager { url = am, labels = { team = "agents" } })
end

local s = alert.watch {
  ids = ids, state = state,
  every = os.getenv("KPIWATCH_EVERY") or "60s",
  metrics = os.getenv("KPIWATCH_METRICS") or "127.0.0.1:9464",
}
io.stderr:write(string.format("kpiwatch: watch stopped (%s) after %d cycles: %d delivered, %d spooled, %d lost\n",
  tostring(s.interrupted or "done"), s.cycles, s.delivered, s.spooled, s.lost))
