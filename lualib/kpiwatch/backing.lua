-- kpiwatch.backing: which call count backs which KPI average.
--
-- The server computes every average with one SQL aggregate over the
-- execution's calls and turns a missing one into 0 (`float(value or 0)`,
-- eval averages too; older servers sent null). So an average of 0 may be
-- "no call contributed", not a measured zero: a latency of 0 ms over no
-- connected call would pass `avg_agent_latency<=800`, an avg_score of 0
-- over no completed call would hide that nothing completed. Each average
-- is only meaningful when the count behind it is above zero; this table
-- says which count that is, once, for the requirement checks of the gate
-- (kpiwatch.requirement) and for the alert rules (kpiwatch.alert).
--
--   count       read from the KPIs body as             backs
--   completed   total_calls - failed_calls             avg_score, avg_response,
--                                                       every eval average
--                                                       (avg_<eval name>), the
--                                                       text fields (tokens,
--                                                       chat latency, turns,
--                                                       CSAT)
--   connected   connected_calls (connectedCalls)        the voice fields
--                                                       (latency, interruptions,
--                                                       words per minute, talk
--                                                       ratio and percentages)
--   attempted   calls_attempted (callsAttempted)        calls_connected_percentage
--
-- Counts themselves (total_calls, failed_calls, ...) and total_duration are
-- never "no data": zero calls is a real answer. When the body lacks a
-- count (or it is not a number) the value is taken as it is: kpiwatch does
-- not guess.

local M = {}

---@alias kpiwatch.Count "completed"|"connected"|"attempted"

--- The count behind each documented average, by snake_case field name.
---@type table<string, kpiwatch.Count>
M.FIELDS = {
  avg_score = "completed",
  avg_response = "completed",
  avg_total_tokens = "completed",
  avg_input_tokens = "completed",
  avg_output_tokens = "completed",
  avg_chat_latency_ms = "completed",
  avg_turn_count = "completed",
  avg_csat_score = "completed",
  avg_agent_latency = "connected",
  avg_user_interruption_count = "connected",
  avg_user_interruption_rate = "connected",
  avg_user_wpm = "connected",
  avg_bot_wpm = "connected",
  avg_talk_ratio = "connected",
  avg_ai_interruption_count = "connected",
  avg_ai_interruption_rate = "connected",
  avg_stop_time_after_interruption = "connected",
  agent_talk_percentage = "connected",
  customer_talk_percentage = "connected",
  calls_connected_percentage = "attempted",
}

--- The count behind every dynamic eval average (avg_<name>).
M.EVALS = "completed"

local WORDS = {
  completed = "completed call",
  connected = "connected call",
  attempted = "attempted call",
}

--- count(get, which) -> the number of calls of that kind, or nil when the
--- body does not tell.
---@param get fun(name: string): any reads a field of the KPIs body (nil when absent or null)
---@param which kpiwatch.Count
---@return integer|number|nil
function M.count(get, which)
  if which == "connected" then
    local n = get("connected_calls")
    return type(n) == "number" and n or nil
  elseif which == "attempted" then
    local n = get("calls_attempted")
    return type(n) == "number" and n or nil
  end
  local total, failed = get("total_calls"), get("failed_calls")
  if type(total) ~= "number" then return nil end
  if type(failed) ~= "number" then failed = 0 end
  return total - failed
end

--- reason(get, field [, is_eval]) -> why the average `field` has no data
--- (its backing count is 0), or nil when it is backed or not an average.
--- `field` is a documented field's snake_case name, or an eval name when
--- is_eval is true.
---@param get fun(name: string): any reads a field of the KPIs body
---@param field string
---@param is_eval? boolean
---@return string|nil
function M.reason(get, field, is_eval)
  local which = is_eval and M.EVALS or M.FIELDS[field]
  if not which then return nil end
  local n = M.count(get, which)
  if n == nil or n > 0 then return nil end
  local shown = is_eval and ("eval:" .. field) or field
  return shown .. " averages no call: the execution has no " .. WORDS[which]
    .. " (the server sends 0 for an average over no call)"
end

return M
