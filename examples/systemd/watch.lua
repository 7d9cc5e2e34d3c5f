-- A rules file for kpiwatch-watch@.service: install it as
-- /etc/kpiwatch/NAME.lua; the unit runs
--   kpiwatch watch /etc/kpiwatch/NAME.lua --state /var/lib/kpiwatch/NAME.state $KPIWATCH_ARGS
-- with /etc/kpiwatch/NAME.env in the environment, for example:
--   FI_API_KEY=...
--   FI_SECRET_KEY=...
--   KPIWATCH_ARGS=--run-test nightly --id <execution id> --every 60s --metrics 127.0.0.1:9464
--   ALERTMANAGER_URL=http://127.0.0.1:9093
-- (--metrics is scraped by examples/prometheus.) Two machines may run the
-- same watch against one Alertmanager (or an Alertmanager cluster): it
-- de-duplicates their identical alerts.
-- luacheck: read globals alert notify

alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
  summary = "avg_score is {value}, below {threshold}" }
alert.rule { name = "failed-calls", metric = "failed_calls", above = 10 }
alert.rule { name = "evals", evals = "*", below = 70 }

local am = os.getenv("ALERTMANAGER_URL")
if am and am ~= "" then
  alert.hook("alertmanager", notify.alertmanager { url = am, labels = { team = "agents" } })
end
