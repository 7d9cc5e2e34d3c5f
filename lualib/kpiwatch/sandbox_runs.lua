-- kpiwatch.sandbox_runs: the run tests, executions and calls of the
-- sandbox (kpiwatch.sandbox routes these paths here), in the shapes of
-- ../shared/api/FIELD-NOTES.md, "Executions, run tests and calls":
--
--   GET  /simulate/run-tests/?search=&limit=&page=
--   GET  /simulate/run-tests/get-id-by-name/{name}/
--   GET  /simulate/run-tests/{id}/executions/?status=&limit=&page=&search=
--   POST /simulate/run-tests/{id}/execute/
--   GET  /simulate/test-executions/{id}/?page=&limit=
--   POST /simulate/test-executions/{id}/cancel/
--   and the KPIs body of each execution (kpis_body), partial while in flight.
--
-- Executions started here (and the one of a fixture with start_running)
-- live on the sandbox's clock: pending, running, evaluating, then
-- completed (or failed, or cancelled), PHASES seconds each divided by the
-- speed option. Everything else is drawn from the fixtures' seeds, so two
-- sandboxes serve the same calls and scores.

local M = {}

local json = require "kpiwatch.json"

local format, floor = string.format, math.floor

--- Seconds of each phase at speed 1.
M.PHASES = { pending = 1, running = 4, evaluating = 2, cancelling = 0.5 }

local TERMINAL = { completed = true, failed = true, cancelled = true }

local function round_to(x, digits)
  local m = 10 ^ digits
  local v = floor(x * m + 0.5) / m
  return v
end

local iso = require("kpiwatch.time").rfc3339

local function title(s)
  return (s:gsub("^%l", string.upper))
end

local function url_unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- ---- calls -------------------------------------------------------------------------

local ENDED = { completed = "customer-ended-call", failed = "customer-did-not-answer" }

-- The calls of an execution from its spec, drawn from its seed.
local function draw_calls(rt, spec, seed, num, new_rng)
  local rng = new_rng(seed)
  local n = spec.calls
  local calls = {}
  for i = 1, n do
    local failed = rng() < (spec.fail or 0)
    local z = (rng() + rng() + rng() + rng() - 2) * math.sqrt(3)
    local score = round_to(math.min(1, math.max(0, spec.mean + spec.sd * z)), 2)
    calls[i] = {
      failed = failed,
      score = not failed and score or nil,
      latency = 600 + floor(rng() * 600),
      duration = 40 + floor(rng() * 80),
      interruptions = floor(rng() * 3),
    }
  end
  if spec.good_first then
    table.sort(calls, function(a, b)
      if a.failed ~= b.failed then return b.failed end
      return (a.score or 0) > (b.score or 0)
    end)
  end
  for i, c in ipairs(calls) do
    local s = rt.scenarios[(i - 1) % #rt.scenarios + 1]
    c.id = format("ca11%04x-0000-4000-8000-%012x", i, num)
    c.scenario = s
  end
  return calls
end

-- ---- the state ----------------------------------------------------------------------

--- The run tests' state of one sandbox (kpiwatch.sandbox keeps it as sb.runs):
--- route(req), kpis_body(id), start(rt [, ncalls [, fixed]]), set_speed(x), speed(),
--- status(id), executions(run_test), scores(id), has(id), started (runs
--- started by POST execute).
---@param opts {speed?: number, new_rng: fun(seed: integer): fun(): number, fixtures?: table}
---@return table runs
function M.new(opts)
  local task = require "kpiwatch.task"
  local fixtures = opts.fixtures or require "kpiwatch.fixtures"
  local new_rng = opts.new_rng
  local st = { started = 0 }
  local speed = opts.speed or 1
  local base, tbase = 0, task.now()

  -- The sandbox's clock: seconds at speed 1.
  local function clock()
    return base + (task.now() - tbase) * speed
  end
  function st.set_speed(s)
    base, tbase, speed = clock(), task.now(), s
  end
  function st.speed() return speed end

  local execs = {}   -- id -> execution
  local lists = {}   -- run test id -> executions, newest first
  local live_n = 0

  local function add(rt, e)
    execs[e.id] = e
    local l = lists[rt.id]
    table.insert(l, 1, e)
  end

  for _, rt in ipairs(fixtures.run_tests()) do
    lists[rt.id] = {}
    for i, h in ipairs(rt.history) do
      add(rt, { id = h.id, rt = rt, spec = h, num = rt.index * 4096 + i, seed = h.seed, past = true })
    end
  end

  local function calls_of(e)
    if not e.calls then e.calls = draw_calls(e.rt, e.spec, e.seed, e.num, new_rng) end
    return e.calls
  end

  -- start(rt [, ncalls [, fixed]]) -> a new execution of rt, pending now.
  -- A fixture's run (fixed: started with the sandbox) has a counted id, the
  -- same in every sandbox like the other fixtures; a run started by POST
  -- gets random execution and call ids, unique across sandbox processes as
  -- the API's are: counted, two sandboxes (or one restarted) handed out the
  -- same id for different runs, and a history file mixed them up.
  local function start(rt, ncalls, fixed)
    live_n = live_n + 1
    local spec = {}
    for k, v in pairs(rt.next_run) do spec[k] = v end
    spec.calls = ncalls or spec.calls
    local shared = require "kpiwatch.shared"
    local e = {
      id = fixed and format("c0ffee00-0000-4000-a000-%012x", live_n) or shared.uuid4(), rt = rt, spec = spec,
      num = fixed and 0x100000 + live_n or tonumber(shared.random_hex(6), 16),
      seed = rt.index * 7919 + live_n, created = clock(), wall_created = os.time(),
    }
    add(rt, e)
    return e
  end
  st.start = start

  for _, rt in ipairs(fixtures.run_tests()) do
    if rt.start_running then start(rt, nil, true) end
  end

  -- snap(e) -> {status=, done=, evaluated=, visible=, error_reason=, start=, duration=}
  -- done: calls whose conversation is over; evaluated: of those, calls
  -- whose evals are final; visible: calls the execution has.
  local function snap_at(e, t)
    local n = e.spec.calls
    local P, R, E = M.PHASES.pending, M.PHASES.running, M.PHASES.evaluating
    if e.past then
      local s = e.spec.status or "completed"
      if s == "completed" then
        return { status = s, done = n, evaluated = n, visible = n, start = e.spec.start }
      end
      local k = floor((e.spec.fail_at or 0) * n)
      return { status = s, done = k, evaluated = k, visible = n, start = e.spec.start,
        error_reason = e.spec.error_reason }
    end
    local age = t - e.created
    local start_epoch = e.wall_created + P / speed
    if age < P then return { status = "pending", done = 0, evaluated = 0, visible = 0 } end
    local fail_at = e.spec.outcome == "failed" and (e.spec.fail_at or 0)
    if fail_at and age >= P + R * fail_at then
      local k = floor(fail_at * n)
      return { status = "failed", done = k, evaluated = k, visible = n, start = start_epoch,
        error_reason = e.spec.error_reason, ended = P + R * fail_at }
    end
    if age < P + R then
      local p = (age - P) / R
      local k = floor(p * n)
      return { status = "running", done = k, evaluated = k, visible = n, start = start_epoch }
    end
    if age < P + R + E then
      return { status = "evaluating", done = n, evaluated = floor((age - P - R) / E * n), visible = n,
        start = start_epoch }
    end
    return { status = "completed", done = n, evaluated = n, visible = n, start = start_epoch, ended = P + R + E }
  end

  local function snap(e)
    local t = clock()
    if e.cancel_at then
      local s = snap_at(e, e.cancel_at)
      if not TERMINAL[s.status] then
        s.status = (t - e.cancel_at < M.PHASES.cancelling) and "cancelling" or "cancelled"
        s.ended = e.cancel_at - e.created
      end
      return s
    end
    return snap_at(e, t)
  end

  local function duration(e, s)
    if e.past then
      local d = 0
      local calls = calls_of(e)
      for i = 1, s.done do d = d + calls[i].duration end
      return d
    end
    if not s.start then return 0 end
    local upto = s.ended or (clock() - e.created)
    return floor(math.max(0, upto - M.PHASES.pending) / speed)
  end

  -- The calls as they are at snapshot s: status, score when evaluated.
  local function call_views(e, s)
    local calls = calls_of(e)
    local out = {}
    for i = 1, s.visible do
      local c = calls[i]
      local status
      if i <= s.done then
        if c.failed then status = "failed"
        elseif i <= s.evaluated then status = "completed"
        else status = "analyzing" end
      elseif s.status == "running" then
        status = (i == s.done + 1) and "ongoing" or "queued"
      else
        status = "cancelled"
      end
      out[i] = { c = c, status = status, scored = status == "completed" }
    end
    return out
  end

  -- Each eval's pass/fail from the call's score.
  local EVAL_PASS = { task_completion = 0.7, is_polite = 0.5 }
  local function eval_id(rt, j)
    return format("e7a10000-0000-4000-8000-%012x", rt.index * 16 + j)
  end

  local function stats_of(e, s)
    local views = call_views(e, s)
    local r = { total = #views, attempted = 0, connected = 0, failed = 0, score_sum = 0, scored = 0,
      latency_sum = 0, dur = 0, interruptions = 0, passes = {} }
    for _, name in ipairs(e.rt.evals) do r.passes[name] = 0 end
    for _, v in ipairs(views) do
      local c = v.c
      if v.status ~= "queued" and v.status ~= "cancelled" then r.attempted = r.attempted + 1 end
      if v.status == "failed" then r.failed = r.failed + 1 end
      if v.status == "completed" or v.status == "analyzing" then
        r.connected = r.connected + 1
        r.latency_sum = r.latency_sum + c.latency
        r.dur = r.dur + c.duration
        r.interruptions = r.interruptions + c.interruptions
      end
      if v.scored then
        r.scored = r.scored + 1
        r.score_sum = r.score_sum + c.score
        for _, name in ipairs(e.rt.evals) do
          if c.score >= (EVAL_PASS[name] or 0.5) then r.passes[name] = r.passes[name] + 1 end
        end
      end
    end
    return r, views
  end

  -- ---- bodies -------------------------------------------------------------------------

  -- kpis_body(id) -> JSON text of the execution's KPIs, or nil. As the
  -- server's current code: snake_case, averages over no call are 0.
  function st.kpis_body(id)
    local e = execs[id]
    if not e then return nil end
    local s = snap(e)
    local r = stats_of(e, s)
    local function avg(sum, n, d) return n > 0 and round_to(sum / n, d) or 0 end
    local graphs = {}
    for _, sc in ipairs(e.rt.scenarios) do graphs[sc.id] = {} end
    local b = {
      total_calls = r.total, calls_attempted = r.attempted, connected_calls = r.connected,
      calls_connected_percentage = avg(100 * r.connected, r.attempted, 2),
      failed_calls = r.failed, total_duration = r.dur, agent_type = e.rt.agent_type,
      is_inbound = false, scenario_graphs = graphs,
      avg_score = avg(r.score_sum, r.scored, 1),
      avg_response = avg(r.latency_sum * 1.4, r.connected, 0),
      avg_agent_latency = avg(r.latency_sum, r.connected, 0),
      avg_user_interruption_count = avg(r.interruptions, r.connected, 1),
      avg_user_interruption_rate = avg(r.interruptions * 0.1, r.connected, 2),
      avg_user_wpm = r.connected > 0 and 150.0 or 0, avg_bot_wpm = r.connected > 0 and 160.0 or 0,
      avg_talk_ratio = r.connected > 0 and 0.55 or 0,
      avg_ai_interruption_count = avg(r.interruptions * 0.3, r.connected, 1),
      avg_ai_interruption_rate = avg(r.interruptions * 0.03, r.connected, 2),
      avg_stop_time_after_interruption = r.connected > 0 and 400 or 0,
      agent_talk_percentage = r.connected > 0 and 55.0 or 0,
      customer_talk_percentage = r.connected > 0 and 45.0 or 0,
      avg_total_tokens = 0, avg_input_tokens = 0, avg_output_tokens = 0, avg_chat_latency_ms = 0,
      avg_turn_count = 0, avg_csat_score = 0,
    }
    for _, name in ipairs(e.rt.evals) do
      b["avg_" .. name] = avg(100 * r.passes[name], r.scored, 1)
    end
    return json.encode(b)
  end

  local function list_item(e)
    local s = snap(e)
    local r = stats_of(e, s)
    local names = {}
    for i, sc in ipairs(e.rt.scenarios) do names[i] = sc.name end
    return {
      id = e.id, status = title(s.status), scenarios = names,
      start_time = s.start and iso(s.start) or json.null,
      duration = duration(e, s), error_reason = s.error_reason or json.null,
      success_rate = r.total > 0 and round_to(100 * r.connected / r.total, 1) or 0,
      avg_response_time = r.connected > 0 and round_to(r.latency_sum * 1.4 / r.connected, 0) or 0,
      calls = r.total, calls_attempted = r.attempted, connected_calls = r.connected,
      calls_connected_percentage = r.attempted > 0 and round_to(100 * r.connected / r.attempted, 2) or 0,
      agent_version = e.rt.agent_version, agent_definition = e.rt.agent_definition,
      agent_type = e.rt.agent_type:upper(), source_type = "agent_definition",
    }
  end

  local function call_item(e, v)
    local c = v.c
    local evals = {}
    if v.status == "completed" or v.status == "analyzing" then
      for j, name in ipairs(e.rt.evals) do
        local done = v.scored
        local pass = done and c.score >= (EVAL_PASS[name] or 0.5)
        evals[eval_id(e.rt, j)] = {
          name = name, type = "pass_fail",
          value = done and (pass and "Passed" or "Failed") or json.null,
          reason = done and (pass and "The agent met the criterion." or "The agent missed the criterion.") or json.null,
          error = json.null, status = done and "completed" or "pending", skipped = false,
        }
      end
    end
    local over = v.status == "completed" or v.status == "analyzing" or v.status == "failed"
    local connected = v.status == "completed" or v.status == "analyzing"
    return {
      id = c.id, status = v.status, scenario = c.scenario.name, scenario_id = c.scenario.id,
      overall_score = v.scored and c.score or json.null,
      transcript = connected and {
        { role = "assistant", content = "Hello, this is the clinic calling about your appointment." },
        { role = "user", content = "Yes, speaking." },
      } or json.array(),
      ended_reason = over and ENDED[c.failed and "failed" or "completed"] or json.null,
      call_summary = connected and ("The agent walked the customer through " .. c.scenario.name:lower() .. ".")
        or json.null,
      duration = connected and c.duration or 0,
      avg_agent_latency = connected and c.latency or json.null,
      user_interruption_count = connected and c.interruptions or json.null,
      ai_interruption_count = connected and 0 or json.null,
      total_tokens = json.null, input_tokens = json.null, output_tokens = json.null,
      csat_score = json.null,
      eval_outputs = evals,
    }
  end

  -- ---- routes -------------------------------------------------------------------------

  local function err_body(code, detail, typ)
    return json.encode { status = false, type = typ or "client_error", code = code, detail = detail }
  end
  local JSON = { ["content-type"] = "application/json" }
  local function bad(detail) return 400, JSON, err_body("invalid", detail) end
  local function not_found(detail) return 404, JSON, err_body("not_found", detail) end

  local function positive_int(v, name, default)
    if v == nil then return default end
    local n = math.tointeger(tonumber(v))
    if not n or n < 1 or not tostring(v):match("^%d+$") then
      return nil, name .. ": a positive integer is required."
    end
    return n
  end

  -- One page of list (an array) as the API's paginator does; nil, status,
  -- headers, body when the page is out of range or a field is malformed.
  local function paginate(req, list, default_limit, keep)
    local p = req.params or {}
    local limit, lerr = positive_int(p.limit, "limit", default_limit)
    if not limit then return nil, bad(lerr) end
    if limit > 1000 then limit = 1000 end
    local page, perr = positive_int(p.page, "page", 1)
    if not page then return nil, bad(perr) end
    local count = #list
    local pages = math.max(1, (count + limit - 1) // limit)
    if page > pages then return nil, not_found("Invalid page.") end
    local results = {}
    for i = (page - 1) * limit + 1, math.min(count, page * limit) do results[#results + 1] = list[i] end
    local host = req.headers.host or st.host_port
    local function link(n)
      local q = { "limit=" .. limit, "page=" .. n }
      for _, k in ipairs(keep or {}) do
        if p[k] and p[k] ~= "" then
          q[#q + 1] = k .. "=" .. p[k]:gsub("[^%w%-_.~]", function(ch) return format("%%%02X", ch:byte()) end)
        end
      end
      return "http://" .. host .. req.path .. "?" .. table.concat(q, "&")
    end
    return {
      count = count, next = page < pages and link(page + 1) or json.null,
      previous = page > 1 and link(page - 1) or json.null,
      results = #results > 0 and results or json.array(), total_pages = pages, current_page = page,
    }
  end

  local function run_test_item(rt)
    local l = lists[rt.id]
    local last
    for _, e in ipairs(l) do
      local s = snap(e)
      if s.start then last = s.start break end
    end
    return { id = rt.id, name = rt.name, description = rt.description,
      agent_type = rt.agent_type, last_run_at = last and iso(last) or json.null,
      scenarios_count = #rt.scenarios, executions_count = #l }
  end

  local function encode(page) return 200, JSON, json.encode(page) end

  local function list_run_tests(req)
    local search = ((req.params or {}).search or ""):lower()
    local out = {}
    for _, rt in ipairs(fixtures.run_tests()) do
      if search == "" or rt.name:lower():find(search, 1, true) then out[#out + 1] = run_test_item(rt) end
    end
    local page, s, h, b = paginate(req, out, 10, { "search" })
    if not page then return s, h, b end
    return encode(page)
  end

  local function list_executions(req, rt)
    local p = req.params or {}
    local want = p.status and p.status ~= "" and p.status:lower()
    local search = p.search and p.search ~= "" and p.search:lower()
    local out = {}
    for _, e in ipairs(lists[rt.id]) do
      local item = list_item(e)
      if (not want or item.status:lower() == want) and (not search or e.id:find(search, 1, true)) then
        out[#out + 1] = item
      end
    end
    local page, s, h, b = paginate(req, out, 10, { "status", "search" })
    if not page then return s, h, b end
    return encode(page)
  end

  local DETAIL_QUERY = { page = true, limit = true, search = true, filters = true, row_groups = true,
    group_keys = true, fault = true }

  local function detail(req, e)
    local unknown = {}
    for k in pairs(req.params or {}) do
      if not DETAIL_QUERY[k] then unknown[#unknown + 1] = tostring(k) end
    end
    if #unknown > 0 then
      table.sort(unknown)
      return bad("Unknown query parameter(s): " .. table.concat(unknown, ", "))
    end
    local s = snap(e)
    local views = call_views(e, s)
    local items = {}
    for i, v in ipairs(views) do items[i] = call_item(e, v) end
    local page, st_, h, b = paginate(req, items, 30, { "search" })
    if not page then return st_, h, b end
    page.status = s.status
    page.provider = e.rt.provider
    page.agent_type = e.rt.agent_type
    page.column_order = { "scenario", "status", "overall_score", "ended_reason", "duration" }
    page.error_messages = s.error_reason and { s.error_reason } or json.array()
    return encode(page)
  end

  local EXECUTE_FIELDS = { scenario_ids = true, simulator_id = true, select_all = true }

  local function execute(req, rt)
    local body = {}
    if req.body and req.body:match("%S") then
      local ok, b = pcall(json.decode, req.body)
      if not ok or type(b) ~= "table" or (rawlen(b) > 0) then return bad("JSON parse error: expected an object.") end
      body = b
    end
    local unknown = {}
    for k in pairs(body) do
      if not EXECUTE_FIELDS[k] then unknown[#unknown + 1] = tostring(k) end
    end
    if #unknown > 0 then
      table.sort(unknown)
      return bad("Unknown field(s): " .. table.concat(unknown, ", "))
    end
    local chosen = {}
    local ids = body.scenario_ids
    if ids ~= nil and ids ~= json.null then
      if type(ids) ~= "table" then return bad("scenario_ids: expected a list.") end
      local known = {}
      for _, sc in ipairs(rt.scenarios) do known[sc.id] = sc end
      for _, sid in ipairs(ids) do
        if type(sid) ~= "string" or not known[sid:lower()] then
          return bad("scenario_ids: not a scenario of this run test: " .. require("kpiwatch.shared").clean(sid, 60))
        end
        chosen[#chosen + 1] = known[sid:lower()]
      end
    end
    if body.simulator_id ~= nil and body.simulator_id ~= json.null and type(body.simulator_id) ~= "string" then
      return bad("simulator_id: expected a string.")
    end
    if body.select_all ~= nil and type(body.select_all) ~= "boolean" then
      return bad("select_all: expected a boolean.")
    end
    if #chosen == 0 then chosen = rt.scenarios end
    local ncalls = math.max(1, math.ceil(rt.next_run.calls * #chosen / #rt.scenarios))
    local e = start(rt, ncalls)
    st.started = st.started + 1
    local sids = {}
    for i, sc in ipairs(chosen) do sids[i] = sc.id end
    return encode {
      message = "Test execution started successfully", execution_id = e.id, run_test_id = rt.id,
      status = "started", total_scenarios = #chosen, total_calls = ncalls, scenario_ids = sids,
    }
  end

  local function cancel(_, e)
    local s = snap(e)
    if TERMINAL[s.status] or s.status == "cancelling" then
      return bad("Test execution is " .. s.status .. " and cannot be cancelled.")
    end
    e.cancel_at = clock()
    return encode { message = "Test execution cancelling", execution_id = e.id, status = "cancelling" }
  end

  -- route(req) -> nil when the path is not one of these routes, else
  -- {key=, page_key=, methods=, handle=function(req) -> status, headers, body}.
  -- key names the run test or execution for fault injection and counts.
  function st.route(req)
    local path = req.path
    local page = (req.params or {}).page or "1"
    local function found(key, methods, handle, paged)
      return { key = key, methods = methods, handle = handle,
        page_key = paged and (key .. "/page/" .. tostring(page)) or nil }
    end
    if path == "/simulate/run-tests/" then
      return found("run-tests", "GET", list_run_tests, true)
    end
    local name = path:match("^/simulate/run%-tests/get%-id%-by%-name/([^/]+)/$")
    if name then
      name = url_unescape(name)
      return found(name:lower(), "GET", function()
        local rt = fixtures.run_test(name)
        if not rt or rt.name ~= name then return not_found("Run test not found.") end
        return encode { status = true, result = { run_test_id = rt.id } }
      end)
    end
    local rid, what = path:match("^/simulate/run%-tests/([^/]+)/(%a+)/$")
    if rid and (what == "executions" or what == "execute") then
      rid = rid:lower()
      local rt = lists[rid] and fixtures.run_test(rid)
      local function handle(r)
        if not rt then return not_found("Run test not found.") end
        if what == "execute" then return execute(r, rt) end
        return list_executions(r, rt)
      end
      return found(rid, what == "execute" and "POST" or "GET", handle, what == "executions")
    end
    local eid, rest = path:match("^/simulate/test%-executions/([^/]+)/(.-)$")
    if eid and (rest == "" or rest == "cancel/") then
      eid = eid:lower()
      local e = execs[eid]
      local function handle(r)
        if not e and rest == "" and st.static_detail then
          -- a KPI fixture: an execution that completed long ago, no calls
          local body = st.static_detail(eid)
          if body then return encode(body) end
        end
        if not e then return not_found("Test execution not found.") end
        if rest == "cancel/" then return cancel(r, e) end
        return detail(r, e)
      end
      return found(eid, rest == "" and "GET" or "POST", handle, rest == "")
    end
    return nil
  end

  -- ---- for tests and scripts --------------------------------------------------------

  --- The execution's status now (lowercase), or nil for an unknown id.
  function st.status(id)
    local e = execs[id:lower()]
    return e and snap(e).status
  end

  --- The ids of a run test's executions (id or name), newest first.
  function st.executions(key)
    local rt = fixtures.run_test(key)
    local out = {}
    for i, e in ipairs(rt and lists[rt.id] or {}) do out[i] = e.id end
    return out
  end

  --- The per-call overall_score values the detail endpoint shows now
  --- (calls without a score left out), in call order.
  function st.scores(id)
    local e = execs[id:lower()]
    if not e then return nil end
    local out = {}
    for _, v in ipairs(call_views(e, snap(e))) do
      if v.scored then out[#out + 1] = v.c.score end
    end
    return out
  end

  function st.has(id) return execs[id:lower()] ~= nil end

  return st
end

return M
