-- kpiwatch.model: the KPI object, a read-only view over one decoded body of
-- GET /simulate/test-executions/{id}/kpis/.
--
-- The object keeps the decoded table as it came and resolves names lazily in
-- __index: constructing one is a setmetatable and an envelope check, no copy,
-- because a watch or a gate may build tens of thousands of them.
--
-- What the view adds over the raw table:
--   * every documented field is readable under both casings the server has
--     used (callsAttempted / calls_attempted, ...), whichever one was sent;
--     other keys are readable under either casing too;
--   * json.null reads as nil (k:raw() keeps the decoded table, nulls and all);
--   * integer fields are Lua integers even when the JSON had 120.0;
--   * k:evals() collects the dynamic eval metrics (avg_<name> numbers that
--     are not documented fields, and choice objects with a `choices` list).
--
-- Units: avg_response, avg_agent_latency and avg_stop_time_after_interruption
-- are passed through unchanged. The reference page says seconds, the
-- server's code computes milliseconds; kpiwatch does not guess which one a
-- given server sent.

local M = require "kpiwatch.model.api"
require "kpiwatch.model.invalid"
require "kpiwatch.model.fields"
local kpi = require "kpiwatch.model.kpi"
require "kpiwatch.model.format"
require "kpiwatch.model.parse"

---@brief
--- The KPI object (`kpiwatch.Kpi`): a read-only view over one decoded body of
--- `GET /simulate/test-executions/{id}/kpis/`, what `kpis.get` returns.
---
--- - Every documented field reads under both casings (`callsAttempted` /
---   `calls_attempted`, `scenarioGraphs` / `scenario_graphs`, ...), whichever the
---   server sent (snake_case wins when a body has both); other keys too.
--- - `total_calls`, `calls_attempted`, `connected_calls`, `failed_calls`,
---   `total_duration` are Lua integers. JSON `null` reads as `nil`.
--- - The other agent type's fields come back as 0 and mean nothing: `agent_type`
---   says which set applies.
--- - `tostring(k)` is an aligned summary; `pairs(k)` walks the normalized view.
--- - Units: `avg_response`, `avg_agent_latency` and
---   `avg_stop_time_after_interruption` are passed through unchanged (the
---   reference page says seconds, the server computes milliseconds); the
---   summary marks them "(server units)".

M.KPI = kpi.KPI
return M
