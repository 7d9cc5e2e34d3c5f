-- The executions of the fault-injection test, made up the same way in the
-- sandbox process and in the client process: execution i has its own id
-- and a body that differs from every other one (a response served for the
-- wrong id, or mixed up with another, cannot pass as correct).
--   local docs = dofile("spec/e2e/faults/docs.lua")
--   docs.id(i) -> uuid;  docs.body(i) -> JSON text (the API's envelope)
local json = require "kpiwatch.json"

local M = {}

function M.id(i)
  return string.format("fa017000-0000-4000-8000-%012x", i)
end

function M.index(id)
  local hex = id:match("^fa017000%-0000%-4000%-8000%-(%x+)$")
  return hex and tonumber(hex, 16)
end

function M.body(i)
  local voice = i % 2 == 0
  local result = {
    total_calls = 100 + i % 50,
    calls_attempted = 100 + i % 50,
    connected_calls = 90 + i % 40,
    calls_connected_percentage = (90 + i % 40) / (100 + i % 50) * 100,
    failed_calls = i % 7,
    total_duration = 1000 + i,
    agent_type = voice and "voice" or "text",
    is_inbound = i % 3 == 0,
    avg_score = (i % 997) / 997,
    avg_response = 800 + i % 400,
    execution_marker = "exec-" .. i,
    avg_tone_match = (i * 7919) % 10000 / 100,
    customer_agent_loop_detection = { choices = json.array { "loop", "no_loop" }, loop = i % 5, no_loop = 20 - i % 5 },
    scenario_graphs = { [tostring(i % 4)] = { nodes = json.array { "start", "greet", "end" }, weight = i } },
  }
  if voice then
    result.avg_agent_latency = 1000 + i % 900
    result.avg_user_wpm = 140 + i % 30
  else
    result.avg_total_tokens = 2000 + i % 1000
    result.avg_turn_count = 4 + i % 9
  end
  return json.encode { status = true, result = result }
end

return M
