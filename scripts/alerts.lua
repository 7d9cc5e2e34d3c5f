local alert  = require "kpiwatch.alert"
local notify = require "kpiwatch.notify"

alert.hook("ops", notify.webhook { url = os.getenv("ALERT_WEBHOOK_URL"), secret = os.getenv("ALERT_WEBHOOK_SECRET") })
alert.hook("console", notify.stdout())

alert.rule { name = "score-floor", metric = "avg_score", below = 0.8, severity = "critical", notify = { "ops", "console" } }
alert.rule { name = "eval-floor", evals = "*", below = 70, notify = { "console" } }
alert.rule { name = "failed-calls", notify = { "ops" },
             when = function(k) return k.failed_calls > 0.1 * k.total_calls end,
             summary = "{failed_calls} of {total_calls} calls failed" }

local report = alert.check(arg[1])
os.exit(report.ok and 0 or 1)
