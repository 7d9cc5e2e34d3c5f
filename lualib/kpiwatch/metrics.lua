-- kpiwatch.metrics: KPIs and kpiwatch's own counters as Prometheus metrics.
--
--   local c = metrics.collector()       counters + the last snapshot
--   c:set_snapshot(entries, now)        what /metrics shows until the next poll
--   c:render(openmetrics)               -> exposition text
--   metrics.serve(c, "127.0.0.1:9464")  -> http server answering GET /metrics
--   metrics.poll(c, targets)            one poll: fetch, then set_snapshot
--
-- The exposition is OpenMetrics 1.0.0 when the scraper asks for it (Accept:
-- application/openmetrics-text), else the Prometheus text format 0.0.4.
-- /metrics renders the last snapshot and the counters: it never waits on
-- the API. Cardinality stays bounded: one execution per target (the latest
-- completed one of a run test, or the execution named by id).
-- Metric names and labels: doc/monitoring.md.

local model = require "kpiwatch.model"
local errors = require "kpiwatch.errors"

local M = {}

local format, concat, sort = string.format, table.concat, table.sort
local math_type = math.type

M.OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
M.PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

-- Upper bounds (seconds) of the API request latency histogram.
M.LATENCY_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }

-- ---- text of the exposition formats ------------------------------------------------

-- Label values carry server text: shared.clean, the one escape of server
-- text, makes it valid UTF-8 (both formats require it) without control
-- characters.
local shared_clean = require("kpiwatch.shared").clean
-- Newlines stay: the formats escape them as \n.
local function clean(s)
  return (s:gsub("[^\n]+", shared_clean))
end

---Escapes a label value for both exposition formats: backslash, double
---quote and newline escaped as the formats define, other control
---characters and invalid UTF-8 neutralised by `shared.clean`.
---@param v any the value (converted with tostring)
---@return string
function M.escape_label(v)
  local s = clean(tostring(v))
  return (s:gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- HELP text: OpenMetrics escapes the double quote too, 0.0.4 does not.
local function escape_help(s, om)
  s = clean(s)
  if om then return (s:gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" })) end
  return (s:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

---Formats a sample value: integers as such, floats with the fewest digits
---that read back to the same number, NaN and infinities as the formats spell them.
---@param n number
---@return string
function M.format_number(n)
  if n ~= n then return "NaN" end
  if n == math.huge then return "+Inf" end
  if n == -math.huge then return "-Inf" end
  if math_type(n) == "integer" then return format("%d", n) end
  if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return format("%d", math.tointeger(n)) end
  for _, f in ipairs({ "%.15g", "%.16g", "%.17g" }) do
    local s = format(f, n)
    if tonumber(s) == n then return s end
  end
  return format("%.17g", n)
end

---Chooses the exposition format from an Accept header (q-values honoured;
---OpenMetrics wins a tie, as Prometheus lists it first).
---@param accept string|nil the request's Accept header
---@return string content_type
---@return boolean openmetrics
function M.negotiate(accept)
  if type(accept) ~= "string" then return M.PROMETHEUS, false end
  local best_om, best_text = -1, -1
  for part in accept:gmatch("[^,]+") do
    local media = part:match("^%s*([^;%s]+)"):lower()
    local q = tonumber(part:match(";%s*[qQ]%s*=%s*([%d.]+)")) or 1
    if media == "application/openmetrics-text" then
      if q > best_om then best_om = q end
    elseif media == "text/plain" or media == "*/*" or media == "text/*" then
      if q > best_text then best_text = q end
    end
  end
  if best_om > 0 and best_om >= best_text then return M.OPENMETRICS, true end
  return M.PROMETHEUS, false
end

-- ---- families ----------------------------------------------------------------------------

-- family: {name=, type=, help=, unit=, samples = {{suffix=, labels={{k,v}...}, value=}}}
local function render_family(out, f, om)
  if #f.samples == 0 and not f.always then return end
  local typename = f.name
  if f.type == "counter" and not om then typename = f.name .. "_total" end
  out[#out + 1] = "# HELP " .. typename .. " " .. escape_help(f.help, om)
  out[#out + 1] = "# TYPE " .. typename .. " " .. f.type
  if om and f.unit then out[#out + 1] = "# UNIT " .. f.name .. " " .. f.unit end
  for _, s in ipairs(f.samples) do
    local name = f.name .. (s.suffix or "")
    local line
    if s.labels and #s.labels > 0 then
      local parts = {}
      for i, kv in ipairs(s.labels) do parts[i] = kv[1] .. '="' .. M.escape_label(kv[2]) .. '"' end
      line = name .. "{" .. concat(parts, ",") .. "} " .. M.format_number(s.value)
    else
      line = name .. " " .. M.format_number(s.value)
    end
    out[#out + 1] = line
  end
end

local function family(name, typ, help, unit)
  return { name = name, type = typ, help = help, unit = unit, samples = {} }
end

local function sample(f, value, labels, suffix)
  f.samples[#f.samples + 1] = { value = value, labels = labels, suffix = suffix }
end

-- The documented numeric KPI fields, in the order of the reference page.
local KPI_FIELDS = {}
for _, name in ipairs(model.field_names()) do
  local kind = model.FIELDS[name].kind
  if kind == "int" or kind == "num" then KPI_FIELDS[#KPI_FIELDS + 1] = name end
end
M.KPI_FIELDS = KPI_FIELDS

-- Metric names that differ from the field's: a "_count" suffix belongs to
-- histograms and summaries, and a unit is spelled out in base units (the
-- value divided to match).
local RENAMED = {
  avg_user_interruption_count = { "avg_user_interruptions" },
  avg_ai_interruption_count = { "avg_ai_interruptions" },
  avg_turn_count = { "avg_turns" },
  avg_chat_latency_ms = { "avg_chat_latency_seconds", 1000, "seconds" },
}

---The metric family name of a documented KPI field.
---@param field string snake_case field name
---@return string name
---@return number divisor what the field's value is divided by
---@return string|nil unit
function M.kpi_metric(field)
  local r = RENAMED[field]
  if r then return "futureagi_execution_" .. r[1], r[2] or 1, r[3] end
  return "futureagi_execution_" .. field, 1, nil
end

local function kpi_help(name)
  local h = "KPI " .. name .. " of the exported execution, as the API reports it"
  if model.UNIT_AMBIGUOUS[name] then h = h .. " (the server computes it in milliseconds)" end
  if RENAMED[name] and RENAMED[name][2] then h = "KPI " .. name .. " of the exported execution, in seconds" end
  return h
end

-- ---- the collector ---------------------------------------------------------------------

local Collector = {}
Collector.__index = Collector

---A fresh collector: kpiwatch's own counters and an empty snapshot.
---@return table collector
function M.collector()
  local buckets = {}
  for i = 1, #M.LATENCY_BUCKETS do buckets[i] = 0 end
  return setmetatable({
    requests = {},           -- outcome -> count
    rate_waits = 0, rate_wait_seconds = 0,
    latency = { buckets = buckets, count = 0, sum = 0 },
    notifications = { delivered = 0, spooled = 0, lost = 0 },
    polls = { ok = 0, error = 0 },
    last_poll = nil,         -- epoch seconds of the last poll that fetched every target
    entries = {},            -- the snapshot
  }, Collector)
end

---Counts one API request (kpiwatch.kpis calls this through its observer).
---@param outcome string "ok" or the error kind (server, rate_limited, timeout, ...)
---@param seconds number|nil how long the attempt took
function Collector:observe_request(outcome, seconds)
  self.requests[outcome] = (self.requests[outcome] or 0) + 1
  if type(seconds) == "number" then
    local l = self.latency
    l.count, l.sum = l.count + 1, l.sum + seconds
    for i, le in ipairs(M.LATENCY_BUCKETS) do
      if seconds <= le then l.buckets[i] = l.buckets[i] + 1 end
    end
  end
end

---Counts one wait imposed by the client-side rate limit.
---@param seconds number
function Collector:observe_rate_wait(seconds)
  self.rate_waits = self.rate_waits + 1
  self.rate_wait_seconds = self.rate_wait_seconds + seconds
end

---Adds a watch cycle's notification outcomes.
---@param rep table a report or summary with delivered, spooled, lost counts
function Collector:count_notifications(rep)
  local n = self.notifications
  n.delivered = n.delivered + (rep.delivered or 0)
  n.spooled = n.spooled + (rep.spooled or 0)
  n.lost = n.lost + (rep.lost or 0)
end

---The observer function to install as kpiwatch.kpis's `_observer`.
---@return fun(event: string, a: any, b: any)
function Collector:observer()
  return function(event, a, b)
    if event == "request" then
      self:observe_request(a, b)
    elseif event == "rate_wait" then
      self:observe_rate_wait(a)
    end
  end
end

---Replaces the snapshot. Each entry: {kpi=, execution_id=, run_test_id=,
---run_test=, status=, completed_at=}; `ok` records a poll that fetched
---every target (its time becomes the last successful poll time).
---@param entries table[]
---@param ok boolean
---@param now number|nil epoch seconds
function Collector:set_snapshot(entries, ok, now)
  self.entries = entries
  if ok then
    self.polls.ok = self.polls.ok + 1
    self.last_poll = now or os.time()
  else
    self.polls.error = self.polls.error + 1
  end
end

---Replaces the snapshot with a poll's results, keyed by target: a target
---that failed keeps its previous entry, so its last good values stay visible.
---@param results table[] {key=, entry=} or {key=, error=} per target
---@param now number|nil epoch seconds
---@return boolean ok no target failed
function Collector:update(results, now)
  local prev = {}
  for _, e in ipairs(self.entries) do if e._target then prev[e._target] = e end end
  local entries, ok = {}, true
  for _, r in ipairs(results) do
    if r.entry then
      r.entry._target = r.key
      entries[#entries + 1] = r.entry
    else
      ok = false
      if prev[r.key] then entries[#entries + 1] = prev[r.key] end
    end
  end
  self:set_snapshot(entries, ok, now)
  return ok
end

local function entry_labels(e)
  local agent = e.kpi and model.get(e.kpi, "agent_type") or e.agent_type
  return {
    { "run_test_id", e.run_test_id or "" },
    { "run_test", e.run_test or "" },
    { "execution_id", e.execution_id or "" },
    { "agent_type", type(agent) == "string" and agent:lower() or "" },
  }
end

local function with(labels, k, v)
  local out = { table.unpack(labels) }
  out[#out + 1] = { k, v }
  return out
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  return keys
end

-- The snapshot's families as text (each line ending in a newline). The
-- snapshot changes once a poll, scrapes come more often: render() caches this.
function Collector:_render_executions(om)
  local fams = {}
  local kpi_fams = {}
  local scales = {}
  for i, name in ipairs(KPI_FIELDS) do
    local mname, scale, unit = M.kpi_metric(name)
    kpi_fams[i], scales[i] = family(mname, "gauge", kpi_help(name), unit), scale
  end
  local eval_score = family("futureagi_execution_eval_score", "gauge",
    "Numeric eval metric avg_<eval> of the exported execution (0 to 100)")
  local eval_choice = family("futureagi_execution_eval_choice_calls", "gauge",
    "Calls of the exported execution per choice of a choice eval")
  local status = family("futureagi_execution_status", "gauge",
    "1 for the exported execution's status (lowercase)")
  local completed = family("futureagi_execution_completed_timestamp_seconds", "gauge",
    "When the exported execution completed (start time plus duration), Unix time", "seconds")

  local entries = {}
  for _, e in ipairs(self.entries) do entries[#entries + 1] = e end
  sort(entries, function(a, b)
    return (a.run_test_id or "") .. "\0" .. (a.execution_id or "")
      < (b.run_test_id or "") .. "\0" .. (b.execution_id or "")
  end)
  for _, e in ipairs(entries) do
    local labels = entry_labels(e)
    if e.kpi then
      for i, name in ipairs(KPI_FIELDS) do
        local v = model.get(e.kpi, name)
        if type(v) == "number" then sample(kpi_fams[i], scales[i] == 1 and v or v / scales[i], labels) end
      end
      local evals = model.evals(e.kpi)
      for _, name in ipairs(sorted_keys(evals)) do
        local v = evals[name]
        if type(v) == "number" then
          sample(eval_score, v, with(labels, "eval", name))
        elseif type(v) == "table" and type(v.choices) == "table" then
          for _, choice in ipairs(v.choices) do
            local n = v[choice]
            if type(choice) == "string" and type(n) == "number" then
              local l = with(labels, "eval", name)
              l[#l + 1] = { "choice", choice }
              sample(eval_choice, n, l)
            end
          end
        end
      end
    end
    if type(e.status) == "string" then sample(status, 1, with(labels, "status", e.status:lower())) end
    if type(e.completed_at) == "number" then sample(completed, e.completed_at, labels) end
  end
  for _, f in ipairs(kpi_fams) do fams[#fams + 1] = f end
  fams[#fams + 1] = eval_score
  fams[#fams + 1] = eval_choice
  fams[#fams + 1] = status
  fams[#fams + 1] = completed
  local out = {}
  for _, f in ipairs(fams) do render_family(out, f, om) end
  out[#out + 1] = ""
  return #out > 1 and concat(out, "\n") or ""
end

---Renders the snapshot and the counters.
---@param om boolean OpenMetrics 1.0.0 (true) or Prometheus text 0.0.4
---@return string
function Collector:render(om)
  local cache = self._cache
  if not cache or cache.entries ~= self.entries then
    cache = { entries = self.entries }
    self._cache = cache
  end
  local key = om and "om" or "text"
  if not cache[key] then cache[key] = self:_render_executions(om) end
  local fams = {}
  local req = family("kpiwatch_api_requests", "counter",
    "KPI API request attempts by outcome (ok or the error kind)")
  req.always = true
  for _, outcome in ipairs(sorted_keys(self.requests)) do
    sample(req, self.requests[outcome], { { "outcome", outcome } }, "_total")
  end
  fams[#fams + 1] = req

  local lat = family("kpiwatch_api_request_duration_seconds", "histogram",
    "Duration of KPI API request attempts", "seconds")
  lat.always = true
  for i, le in ipairs(M.LATENCY_BUCKETS) do
    sample(lat, self.latency.buckets[i], { { "le", M.format_number(le) } }, "_bucket")
  end
  sample(lat, self.latency.count, { { "le", "+Inf" } }, "_bucket")
  sample(lat, self.latency.count, nil, "_count")
  sample(lat, self.latency.sum, nil, "_sum")
  fams[#fams + 1] = lat

  local waits = family("kpiwatch_rate_limit_waits", "counter",
    "Requests held back by the client-side rate limit")
  sample(waits, self.rate_waits, nil, "_total")
  fams[#fams + 1] = waits
  local waited = family("kpiwatch_rate_limit_wait_seconds", "counter",
    "Time spent waiting for the client-side rate limit", "seconds")
  sample(waited, self.rate_wait_seconds, nil, "_total")
  fams[#fams + 1] = waited

  local notes = family("kpiwatch_notifications", "counter",
    "Alert notifications by outcome: delivered, spooled (to retry later) or lost")
  for _, st in ipairs({ "delivered", "spooled", "lost" }) do
    sample(notes, self.notifications[st], { { "status", st } }, "_total")
  end
  fams[#fams + 1] = notes

  local polls = family("kpiwatch_polls", "counter",
    "Polls of the targets: ok when every target was fetched, else error")
  for _, st in ipairs({ "ok", "error" }) do sample(polls, self.polls[st], { { "result", st } }, "_total") end
  fams[#fams + 1] = polls

  local last = family("kpiwatch_last_successful_poll_timestamp_seconds", "gauge",
    "When the last poll that fetched every target ended, Unix time", "seconds")
  if self.last_poll then sample(last, self.last_poll) end
  fams[#fams + 1] = last

  local out = { cache[key] }
  for _, f in ipairs(fams) do render_family(out, f, om) end
  if om then out[#out + 1] = "# EOF" end
  out[#out + 1] = ""
  -- the cached part ends with its own newline
  return out[1] .. concat(out, "\n", 2)
end

-- ---- polling -------------------------------------------------------------------------

-- ISO 8601 time (as the executions list gives start_time) -> epoch seconds.
local parse_time = require("kpiwatch.time").parse_iso8601

-- An execution object (kpis.execution / kpis.executions) -> entry fields.
local function from_execution(ex, entry)
  entry.status = ex.status
  if ex.status == "completed" then
    local start = parse_time(ex.start_time)
    local dur = tonumber(ex.duration)
    entry.completed_at = start and dur and start + dur or nil
  end
  if not entry.agent_type and type(ex.agent_type) == "string" then entry.agent_type = ex.agent_type end
  return entry
end

-- Run test id -> name, looked up once per process: the API names a run test
-- only in its list of run tests (kpis.run_test_name pages through it), and a
-- poll every interval should not read that list each time.
local run_test_names = {}

-- The name of a run test given by id for its `run_test` label; nil when the
-- lookup fails (tried again next poll: the label is a bonus, the KPIs still go out).
local function name_of(kpis, rt)
  local key = rt:lower()
  if run_test_names[key] == nil then
    local ok, name = pcall(kpis.run_test_name, rt)
    if ok then run_test_names[key] = name end
  end
  return run_test_names[key]
end

-- A target's execution: {execution_id=, run_test_id=, run_test=, status=,
-- completed_at=}; false when a run test has no completed execution yet;
-- nil, error when the API failed. For an id the status is a bonus: an
-- execution whose detail cannot be read still exports its KPIs.
local function resolve_target(t)
  local kpis = require "kpiwatch.kpis"
  if t.id then
    local e = { execution_id = t.id }
    local ok, ex = pcall(kpis.execution, t.id)
    if ok and type(ex) == "table" then from_execution(ex, e) end
    return e
  end
  local rt = t.run_test
  local name = t.name
  if rt and not kpis.is_uuid(rt) then rt, name = nil, rt end
  if not rt then
    local ok, id = pcall(kpis.run_test_id, name)
    if not ok then return nil, id end
    rt = id
  end
  local ok, list = pcall(kpis.executions, rt, { status = "completed", limit = 1 })
  if not ok then return nil, list end
  local ex = list[1]
  if not ex then return false end
  -- given by id, the run test's name was missing from the `run_test` label
  if not name then name = name_of(kpis, rt) end
  return from_execution(ex, { execution_id = ex.id, run_test_id = rt, run_test = name })
end

---One poll: resolves each target to its execution, fetches the KPIs and
---updates the collector's snapshot (Collector:update).
---@param c table collector
---@param targets table[] {id=} | {run_test=} | {name=}
---@param opts table|nil {concurrency=, now=function}
---@return boolean ok every target fetched
---@return table[] failures {target=, error=}
function M.poll(c, targets, opts)
  opts = opts or {}
  local kpis = require "kpiwatch.kpis"
  local results, failures, wanted, ids = {}, {}, {}, {}
  for _, t in ipairs(targets) do
    local key = t.id and ("id:" .. t.id) or t.run_test and ("rt:" .. t.run_test) or ("name:" .. tostring(t.name))
    local e, err = resolve_target(t)
    if e then
      wanted[#wanted + 1] = { key = key, entry = e }
      ids[#ids + 1] = e.execution_id
    elseif e == nil then
      results[#results + 1] = { key = key, error = err }
      failures[#failures + 1] = { target = key, error = err }
    end
  end
  for i, r in ipairs(kpis.get_all(ids, { concurrency = opts.concurrency })) do
    local w = wanted[i]
    if errors.is(r) then
      results[#results + 1] = { key = w.key, error = r }
      failures[#failures + 1] = { target = w.key, error = r }
    else
      w.entry.kpi = r
      results[#results + 1] = w
    end
  end
  return c:update(results, opts.now and opts.now() or os.time()), failures
end

---What a watch cycle gives the collector: its executions (fetched KPI
---objects, and the ids that failed) and its notification counts.
---@param c table collector
---@param list table[] the KPI objects evaluated this cycle
---@param failed table {[execution_id] = error}
---@param rep table the cycle's report (delivered, spooled, lost)
---@param now number|nil epoch seconds
function M.watch_cycle(c, list, failed, rep, now)
  local results = {}
  for _, k in ipairs(list) do
    local id = model.get(k, "execution_id")
    if type(id) == "string" then
      results[#results + 1] = { key = "id:" .. id, entry = { kpi = k, execution_id = id } }
    end
  end
  for id, e in pairs(failed or {}) do results[#results + 1] = { key = "id:" .. id, error = e } end
  c:update(results, now)
  c:count_notifications(rep)
end

-- ---- serving ---------------------------------------------------------------------------

---Splits "ADDR:PORT" ("127.0.0.1:9464", "[::1]:9464", ":9464").
---@param s string
---@return string|nil host
---@return integer|string port_or_message
function M.parse_listen(s)
  if type(s) ~= "string" then return nil, "expected ADDR:PORT, got " .. type(s) end
  local host, port = s:match("^%[([^%]]+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:]*):(%d+)$") end
  port = math.tointeger(tonumber(port))
  if not host or not port or port > 65535 then
    return nil, "'" .. s .. "' is not ADDR:PORT (e.g. 127.0.0.1:9464)"
  end
  if host == "" then host = "0.0.0.0" end
  return host, port
end

---Serves GET /metrics from the collector on ADDR:PORT. Scrapes render the
---current snapshot; they never wait for a poll.
---@param c table collector
---@param listen string "ADDR:PORT"
---@param opts table|nil {background=} (a background server does not keep the process alive)
---@return table server (kpiwatch.http_server)
function M.serve(c, listen, opts)
  local host, port = M.parse_listen(listen)
  if not host then error(errors.new("config", "metrics: " .. port), 2) end
  local http_server = require "kpiwatch.http_server"
  return http_server.serve {
    host = host, port = port, background = opts and opts.background,
    handler = function(req)
      if req.path ~= "/metrics" then
        if req.path == "/" then
          return { headers = { ["content-type"] = "text/plain; charset=utf-8" },
            body = "kpiwatch exporter: metrics at /metrics\n" }
        end
        return { status = 404, headers = { ["content-type"] = "text/plain" }, body = "not found\n" }
      end
      if req.method ~= "GET" and req.method ~= "HEAD" then
        return { status = 405, headers = { allow = "GET, HEAD", ["content-type"] = "text/plain" },
          body = "method not allowed\n" }
      end
      local ctype, om = M.negotiate(req.headers["accept"])
      return { headers = { ["content-type"] = ctype }, body = c:render(om) }
    end,
  }
end

return M
