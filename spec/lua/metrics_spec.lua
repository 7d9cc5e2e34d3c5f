-- Specs for kpiwatch.metrics: escaping of server text in label values,
-- content negotiation, both exposition formats, the poll that keeps the
-- last good values of a failing target, and /metrics answering from the
-- snapshot while a poll waits on a slow API.

local metrics = require "kpiwatch.metrics"
local sandbox = require "kpiwatch.sandbox"
local kpis = require "kpiwatch.kpis"
local http = require "kpiwatch.http"
local task = require "kpiwatch.task"
local util = require "spec.lua.helpers.util"
local fixtures = require "kpiwatch.fixtures"

local OUTBOUND = fixtures.ids["voice-outbound"]
local TEXT = fixtures.ids["text-agent"]

local function lines_of(text)
  local t = {}
  for l in text:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

-- value of the sample `name{...}` whose label string contains `needle`
local function sample(text, name, needle)
  for _, l in ipairs(lines_of(text)) do
    local n, labels, v = l:match("^([%w_:]+){(.-)} (%S+)$")
    if not n then n, v = l:match("^([%w_:]+) (%S+)$") labels = "" end
    local all = true
    for _, nd in ipairs(type(needle) == "table" and needle or { needle }) do
      if not labels:find(nd, 1, true) then all = false end
    end
    if n == name and all then return tonumber(v), l end
  end
  return nil
end

describe("metrics.escape_label", function()
  it("escapes backslash, double quote and newline as the formats define", function()
    assert.are.equal([[a\\b\"c\nd]], metrics.escape_label('a\\b"c\nd'))
  end)

  it("neutralises other control characters and invalid UTF-8 (shared.clean)", function()
    local r = metrics.escape_label("x\27[31my\0z\255\192w")
    assert.is_nil(r:find("[%z\1-\31\127]"))
    assert.truthy(utf8.len(r))
    assert.are.equal("x?[31my?z\239\191\189\239\191\189w", r)
  end)

  it("keeps valid UTF-8 text as it is", function()
    assert.are.equal("café ✓", metrics.escape_label("café ✓"))
  end)
end)

describe("metrics.negotiate", function()
  it("answers OpenMetrics 1.0.0 to Prometheus's Accept header", function()
    local ct, om = metrics.negotiate("application/openmetrics-text;version=1.0.0,application/openmetrics-text;" ..
      "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert.is_true(om)
    assert.are.equal("application/openmetrics-text; version=1.0.0; charset=utf-8", ct)
  end)

  it("answers text 0.0.4 without Accept, to text/plain, and when text has the higher q", function()
    assert.is_false(select(2, metrics.negotiate(nil)))
    assert.is_false(select(2, metrics.negotiate("text/plain;version=0.0.4")))
    assert.is_false(select(2, metrics.negotiate("application/openmetrics-text;q=0.2,text/plain;q=0.9")))
    assert.are.equal("text/plain; version=0.0.4; charset=utf-8", (metrics.negotiate("*/*")))
  end)
end)

describe("metrics.format_number", function()
  it("writes the shortest text that reads back to the same number", function()
    assert.are.equal("0.87", metrics.format_number(0.87))
    assert.are.equal("120", metrics.format_number(120))
    assert.are.equal("96", metrics.format_number(96.0))
    assert.are.equal("0.1", metrics.format_number(0.1))
    assert.are.equal(0.1 + 0.2, tonumber(metrics.format_number(0.1 + 0.2)))
    assert.are.equal("+Inf", metrics.format_number(math.huge))
    assert.are.equal("NaN", metrics.format_number(0 / 0))
  end)
end)

describe("collector:render", function()
  local c
  before_each(function()
    c = metrics.collector()
    c:set_snapshot({
      { kpi = util.kpi("voice-outbound"), execution_id = OUTBOUND, run_test_id = "rt-1",
        run_test = 'weird "name"\nwith\27escape', status = "Completed", completed_at = 1700000000 },
      { kpi = util.kpi("text-agent"), execution_id = TEXT },
      { kpi = util.kpi("empty"), execution_id = fixtures.ids.empty },
    }, true, 1700000100)
    c:observe_request("ok", 0.02)
    c:observe_request("server", 3)
    c:observe_rate_wait(0.5)
    c:count_notifications({ delivered = 2, spooled = 1, lost = 0 })
  end)

  it("exports each numeric KPI and eval of each execution with its labels", function()
    local text = c:render(false)
    assert.are.equal(0.87, sample(text, "futureagi_execution_avg_score", OUTBOUND))
    assert.are.equal(120, sample(text, "futureagi_execution_total_calls", OUTBOUND))
    assert.are.equal(8, sample(text, "futureagi_execution_failed_calls", OUTBOUND))
    assert.are.equal(91.1, sample(text, "futureagi_execution_eval_score", { OUTBOUND, 'eval="task_completion"' }))
    assert.are.equal(96, sample(text, "futureagi_execution_eval_choice_calls",
      { OUTBOUND, 'eval="tone"', 'choice="friendly"' }))
    assert.are.equal(1700000000, sample(text, "futureagi_execution_completed_timestamp_seconds", OUTBOUND))
    local _, line = sample(text, "futureagi_execution_status", OUTBOUND)
    assert.truthy(line:find('status="completed"', 1, true))
    assert.truthy(line:find('run_test_id="rt-1"', 1, true))
    assert.truthy(line:find([[run_test="weird \"name\"\nwith?escape"]], 1, true))
    local _, tline = sample(text, "futureagi_execution_avg_score", TEXT)
    assert.truthy(tline:find('agent_type="text"', 1, true))
    -- milliseconds become seconds in a base-unit name; *_count names are renamed
    assert.are.equal(0.9128, sample(text, "futureagi_execution_avg_chat_latency_seconds", TEXT))
    assert.are.equal(7.4, sample(text, "futureagi_execution_avg_turns", TEXT))
    assert.is_nil(text:find("futureagi_execution_avg_turn_count", 1, true))
    -- a null average is no sample, not a 0
    assert.is_nil(sample(text, "futureagi_execution_avg_score", fixtures.ids.empty))
    assert.are.equal(0, sample(text, "futureagi_execution_total_calls", fixtures.ids.empty))
  end)

  it("exports kpiwatch's own counters and histogram", function()
    local text = c:render(false)
    assert.are.equal(1, sample(text, "kpiwatch_api_requests_total", 'outcome="ok"'))
    assert.are.equal(1, sample(text, "kpiwatch_api_requests_total", 'outcome="server"'))
    assert.are.equal(1, sample(text, "kpiwatch_api_request_duration_seconds_bucket", 'le="0.025"'))
    assert.are.equal(2, sample(text, "kpiwatch_api_request_duration_seconds_bucket", 'le="+Inf"'))
    assert.are.equal(2, sample(text, "kpiwatch_api_request_duration_seconds_count"))
    assert.are.equal(3.02, sample(text, "kpiwatch_api_request_duration_seconds_sum"))
    assert.are.equal(1, sample(text, "kpiwatch_rate_limit_waits_total"))
    assert.are.equal(0.5, sample(text, "kpiwatch_rate_limit_wait_seconds_total"))
    assert.are.equal(2, sample(text, "kpiwatch_notifications_total", 'status="delivered"'))
    assert.are.equal(1, sample(text, "kpiwatch_notifications_total", 'status="spooled"'))
    assert.are.equal(1700000100, sample(text, "kpiwatch_last_successful_poll_timestamp_seconds"))
  end)

  it("names counter families per format and ends OpenMetrics with # EOF", function()
    local prom, om = c:render(false), c:render(true)
    assert.truthy(prom:find("\n# TYPE kpiwatch_api_requests_total counter\n", 1, true))
    assert.truthy(om:find("\n# TYPE kpiwatch_api_requests counter\n", 1, true))
    assert.truthy(om:find("\n# UNIT kpiwatch_api_request_duration_seconds seconds\n", 1, true))
    assert.is_nil(prom:find("# UNIT", 1, true))
    assert.is_nil(prom:find("# EOF", 1, true))
    assert.are.equal("\n# EOF\n", om:sub(-7))
    -- OpenMetrics escapes a double quote in HELP; every line is a comment or a sample
    for _, l in ipairs(lines_of(om)) do
      assert.truthy(l:match("^# [A-Z]+ ") or l == "# EOF" or l:match("^[%w_:]+[{ ]"), l)
    end
  end)
end)

describe("metrics.poll and metrics.serve", function()
  local sb, c, srv
  setup(function()
    sb = sandbox.start {}
    kpis.configure { base_url = sb.url, api_key = sb.api_key, secret_key = sb.secret_key, retries = 0 }
  end)
  teardown(function()
    kpis._observer = nil
    if srv then srv:close() end
    sb:close()
    kpis._reset()
  end)

  it("keeps the last good values of a target whose poll fails, and counts the failure", function()
    c = metrics.collector()
    kpis._observer = c:observer()
    local targets = { { id = OUTBOUND }, { id = TEXT } }
    assert.is_true((metrics.poll(c, targets)))
    sb:set_fault(TEXT, "500")
    local ok, failures = metrics.poll(c, targets)
    assert.is_false(ok)
    assert.are.equal(1, #failures)
    assert.are.equal("server", failures[1].error.kind)
    local text = c:render(false)
    assert.are.equal(0.84, sample(text, "futureagi_execution_avg_score", TEXT))
    assert.are.equal(1, sample(text, "kpiwatch_polls_total", 'result="error"'))
    -- per id target and poll: the execution's status (the KPI fixtures
    -- answer completed), then its KPIs
    assert.are.equal(2, sample(text, "kpiwatch_api_requests_total", 'outcome="server"'))
    assert.is_nil(sample(text, "kpiwatch_api_requests_total", 'outcome="not_found"'))
    assert.are.equal(6, sample(text, "kpiwatch_api_requests_total", 'outcome="ok"'))
    assert.are.equal(8, sample(text, "kpiwatch_api_request_duration_seconds_count"))
    sb:set_fault(TEXT, nil)
  end)

  it("exports the latest completed execution of a run test, by id or by name", function()
    local runs = fixtures.run_test_ids
    local c2 = metrics.collector()
    assert.is_true((metrics.poll(c2, { { run_test = runs.nightly }, { name = "voice-trend" } })))
    local text = c2:render(false)
    -- by id too, the run_test label carries the name (it was empty)
    for _, rt in ipairs({ { runs.nightly, "nightly" }, { runs["voice-trend"], "voice-trend" } }) do
      local latest = kpis.executions(rt[1], { status = "completed", limit = 1 })[1]
      local k = kpis.get(latest.id)
      local needle = { 'run_test_id="' .. rt[1] .. '"', 'execution_id="' .. latest.id .. '"' }
      assert.are.equal(k.total_calls, sample(text, "futureagi_execution_total_calls", needle))
      local _, line = sample(text, "futureagi_execution_total_calls", needle)
      assert.truthy(line:find('run_test="' .. rt[2] .. '"', 1, true), line)
      local y, mo, d, h, mi, sec = latest.start_time:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
      local start = os.time { year = y, month = mo, day = d, hour = h, min = mi, sec = sec, isdst = false }
        - os.time { year = 1970, month = 1, day = 1, hour = 0, isdst = false }
      assert.are.equal(start + latest.duration,
        sample(text, "futureagi_execution_completed_timestamp_seconds", needle))
      local _, sline = sample(text, "futureagi_execution_status", needle)
      assert.truthy(sline:find('status="completed"', 1, true))
    end
    -- one execution per run test: bounded whatever the history's length
    local n = 0
    for _ in text:gmatch("futureagi_execution_total_calls{[^\n]*") do n = n + 1 end
    assert.are.equal(2, n)
    -- an unknown run test name is a failed target
    local ok, failures = metrics.poll(c2, { { name = "no-such-run-test" } })
    assert.is_false(ok)
    assert.are.equal("not_found", failures[1].error.kind)
  end)

  it("answers /metrics from the snapshot while a poll waits on the API", function()
    srv = metrics.serve(c, "127.0.0.1:0")
    sb:set_fault(OUTBOUND, "delay:3")
    local poller = task.spawn(metrics.poll, c, { { id = OUTBOUND } })
    task.sleep(0.2)
    local t0 = task.now()
    local r = http.request { url = srv.url .. "/metrics", timeout = 2,
      headers = { accept = "application/openmetrics-text; version=1.0.0" } }
    assert.are.equal(200, r.status)
    assert.is_true(task.now() - t0 < 1.5)
    assert.truthy(r.headers["content-type"]:find("application/openmetrics-text", 1, true))
    assert.are.equal(0.87, sample(r.body, "futureagi_execution_avg_score", OUTBOUND))
    task.cancel(poller)
    sb:set_fault(OUTBOUND, nil)
    local nf = http.request { url = srv.url .. "/nope", timeout = 2 }
    assert.are.equal(404, nf.status)
  end)

  it("alert.watch{metrics = ...} serves the watched executions and its notifications", function()
    local alert = require "kpiwatch.alert"
    local http_server = require "kpiwatch.http_server"
    local probe = http_server.serve { handler = function() end }
    local port = probe.port
    probe:close()
    local reg = alert.registry()
    reg:configure { spool = util.tmpdir() .. "/spool" }
    reg:rule { name = "score-floor", metric = "avg_score", below = 0.8 }
    local sent = 0
    reg:hook("count", function() sent = sent + 1 end)
    local scraped
    local s = reg:watch {
      ids = { fixtures.ids.failing, OUTBOUND }, every = 0.05, max_cycles = 2,
      metrics = "127.0.0.1:" .. port,
      on_cycle = function(_, n)
        if n == 2 then scraped = http.request { url = "http://127.0.0.1:" .. port .. "/metrics", timeout = 5 }.body end
      end,
    }
    assert.are.equal(1, s.delivered)
    assert.are.equal(1, sent)
    assert.are.equal(0.62, sample(scraped, "futureagi_execution_avg_score", fixtures.ids.failing))
    assert.are.equal(0.87, sample(scraped, "futureagi_execution_avg_score", OUTBOUND))
    assert.are.equal(1, sample(scraped, "kpiwatch_notifications_total", 'status="delivered"'))
    assert.are.equal(4, sample(scraped, "kpiwatch_api_requests_total", 'outcome="ok"'))
    assert.are.equal(2, sample(scraped, "kpiwatch_polls_total", 'result="ok"'))
    -- the server is gone with the watch, and so is the request observer
    assert.is_nil(kpis._observer)
    local ok, r = pcall(http.request, { url = "http://127.0.0.1:" .. port .. "/metrics", timeout = 2 })
    -- (a connection curl kept alive may still get the closing server's 503)
    assert.is_true(not ok or r.status == 503)
    assert.has_error(function() reg:watch { ids = { OUTBOUND }, metrics = "nowhere" } end)
  end)

  it("rejects a listen address that is not ADDR:PORT", function()
    assert.is_nil((metrics.parse_listen("localhost")))
    assert.is_nil((metrics.parse_listen("1.2.3.4:99999")))
    assert.are.same({ "::1", 9 }, { metrics.parse_listen("[::1]:9") })
    assert.has_error(function() metrics.serve(c, "nope") end)
  end)
end)
