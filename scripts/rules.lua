-- A rules file: what `kpiwatch check` and `kpiwatch watch` run (and
-- `kpiwatch gate --rules`, which ignores its hooks).
--
--   kpiwatch --sandbox check scripts/rules.lua c0ffee00-0000-4000-8000-000000000005   # exit 1
--   kpiwatch check scripts/rules.lua --run-test nightly
--   kpiwatch watch scripts/rules.lua --run-test nightly --every 5m --state nightly.state
--
-- `alert` and `notify` are in scope; the file cannot end the process.
-- ALERT_WEBHOOK_URL / ALERT_WEBHOOK_SECRET: a signed webhook (Standard Webhooks).
-- luacheck: read globals alert notify

alert.hook("ops", notify.webhook { url = os.getenv("ALERT_WEBHOOK_URL"),
                                  secret = os.getenv("ALERT_WEBHOOK_SECRET") })
alert.hook("console", notify.stdout())

alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical",
             notify = { "ops", "console" } }
alert.rule { name = "eval-floor", evals = "*", below = 70, notify = { "console" } }
alert.rule { name = "failed-calls", notify = { "ops" },
             when = function(k) return k.failed_calls > 0.1 * k.total_calls end,
             summary = "{failed_calls} of {total_calls} calls failed" }
