-- The rules of scripts/rules.lua from a script (what `kpiwatch check
-- scripts/rules.lua ID` does without one): kpiwatch scripts/alerts.lua ID
local alert = require "kpiwatch.alert"

local dir = arg[0]:match("^(.*)/") or "."
local rules = alert.load_rules(dir .. "/rules.lua")
local report = rules:check(arg[1])
os.exit(report.ok and 0 or 1)
