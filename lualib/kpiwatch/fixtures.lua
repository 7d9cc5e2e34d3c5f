-- kpiwatch.fixtures: the sandbox's executions.
--
-- Bodies are kept as JSON text, byte for byte what the sandbox serves, in
-- the shapes of the real API (see ../shared/api/): the reference page's
-- camelCase keys in some, the server's current snake_case keys in others,
-- the other agent type's fields as 0, nulls for aggregates over no calls,
-- dynamic eval metrics (avg_<name> percentages and choice objects) and
-- scenario graphs keyed by scenario UUID.
--
-- Besides these KPI fixtures there are fault fixtures: ids that always
-- answer with a given failure, so scripts can be tried against errors with
-- `kpiwatch --sandbox`.

local M = {}

local list = {}
local by_id = {}

local function add(f)
  list[#list + 1] = f
  by_id[f.id] = f
end

-- ---- KPI fixtures -------------------------------------------------------------

add {
  id = "c0ffee00-0000-4000-8000-000000000001",
  name = "voice-outbound",
  description = "voice agent, outbound calls, healthy; camelCase keys as on the reference page",
  body = [[
{"total_calls": 120, "avg_score": 0.87, "avg_response": 1240.5, "callsAttempted": 120, "connectedCalls": 112, "callsConnectedPercentage": 93.33, "failed_calls": 8, "total_duration": 15840, "agent_type": "voice", "is_inbound": false, "scenarioGraphs": {"baeb76f4-f7b1-4b6d-a3bd-129fc5bce3f1": {"nodes": [{"id": "start", "type": "conversation", "prompt": "Greet the customer and confirm their appointment for tomorrow."}, {"id": "reschedule", "type": "conversation", "prompt": "Offer two alternative slots."}, {"id": "end", "type": "end_call", "prompt": "Thank the customer and end the call."}], "edges": [{"source": "start", "target": "reschedule", "condition": "customer cannot make it"}, {"source": "start", "target": "end", "condition": "customer confirms"}, {"source": "reschedule", "target": "end", "condition": "new slot agreed"}]}, "6a8f0bb7-cf84-4ecb-92be-7cdfeaef9d5c": {}}, "avg_agent_latency": 820.3, "avg_user_interruption_count": 1.4, "avg_user_interruption_rate": 0.12, "avg_user_wpm": 148.2, "avg_bot_wpm": 162.7, "avg_talk_ratio": 0.58, "avg_ai_interruption_count": 0.3, "avg_ai_interruption_rate": 0.03, "avg_stop_time_after_interruption": 410.0, "agentTalkPercentage": 58.2, "customerTalkPercentage": 41.8, "avg_total_tokens": 0, "avg_input_tokens": 0, "avg_output_tokens": 0, "avg_chat_latency_ms": 0, "avg_turn_count": 0, "avg_csat_score": 0, "avg_task_completion": 91.1, "avg_is_polite": 100.0, "avg_is_helpful": 88.4, "avg_conversation_coherence": 86.6, "avg_audio_quality": 79.5, "tone": {"friendly": 96, "neutral": 14, "rude": 2, "choices": ["friendly", "neutral", "rude"]}}
]],
}

add {
  id = "c0ffee00-0000-4000-8000-000000000002",
  name = "voice-inbound",
  description = "voice agent, inbound calls; snake_case keys as the server's current code emits",
  body = [[
{"total_calls": 64, "avg_score": 0.91, "avg_response": 980.2, "calls_attempted": 64, "connected_calls": 63, "calls_connected_percentage": 98.44, "failed_calls": 1, "total_duration": 9210, "agent_type": "voice", "is_inbound": true, "scenario_graphs": {"1ce6f887-f06b-4a57-9f27-7c7ff6f75f64": {"nodes": [{"id": "intake", "type": "conversation", "prompt": "Ask for the order number."}, {"id": "lookup", "type": "tool", "prompt": "Look the order up and read back its status."}, {"id": "transfer", "type": "transfer_call", "prompt": "Transfer to a human agent."}], "edges": [{"source": "intake", "target": "lookup", "condition": "order number given"}, {"source": "lookup", "target": "transfer", "condition": "customer asks for a human"}]}, "2f70d6e9-7629-4dd6-a967-3ec30310746e": {"nodes": [{"id": "intake", "type": "conversation", "prompt": "Ask what the refund is for."}], "edges": []}}, "avg_agent_latency": 690.8, "avg_user_interruption_count": 0.9, "avg_user_interruption_rate": 0.07, "avg_user_wpm": 156.3, "avg_bot_wpm": 158.9, "avg_talk_ratio": 0.47, "avg_ai_interruption_count": 0.1, "avg_ai_interruption_rate": 0.01, "avg_stop_time_after_interruption": 350.5, "agent_talk_percentage": 47.1, "customer_talk_percentage": 52.9, "avg_total_tokens": 0, "avg_input_tokens": 0, "avg_output_tokens": 0, "avg_chat_latency_ms": 0, "avg_turn_count": 0, "avg_csat_score": 0, "avg_task_completion": 95.2, "avg_is_polite": 98.4, "avg_conversation_resolution": 90.5, "avg_context_adherence": 93.7, "avg_toxicity": 100.0, "customer_agent_loop_detection": {"no_loop": 61, "loop": 2, "choices": ["no_loop", "loop"]}}
]],
}

add {
  id = "c0ffee00-0000-4000-8000-000000000003",
  name = "text-agent",
  description = "text (chat) agent: is_inbound null, voice fields 0, token and CSAT fields set",
  body = [[
{"total_calls": 50, "avg_score": 0.84, "avg_response": 1512.0, "calls_attempted": 50, "connected_calls": 48, "calls_connected_percentage": 96.0, "failed_calls": 2, "total_duration": 6120, "agent_type": "text", "is_inbound": null, "scenario_graphs": {"cfcf24d0-2af0-41bd-87dd-842c0704d710": {}}, "avg_agent_latency": 0, "avg_user_interruption_count": 0, "avg_user_interruption_rate": 0, "avg_user_wpm": 0, "avg_bot_wpm": 0, "avg_talk_ratio": 0, "avg_ai_interruption_count": 0, "avg_ai_interruption_rate": 0, "avg_stop_time_after_interruption": 0, "agent_talk_percentage": 0, "customer_talk_percentage": 0, "avg_total_tokens": 1843.6, "avg_input_tokens": 1210.2, "avg_output_tokens": 633.4, "avg_chat_latency_ms": 912.8, "avg_turn_count": 7.4, "avg_csat_score": 4.3, "avg_task_completion": 87.5, "avg_is_helpful": 91.7, "avg_is_concise": 72.9, "avg_completeness": 84.0, "tone": {"friendly": 31, "neutral": 17, "rude": 0, "choices": ["friendly", "neutral", "rude"]}}
]],
}

add {
  id = "c0ffee00-0000-4000-8000-000000000004",
  name = "empty",
  description = "an execution with no completed call: counts 0, averages null",
  body = [[
{"total_calls": 0, "avg_score": null, "avg_response": null, "calls_attempted": 0, "connected_calls": 0, "calls_connected_percentage": 0, "failed_calls": 0, "total_duration": 0, "agent_type": "voice", "is_inbound": false, "scenario_graphs": {}, "avg_agent_latency": null, "avg_user_interruption_count": null, "avg_user_interruption_rate": null, "avg_user_wpm": null, "avg_bot_wpm": null, "avg_talk_ratio": null, "avg_ai_interruption_count": null, "avg_ai_interruption_rate": null, "avg_stop_time_after_interruption": null, "agent_talk_percentage": null, "customer_talk_percentage": null, "avg_total_tokens": null, "avg_input_tokens": null, "avg_output_tokens": null, "avg_chat_latency_ms": null, "avg_turn_count": null, "avg_csat_score": null, "avg_task_completion": null, "avg_is_polite": null}
]],
}

add {
  id = "c0ffee00-0000-4000-8000-000000000005",
  name = "failing",
  description = "voice outbound run below typical thresholds: avg_score 0.62, evals under 70, 29% failed calls",
  body = [[
{"total_calls": 80, "avg_score": 0.62, "avg_response": 2315.7, "callsAttempted": 80, "connectedCalls": 57, "callsConnectedPercentage": 71.25, "failed_calls": 23, "total_duration": 7415, "agent_type": "voice", "is_inbound": false, "scenarioGraphs": {"d05c0b10-5b9f-4f18-8147-bc0e0c913833": {"nodes": [{"id": "pitch", "type": "conversation", "prompt": "Present the renewal offer."}, {"id": "objection", "type": "conversation", "prompt": "Handle the price objection."}], "edges": [{"source": "pitch", "target": "objection", "condition": "customer objects to the price"}]}, "5e2a9535-52ef-4dc1-b158-bf0569537e22": {}}, "avg_agent_latency": 1904.6, "avg_user_interruption_count": 3.8, "avg_user_interruption_rate": 0.31, "avg_user_wpm": 171.4, "avg_bot_wpm": 188.0, "avg_talk_ratio": 0.74, "avg_ai_interruption_count": 2.2, "avg_ai_interruption_rate": 0.18, "avg_stop_time_after_interruption": 1220.3, "agentTalkPercentage": 74.3, "customerTalkPercentage": 25.7, "avg_total_tokens": 0, "avg_input_tokens": 0, "avg_output_tokens": 0, "avg_chat_latency_ms": 0, "avg_turn_count": 0, "avg_csat_score": 0, "avg_task_completion": 54.2, "avg_is_polite": 61.0, "avg_is_helpful": 58.9, "avg_conversation_coherence": 66.7, "avg_audio_quality": 69.4, "tone": {"friendly": 12, "neutral": 27, "rude": 18, "choices": ["friendly", "neutral", "rude"]}, "customer_agent_loop_detection": {"no_loop": 41, "loop": 16, "choices": ["no_loop", "loop"]}}
]],
}

-- ---- fault fixtures -----------------------------------------------------------
-- `fault` is a fault spec of kpiwatch.sandbox applied to every request for
-- the id ("flaky" alternates: odd requests fail, even ones succeed).

add {
  id = "c0ffee00-0000-4000-8000-000000000500",
  name = "fault-500",
  description = "always answers 500 with the server_error body",
  fault = "500",
}

add {
  id = "c0ffee00-0000-4000-8000-000000000502",
  name = "fault-502-html",
  description = "always answers 502 with an HTML gateway page",
  fault = "502",
}

add {
  id = "c0ffee00-0000-4000-8000-000000000429",
  name = "fault-429",
  description = "always answers 429 with Retry-After: 1 and the rate-limit body",
  fault = "429:1",
}

add {
  id = "c0ffee00-0000-4000-8000-0000000000f1",
  name = "flaky",
  description = "odd-numbered requests answer 500, even ones the voice-outbound body (a retry succeeds)",
  fault = "flaky",
  body_of = "c0ffee00-0000-4000-8000-000000000001",
}

add {
  id = "c0ffee00-0000-4000-8000-0000000000b0",
  name = "fault-broken-json",
  description = "answers 200 with a truncated JSON body",
  fault = "broken",
  body_of = "c0ffee00-0000-4000-8000-000000000001",
}

add {
  id = "c0ffee00-0000-4000-8000-000000000200",
  name = "fault-html-200",
  description = "answers 200 with an HTML page (a base URL pointing at a web site)",
  fault = "html",
}

add {
  id = "c0ffee00-0000-4000-8000-0000000000d0",
  name = "slow",
  description = "answers the voice-inbound body after 5 seconds (try --timeout 1)",
  fault = "delay:5",
  body_of = "c0ffee00-0000-4000-8000-000000000002",
}

for _, f in ipairs(list) do
  if f.body then f.body = f.body:gsub("^%s+", ""):gsub("%s+$", "") end
  if f.body_of then f.body = by_id[f.body_of].body end
end

-- Stable ids by fixture name, for scripts and tests: fixtures.ids["voice-outbound"].
M.ids = {}
for _, f in ipairs(list) do M.ids[f.name] = f.id end

-- list() -> array of {id, name, description, body (JSON text) [, fault]}.
-- The KPI fixtures come first, the fault fixtures after them.
function M.list()
  return list
end

function M.get(id)
  return by_id[id]
end

-- The ids of the fixtures that answer a KPIs body without any fault.
function M.kpi_ids()
  local out = {}
  for _, f in ipairs(list) do
    if f.body and not f.fault then out[#out + 1] = f.id end
  end
  return out
end

-- ---- run tests ------------------------------------------------------------------
-- Run tests and their executions for the executions, execute, detail and
-- get-id-by-name routes (kpiwatch.sandbox_runs serves them). An execution
-- is described, not recorded: its calls are drawn by sandbox_runs from a
-- PRNG seeded with `seed`, so every sandbox serves the same per-call
-- overall_score values. Past executions are oldest first here; a run
-- started with POST .../execute/ follows `next_run`.
--   calls: calls of the execution; mean, sd: of the per-call scores (0..1,
--   two decimals, clamped); fail: probability that a call fails (no score);
--   good_first: the best calls come first, so partial KPIs look better than
--   the final ones; fail_at: a run that fails once this fraction of its
--   calls has happened, with error_reason.

local run_tests = {}
local run_test_by = {}

local DAY = 86400

local function run_test(t)
  t.index = #run_tests + 1
  t.id = string.format("c0ffee00-0000-4000-8000-00000000a%03x", t.index)
  t.scenarios = {}
  for s, name in ipairs(t.scenario_names) do
    t.scenarios[s] = { id = string.format("c0ffee00-0000-4000-b%03x-%012x", t.index, s), name = name }
  end
  for i, e in ipairs(t.history) do
    e.id = string.format("c0ffee00-0000-4000-9%03x-%012x", t.index, i)
    e.seed = e.seed or (t.index * 1000 + i)
    e.start = e.start or (t.first_start + (i - 1) * (t.every or DAY))
  end
  run_tests[t.index] = t
  run_test_by[t.id] = t
  run_test_by[t.name] = t
end

local function repeat_runs(n, base, overrides)
  local out = {}
  for i = 1, n do
    local e = {}
    for k, v in pairs(base) do e[k] = v end
    for k, v in pairs((overrides or {})[i] or {}) do e[k] = v end
    out[i] = e
  end
  return out
end

local NIGHTLY_CALL = { status = "completed", calls = 12, mean = 0.86, sd = 0.08, fail = 0.08 }

run_test {
  name = "nightly",
  description = "34 past runs (4 pages of 10), two failed, one cancelled; a new run completes healthy (avg_score 0.9)",
  agent_type = "voice", provider = "vapi", agent_definition = "Appointment booking (outbound)", agent_version = "v12",
  scenario_names = { "Confirm tomorrow's appointment", "Reschedule to another slot" },
  evals = { "task_completion", "is_polite" },
  first_start = 1790820000, -- 2026-10-01T02:00:00Z, one run a day
  history = repeat_runs(34, NIGHTLY_CALL, {
    [20] = { status = "failed", fail_at = 0.5,
      error_reason = "Agent endpoint returned HTTP 503 during call setup" },
    [27] = { status = "cancelled", fail_at = 0.25 },
    [31] = { status = "failed", fail_at = 0.1, error_reason = "Simulator quota exceeded for this workspace" },
  }),
  next_run = { calls = 12, mean = 0.9, sd = 0.05, fail = 0 },
}

run_test {
  name = "broken-agent",
  description = "3 healthy past runs; a new run fails while running (error_reason set)",
  agent_type = "voice", provider = "vapi", agent_definition = "Support line (inbound)", agent_version = "v3",
  scenario_names = { "Order status", "Refund request" },
  evals = { "task_completion", "is_polite" },
  first_start = 1790820000 + 3600,
  history = repeat_runs(3, { status = "completed", calls = 10, mean = 0.88, sd = 0.06, fail = 0.05 }),
  next_run = { calls = 10, mean = 0.88, sd = 0.06, fail = 0.05, outcome = "failed", fail_at = 0.4,
    error_reason = "Agent websocket closed: connection refused (code 1006)" },
}

-- Per-call scores for trend statistics: 8 stable runs (30 calls around
-- 0.86), a noisy drop that is not significant (8 calls, widely spread),
-- two stable runs, then a real regression (40 calls around 0.70). A new
-- run looks good while in flight (best calls first) and ends poor.
run_test {
  name = "voice-trend",
  description = "12 past runs: stable, a noisy non-significant drop (run 9), a real regression (run 12);"
    .. " a new run ends poor",
  agent_type = "voice", provider = "retell", agent_definition = "Renewal offers (outbound)", agent_version = "v7",
  scenario_names = { "Renewal pitch", "Price objection", "Cancel request" },
  evals = { "task_completion", "is_polite" },
  first_start = 1793502000, -- 2026-11-01T03:00:00Z
  history = repeat_runs(12, { status = "completed", calls = 30, mean = 0.86, sd = 0.10, fail = 0 }, {
    [9] = { calls = 8, mean = 0.81, sd = 0.16 },
    [12] = { calls = 40, mean = 0.70, sd = 0.10 },
  }),
  next_run = { calls = 12, mean = 0.62, sd = 0.2, fail = 0.1, good_first = true },
}

run_test {
  name = "in-flight",
  description = "2 past runs and a third started when the sandbox starts (pending, running, evaluating, completed)",
  agent_type = "voice", provider = "vapi", agent_definition = "Appointment booking (outbound)", agent_version = "v13",
  scenario_names = { "Confirm tomorrow's appointment" },
  evals = { "task_completion", "is_polite" },
  first_start = 1790820000 + 7200,
  history = repeat_runs(2, { status = "completed", calls = 8, mean = 0.85, sd = 0.07, fail = 0 }),
  start_running = true, -- one execution of next_run starts with the sandbox
  next_run = { calls = 8, mean = 0.85, sd = 0.07, fail = 0 },
}

-- run_tests() -> the run test fixtures, in order (see above).
function M.run_tests()
  return run_tests
end

-- run_test(id_or_name) -> the run test fixture, or nil.
function M.run_test(key)
  return run_test_by[key]
end

M.run_test_ids = {}
for _, t in ipairs(run_tests) do M.run_test_ids[t.name] = t.id end


-- File names in dir. Lua has no directory listing: the runtime's fs module
-- is used when it has one, else `ls` run without a shell (kpiwatch._process),
-- else, outside the kpiwatch binary, `ls` through io.popen with the path
-- quoted.
local function list_dir(dir)
  local okf, fs = pcall(require, "kpiwatch._fs")
  if okf and type(fs) == "table" then
    if type(fs.scandir) == "function" then return fs.scandir(dir) end
    if type(fs.stat) == "function" then
      local st = fs.stat(dir)
      if not st then return nil, "fixtures folder not found: " .. dir end
      if st.type and st.type ~= "directory" and st.type ~= "dir" then
        return nil, "not a folder: " .. dir
      end
    end
  end
  local text
  local okp, proc = pcall(require, "kpiwatch._process")
  if okp and type(proc) == "table" and type(proc.spawn) == "function" then
    local r, msg = proc.spawn({ "ls", "-1A", "--", dir }, { timeout = 30 })
    if not r then return nil, "cannot list " .. dir .. ": " .. tostring(msg) end
    if r.status ~= 0 then return nil, "cannot list " .. dir end
    text = r.stdout
  else
    local p = io.popen("ls -1A -- '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    if not p then return nil, "cannot list " .. dir end
    text = p:read("a")
    if not p:close() then return nil, "cannot list " .. dir end
  end
  local names = {}
  for line in text:gmatch("[^\n]+") do names[#names + 1] = line end
  return names
end

-- load_dir(dir) -> array of fixtures read from dir/<uuid>.json files, each
-- the recorded body of one execution served byte for byte. Raises a
-- `config` error naming the file when a file cannot be read or is not a
-- JSON object; other files in the folder are ignored.
function M.load_dir(dir)
  local errors = require "kpiwatch.errors"
  local model = require "kpiwatch.model"
  local shared = require "kpiwatch.shared"
  if type(dir) ~= "string" or dir == "" then errors.raise("config", "fixtures folder: expected a path") end
  local names, err = list_dir(dir)
  if not names then errors.raise("config", err) end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local id = name:match("^(.+)%.json$")
    if id and shared.uuid(id) then
      local path = dir:gsub("/+$", "") .. "/" .. name
      local fh, ferr = io.open(path, "rb")
      if not fh then errors.raise("config", "cannot read fixture " .. tostring(ferr)) end
      local text = fh:read("a")
      fh:close()
      local k, perr = model.parse(text, id:lower())
      if not k then errors.raise("config", path .. ": " .. perr.message) end
      out[#out + 1] = {
        id = id:lower(),
        name = name,
        description = "loaded from " .. path,
        body = text,
      }
    end
  end
  return out
end

return M
