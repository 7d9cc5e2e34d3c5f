-- Specs for kpiwatch.model (the KPI object). They run under the kpiwatch
-- binary (busted --lua=build/kpiwatch) and also under a plain lua5.4 with
-- lua-cjson (LUA_PATH="lualib/?.lua;lualib/?/init.lua;;" busted ...).

local model = require "kpiwatch.model"
local fixtures = require "kpiwatch.fixtures"
local errors = require "kpiwatch.errors"
local json = (function()
  local ok, j = pcall(function() return _G.json end)
  if ok and type(j) == "table" then return j end
  return require "cjson"
end)()

local ids = fixtures.ids

local function load(name)
  local f = fixtures.get(ids[name])
  local k, err = model.parse(f.body, f.id)
  assert(k, err and err.message)
  return k
end

-- Every field of the reference page, the name it has there, and its value
-- in the voice-outbound fixture (camelCase keys as on the page).
local PAGE = {
  { "total_calls", 120 },
  { "avg_score", 0.87 },
  { "avg_response", 1240.5 },
  { "callsAttempted", 120 },
  { "connectedCalls", 112 },
  { "callsConnectedPercentage", 93.33 },
  { "failed_calls", 8 },
  { "total_duration", 15840 },
  { "agent_type", "voice" },
  { "is_inbound", false },
  { "scenarioGraphs", "table" },
  { "avg_agent_latency", 820.3 },
  { "avg_user_interruption_count", 1.4 },
  { "avg_user_interruption_rate", 0.12 },
  { "avg_user_wpm", 148.2 },
  { "avg_bot_wpm", 162.7 },
  { "avg_talk_ratio", 0.58 },
  { "avg_ai_interruption_count", 0.3 },
  { "avg_ai_interruption_rate", 0.03 },
  { "avg_stop_time_after_interruption", 410.0 },
  { "agentTalkPercentage", 58.2 },
  { "customerTalkPercentage", 41.8 },
  { "avg_total_tokens", 0 },
  { "avg_input_tokens", 0 },
  { "avg_output_tokens", 0 },
  { "avg_chat_latency_ms", 0 },
  { "avg_turn_count", 0 },
  { "avg_csat_score", 0 },
}

local SNAKE_OF = {
  callsAttempted = "calls_attempted",
  connectedCalls = "connected_calls",
  callsConnectedPercentage = "calls_connected_percentage",
  scenarioGraphs = "scenario_graphs",
  agentTalkPercentage = "agent_talk_percentage",
  customerTalkPercentage = "customer_talk_percentage",
}

local INTEGER_FIELDS = { "total_calls", "calls_attempted", "connected_calls", "failed_calls", "total_duration" }

describe("kpiwatch.model", function()
  describe("field access", function()
    it("reads every field of the reference page under its documented name and the other casing", function()
      local k = load("voice-outbound")
      assert.are.equal(28, #PAGE)
      for _, p in ipairs(PAGE) do
        local name, want = p[1], p[2]
        local other = SNAKE_OF[name]
        if want == "table" then
          assert.are.equal("table", type(k[name]), name)
        else
          assert.are.equal(want, k[name], name)
        end
        if other then
          assert.are.equal(k[name], k[other], name .. " / " .. other)
        end
      end
    end)

    it("reads snake_case bodies under the camelCase names of the page", function()
      local k = load("voice-inbound")
      assert.is_nil(k:raw().callsAttempted)
      assert.are.equal(64, k:raw().calls_attempted)
      for camel, snake in pairs(SNAKE_OF) do
        assert.is_not_nil(k[camel], camel)
        assert.are.equal(k[snake], k[camel], camel)
      end
      assert.are.equal(64, k.callsAttempted)
      assert.are.equal(63, k.connectedCalls)
      assert.are.equal(98.44, k.callsConnectedPercentage)
      assert.are.equal(47.1, k.agentTalkPercentage)
      assert.are.equal(52.9, k.customerTalkPercentage)
      assert.are.equal(k.scenario_graphs, k.scenarioGraphs)
      assert.is_true(k.is_inbound)
    end)

    it("prefers the snake_case key when a body carries both spellings", function()
      local k = model.new({ calls_attempted = 5, callsAttempted = 7 })
      assert.are.equal(5, k.callsAttempted)
      assert.are.equal(5, k.calls_attempted)
    end)

    it("makes integer fields Lua integers even when the JSON had floats", function()
      local k = model.new(json.decode('{"total_calls": 120.0, "callsAttempted": 3.0, "connected_calls": 2,'
        .. ' "failed_calls": 1.0, "total_duration": 15840.0}'))
      for _, name in ipairs(INTEGER_FIELDS) do
        assert.are.equal("integer", math.type(k[name]), name)
      end
      assert.are.equal(120, k.total_calls)
      assert.are.equal("integer", math.type(k.callsAttempted))
      for _, name in ipairs(INTEGER_FIELDS) do
        assert.are.equal("integer", math.type(load("voice-outbound")[name]), name)
        assert.are.equal("integer", math.type(load("text-agent")[name]), name)
      end
    end)

    it("keeps a non-integral value in an integer field as it came", function()
      local k = model.new({ total_duration = 12.5 })
      assert.are.equal(12.5, k.total_duration)
    end)

    it("reads null as nil and keeps the raw body", function()
      local k = load("empty")
      assert.is_nil(k.avg_score)
      assert.is_nil(k.avg_response)
      assert.is_nil(k.avg_agent_latency)
      assert.are.equal(json.null, k:raw().avg_score)
      assert.are.equal(0, k.total_calls)
      local v, present = model.get(k, "avg_score")
      assert.is_nil(v)
      assert.is_true(present)
      v, present = model.get(k, "no_such_field")
      assert.is_nil(v)
      assert.is_false(present)
      assert.is_true(k:has("avg_score"))
      assert.is_false(k:has("no_such_field"))
    end)

    it("reads is_inbound null as nil for text agents and tells the agent types apart", function()
      local t = load("text-agent")
      assert.is_nil(t.is_inbound)
      assert.are.equal(json.null, t:raw().is_inbound)
      assert.is_true(t:is_text())
      assert.is_false(t:is_voice())
      assert.are.equal(0, t.avg_agent_latency)
      assert.are.equal(1843.6, t.avg_total_tokens)
      assert.are.equal(4.3, t.avg_csat_score)
      local v = load("voice-outbound")
      assert.is_true(v:is_voice())
      assert.is_false(v:is_text())
      assert.is_false(v.is_inbound)
    end)

    it("passes the milliseconds-or-seconds fields through unchanged", function()
      local k = load("voice-outbound")
      assert.are.equal(1240.5, k.avg_response)
      assert.are.equal(820.3, k.avg_agent_latency)
      assert.are.equal(410.0, k.avg_stop_time_after_interruption)
      assert.is_true(model.UNIT_AMBIGUOUS.avg_response)
    end)

    it("carries the execution id", function()
      local k = load("voice-outbound")
      assert.are.equal(ids["voice-outbound"], k.execution_id)
      assert.is_nil(model.new({ total_calls = 1 }).execution_id)
    end)

    it("reads undocumented keys under either casing", function()
      local k = model.new({ someNewField = 3, other_new_field = 4 })
      assert.are.equal(3, k.some_new_field)
      assert.are.equal(3, k.someNewField)
      assert.are.equal(4, k.otherNewField)
      assert.is_nil(k.nothing_like_this)
    end)

    it("is read-only", function()
      local k = load("voice-outbound")
      assert.has_error(function() k.avg_score = 1 end)
      assert.are.equal(0.87, k.avg_score)
    end)

    it("gives the same answers through model.get for a plain table", function()
      local plain = json.decode(fixtures.get(ids["voice-outbound"]).body)
      assert.are.equal(120, (model.get(plain, "calls_attempted")))
      assert.are.equal(120, (model.get(plain, "callsAttempted")))
      assert.are.equal(0.87, (model.get(plain, "avg_score")))
      local enveloped = { status = true, result = plain }
      assert.are.equal(112, (model.get(enveloped, "connected_calls")))
      assert.are.equal(91.1, (model.eval(plain, "task_completion")))
      local v, present = model.eval(plain, "no_such_eval")
      assert.is_nil(v)
      assert.is_false(present)
    end)
  end)

  describe("evals", function()
    it("collects avg_<name> keys that are not documented fields, and choice objects", function()
      local k = load("voice-outbound")
      local e = k:evals()
      local names = {}
      for name in pairs(e) do names[#names + 1] = name end
      table.sort(names)
      assert.are.same({ "audio_quality", "conversation_coherence", "is_helpful", "is_polite",
        "task_completion", "tone" }, names)
      assert.are.equal(91.1, e.task_completion)
      assert.are.equal(100, e.is_polite)
      assert.are.equal(88.4, e.is_helpful)
      -- documented avg_ fields never show up as evals
      assert.is_nil(e.score)
      assert.is_nil(e.response)
      assert.is_nil(e.agent_latency)
      assert.is_nil(e.chat_latency_ms)
      assert.is_nil(e.csat_score)
    end)

    it("keeps choice evals as tables with their counts and choices", function()
      local k = load("voice-outbound")
      local tone = k:evals().tone
      assert.are.same({ "friendly", "neutral", "rude" }, tone.choices)
      assert.are.equal(96, tone.friendly)
      assert.are.equal(2, tone.rude)
      assert.are.equal(tone, k.tone)
      assert.are.equal(tone, (k:eval("tone")))
      local loop = load("voice-inbound"):evals().customer_agent_loop_detection
      assert.are.same({ "no_loop", "loop" }, loop.choices)
    end)

    it("lists null-valued evals by name but leaves them out of the values", function()
      local k = load("empty")
      assert.are.same({}, k:evals())
      assert.are.same({ "is_polite", "task_completion" }, k:eval_names())
      local v, present = k:eval("task_completion")
      assert.is_nil(v)
      assert.is_true(present)
    end)

    it("finds the failing fixture's evals below 70", function()
      local k = load("failing")
      for name, v in pairs(k:evals()) do
        if type(v) == "number" then assert.is_true(v < 70, name) end
      end
      assert.is_true(k.avg_score < 0.8)
      assert.is_true(k.failed_calls > 0.1 * k.total_calls)
    end)
  end)

  describe("envelope", function()
    it("unwraps {status: true, result: {...}}", function()
      local body = json.decode('{"status": true, "result": {"total_calls": 3, "callsAttempted": 4, "avg_x": 50}}')
      local k = model.new(body, "id")
      assert.are.equal(3, k.total_calls)
      assert.are.equal(4, k.calls_attempted)
      assert.are.equal(50, k:evals().x)
      assert.are.equal(3, k:raw().total_calls)
    end)

    it("parses an enveloped body", function()
      local k = assert(model.parse('{"status": true, "result": {"total_calls": 7, "agent_type": "text"}}', "x"))
      assert.are.equal(7, k.total_calls)
      assert.is_true(k:is_text())
    end)

    it("does not unwrap a body whose result is not an object", function()
      local k = model.new({ status = true, result = "fine", total_calls = 2 })
      assert.are.equal(2, k.total_calls)
    end)
  end)

  describe("parse", function()
    local function perr(text)
      local k, err = model.parse(text, "abc")
      assert.is_nil(k)
      assert.is_true(errors.is(err))
      assert.are.equal("protocol", err.kind)
      assert.are.equal("abc", err.execution_id)
      return err
    end

    it("rejects an HTML page", function()
      local err = perr("<html><head><title>502 Bad Gateway</title></head></html>")
      assert.truthy(err.message:find("HTML", 1, true))
      assert.truthy(err.message:find("502 Bad Gateway", 1, true))
    end)

    it("rejects truncated JSON, arrays, scalars, null and objects without KPI fields", function()
      perr('{"total_calls": 12, "avg_sc')
      perr('[1, 2, 3]')
      perr('42')
      perr('"text"')
      perr('null')
      perr('{"detail": "Not found."}')
      perr('')
    end)

    it("turns an error body sent with a 200 into a protocol error quoting it", function()
      local err = perr('{"status": false, "result": {"code": "RATE_LIMITED", "message": "Slow down"}}')
      assert.truthy(err.message:find("Slow down", 1, true))
    end)

    it("marks numbers JSON does not have (hex either case, a leading +) and keeps JSON's", function()
      for _, tok in ipairs({ "0x1", "0X1F", "-0x2", "+1", "+.5" }) do
        local k = assert(model.parse('{"total_calls": 3, "text": "max", "avg_score": ' .. tok .. "}", "abc"))
        assert.is_true(model.is_invalid(k.avg_score), tok)
        assert.are.equal(3, k.total_calls)
      end
      -- letters and signs elsewhere (prose, exponents) are no hex or plus
      local k = assert(model.parse('{"total_calls": 3, "agent_type": "text 0x 0X +1", "avg_score": 1e+2}', "abc"))
      assert.are.equal(100, k.avg_score)
    end)

    it("marks Infinity and NaN too, when any number of the body is not JSON's", function()
      for _, tok in ipairs({ "Infinity", "-Infinity", "NaN" }) do
        local k = assert(model.parse('{"total_calls": 3, "avg_score": ' .. tok .. "}", "abc"))
        assert.is_true(model.is_invalid(k.avg_score), tok)
      end
      -- one nested: the top-level fields are checked, and are JSON's
      local k = assert(model.parse('{"total_calls": 3, "avg_score": 0.5, "x": {"n": 0x10}}', "abc"))
      assert.are.same({ 3, 0.5 }, { k.total_calls, k.avg_score })
      -- the decoder says which texts need the check
      assert.are.same({ false, true, true }, { select(2, json._decode('{"a": 1e+2, "b": "0x1"}')),
        select(2, json._decode('[+1]')), select(2, json._decode('{"a": [-0X1]}')) })
    end)

    it("searches the text for them where the decoder cannot tell (lua-cjson alone)", function()
      local saved, real_json = {}, _G.json
      for name, m in pairs(package.loaded) do
        if name:match("^kpiwatch%.model") then saved[name] = m end
      end
      for name in pairs(saved) do package.loaded[name] = nil end
      _G.json = setmetatable({}, { __index = function(_, key) if key ~= "_decode" then return real_json[key] end end })
      local ok, plain = pcall(require, "kpiwatch.model")
      _G.json = real_json
      for name in pairs(package.loaded) do
        if name:match("^kpiwatch%.model") then package.loaded[name] = nil end
      end
      for name, m in pairs(saved) do package.loaded[name] = m end
      assert(ok, plain)
      local k = assert(plain.parse('{"total_calls": 3, "text": "max", "avg_score": 0x1}', "abc"))
      assert.is_true(plain.is_invalid(k.avg_score))
      k = assert(plain.parse('{"total_calls": 3, "agent_type": "text 0x 0X +1", "avg_score": 1e+2}', "abc"))
      assert.are.equal(100, k.avg_score)
    end)

    it("accepts every KPI fixture", function()
      for _, id in ipairs(fixtures.kpi_ids()) do
        assert.is_truthy(model.parse(fixtures.get(id).body, id), id)
      end
    end)
  end)

  describe("summary", function()
    local function lines_of(s)
      local out = {}
      for line in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = line end
      return out
    end

    it("prints agent type, counts, scores, the voice fields and the evals, aligned", function()
      local k = load("voice-outbound")
      local s = tostring(k)
      assert.are.equal(s, k:summary())
      assert.truthy(s:find(ids["voice-outbound"], 1, true))
      assert.truthy(s:find("voice, outbound", 1, true))
      for _, needle in ipairs({ "total_calls", "calls_attempted", "connected_calls", "failed_calls",
        "avg_score", "avg_agent_latency", "agent_talk_percentage", "task_completion",
        "friendly 96, neutral 14, rude 2", "15840 s", "(4h 24m 00s)", "2 scenarios, 1 with a graph" }) do
        assert.truthy(s:find(needle, 1, true), needle)
      end
      -- the text agent's fields are meaningless for a voice agent: not shown
      assert.falsy(s:find("avg_total_tokens", 1, true))
      -- aligned: every row's value starts in the same column
      local col
      for _, line in ipairs(lines_of(s)) do
        local name, gap = line:match("^  (%S+)(%s+)%S")
        if name then
          local c = 2 + #name + #gap
          col = col or c
          assert.are.equal(col, c, line)
        end
      end
      assert.is_not_nil(col)
    end)

    it("prints the text fields for a text agent and null for null averages", function()
      local s = tostring(load("text-agent"))
      assert.truthy(s:find("avg_total_tokens", 1, true))
      assert.truthy(s:find("avg_csat_score", 1, true))
      assert.falsy(s:find("avg_user_wpm", 1, true))
      local e = tostring(load("empty"))
      assert.truthy(e:match("avg_score%s+null"))
      assert.truthy(e:match("task_completion%s+null"))
    end)

    it("survives odd values", function()
      local s = tostring(model.new({ agent_type = 7, avg_score = "high\n", total_duration = -5,
        avg_x = 0 / 0, weird = { choices = "no" } }))
      assert.truthy(s:find("avg_score", 1, true))
      assert.truthy(s:find("nan", 1, true))
    end)
  end)

  describe("normalize", function()
    it("gives snake_case keys, integers, nulls and the execution id", function()
      local k = load("voice-outbound")
      local n = model.normalize(k)
      assert.are.equal(120, n.calls_attempted)
      assert.is_nil(n.callsAttempted)
      assert.is_nil(n.scenarioGraphs)
      assert.are.equal("table", type(n.scenario_graphs))
      assert.are.equal(58.2, n.agent_talk_percentage)
      assert.are.equal(ids["voice-outbound"], n.execution_id)
      assert.are.equal("table", type(n.tone))
      assert.are.equal(91.1, n.avg_task_completion)
      for _, name in ipairs(INTEGER_FIELDS) do
        assert.are.equal("integer", math.type(n[name]), name)
      end
      local e = model.normalize(load("empty"))
      assert.are.equal(json.null, e.avg_score)
      local back = json.decode(json.encode(e))
      assert.are.equal(json.null, back.avg_score)
      assert.are.equal(0, back.total_calls)
    end)

    it("pairs() walks the normalized view without nulls", function()
      local seen = {}
      for key, v in pairs(load("empty")) do seen[key] = v end
      assert.are.equal(0, seen.total_calls)
      assert.is_nil(seen.avg_score)
      assert.is_nil(seen.callsAttempted)
      assert.are.equal(ids.empty, seen.execution_id)
    end)
  end)

  it("lists readable names for completion", function()
    local names = load("voice-inbound"):fields()
    local set = {}
    for _, n in ipairs(names) do set[n] = true end
    assert.is_true(set.callsAttempted and set.calls_attempted and set.avg_task_completion and true)
    assert.is_true(set.customer_agent_loop_detection)
  end)
end)
