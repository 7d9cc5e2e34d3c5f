-- kpiwatch.execution: executions, run tests, runs and calls (re-exported
-- by kpiwatch.kpis as kpis.execution, kpis.executions, kpis.run_test_id,
-- kpis.run, kpis.wait, kpis.calls, kpis.scores).
--
-- The KPIs endpoint carries no status: while an execution is pending,
-- running or evaluating its KPIs are partial. These functions read the
-- status (../shared/api/FIELD-NOTES.md, "Executions, run tests and
-- calls"), start runs and wait for them. Every request goes through the
-- KPIs client's one request loop (kpis._send: rate limit, retries,
-- Retry-After, redaction, error kinds).

local errors = require "kpiwatch.errors"
local model = require "kpiwatch.model"
local kpis = require "kpiwatch.kpis"
local json = require "kpiwatch.json"
local shared = require "kpiwatch.shared"

--- Executions, run tests, runs and calls. Re-exported by `kpis`:
--- `kpis.execution`, `kpis.executions`, `kpis.run_test_id`, `kpis.run`,
--- `kpis.wait`, `kpis.calls`, `kpis.scores`.
---
--- The KPIs endpoint carries no status: while an execution is pending,
--- running or evaluating, its KPIs are partial. Statuses are always
--- lowercase here, whatever casing the server used (its executions list
--- sends "Completed"). Terminal: completed, failed, cancelled; `evaluating`
--- is not done. Requests go through the KPIs client (its options, rate
--- limit, retries, redaction and error kinds).
---@brief
local M = {}

local format = string.format

--- Terminal statuses (status -> true): nothing about the execution changes
--- any more. `evaluating` is not one: its evals (and avg_score) are still coming.
M.TERMINAL = { completed = true, failed = true, cancelled = true }

--- A status in any casing, lowercase ("Completed", "RUNNING", "canceled"
--- give "completed", "running", "cancelled").
---@param s any
---@return string|nil status nil for a non-string
local function norm_status(s)
  if type(s) ~= "string" then return nil end
  s = s:lower():gsub("^%s+", ""):gsub("%s+$", "")
  if s == "canceled" then s = "cancelled" elseif s == "canceling" then s = "cancelling" end
  return s
end
M.normalize_status = norm_status

local function text_or_nil(v)
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

local function number_or_nil(v)
  if type(v) == "number" then return v end
  return nil
end

-- ---- the execution object -----------------------------------------------------------

local RAW = setmetatable({}, { __name = "kpiwatch.execution.raw" })

---@class kpiwatch.Execution
---@field id string the execution's UUID
---@field status string lowercase: pending, running, evaluating, cancelling, completed, failed, cancelled
---@field agent_type string|nil "voice" or "text" (lowercase)
---@field provider string|nil
---@field error_reason string|nil why a failed (or cancelled) execution ended
---@field calls integer|nil number of calls
---@field start_time string|nil ISO 8601, nil while pending
---@field duration number|nil seconds
---@field success_rate number|nil percent
local methods = {}
local Execution = { __name = "kpiwatch.execution", __index = methods }

--- True once the status is terminal (completed, failed or cancelled);
--- `evaluating` is not done.
---@return boolean
function methods:is_done()
  return M.TERMINAL[self.status] == true
end

--- The decoded body the object was built from (a list item or the detail
--- page without its calls), as the server sent it.
---@return table
function methods:raw()
  return rawget(self, RAW)
end

--- The fields of an execution object that to_json encodes, in order.
local FIELDS = { "id", "status", "agent_type", "provider", "error_reason", "calls", "start_time",
  "duration", "success_rate" }
M.FIELDS = FIELDS

--- A plain table of the object's fields (missing ones as json.null), for
--- json.encode: the shape of `kpiwatch executions --json`.
---@return table
function methods:to_json()
  local out = {}
  for _, k in ipairs(FIELDS) do
    local v = self[k]
    if v == nil then v = json.null end
    out[k] = v
  end
  return out
end

--- The execution's KPIs (kpis.get of its id); partial unless is_done(). Those of a
--- completed execution are recorded in the history (kpiwatch.history).
---@async
---@param opts table|nil options of kpis.get
---@return kpiwatch.Kpi kpi
function methods:kpis(opts)
  local k = kpis.get(self.id, opts)
  -- a completed execution's KPIs are final: kept in the history
  if self.status == "completed" then
    require("kpiwatch.history.fetch").record(k, { execution_id = self.id, status = "completed",
      start_time = self.start_time })
  end
  return k
end

Execution.__tostring = function(self)
  local parts = { "execution " .. self.id .. ": " .. tostring(self.status) }
  if self.calls then parts[#parts + 1] = format("%s calls", shared.format_value(self.calls)) end
  if self.agent_type then parts[#parts + 1] = shared.format_value(self.agent_type) end
  if self.start_time then parts[#parts + 1] = "started " .. shared.format_value(self.start_time) end
  if self.error_reason then parts[#parts + 1] = "error: " .. shared.format_value(self.error_reason) end
  return table.concat(parts, ", ")
end

--- An execution object from a decoded executions-list item or detail body
--- (what kpis.execution and kpis.executions build).
---@param body table
---@param id string|nil the id when the body has none
---@return kpiwatch.Execution
local function new_execution(body, id)
  local errs = body.error_messages
  local reason = text_or_nil(body.error_reason)
  if not reason and type(errs) == "table" then reason = text_or_nil(errs[1]) end
  local calls = body.calls
  if math.type(calls) ~= "integer" then calls = math.tointeger(body.count) end
  local raw = {}
  for k, v in pairs(body) do if k ~= "results" then raw[k] = v end end
  local e = {
    [RAW] = raw,
    id = (type(body.id) == "string" and body.id:lower()) or id,
    status = norm_status(body.status) or "unknown",
    agent_type = text_or_nil(body.agent_type) and body.agent_type:lower(),
    provider = text_or_nil(body.provider),
    error_reason = reason,
    calls = calls,
    start_time = text_or_nil(body.start_time),
    duration = number_or_nil(body.duration),
    success_rate = number_or_nil(body.success_rate),
  }
  return setmetatable(e, Execution)
end
M.new = new_execution

--- True when v is an execution object.
---@param v any
---@return boolean
function M.is(v)
  return getmetatable(v) == Execution
end

-- ---- lists ----------------------------------------------------------------------------

local List = { __name = "kpiwatch.execution.list" }

-- A cell of server text for a table: shared.format_value, the one
-- formatter of values (server text through shared.clean: control
-- characters and escape sequences neutralised, cut at 60 bytes).
local function cell(v)
  if v == nil then return "-" end
  return shared.format_value(v)
end

--- The executions as an aligned table (id, status, start, calls, success
--- rate, error), one line each.
---@param list kpiwatch.Execution[]
---@return string
function M.table(list)
  local rows = { { "ID", "STATUS", "START", "CALLS", "SUCCESS", "ERROR" } }
  for _, e in ipairs(list) do
    rows[#rows + 1] = { cell(e.id), cell(e.status), cell(e.start_time), cell(e.calls),
      e.success_rate and (shared.format_value(e.success_rate) .. "%") or "-", cell(e.error_reason) }
  end
  local width = {}
  for _, r in ipairs(rows) do
    for i, v in ipairs(r) do if #v > (width[i] or 0) then width[i] = #v end end
  end
  local lines = {}
  for _, r in ipairs(rows) do
    local out = {}
    for i, v in ipairs(r) do
      out[i] = i < #r and (v .. string.rep(" ", width[i] - #v)) or v
    end
    lines[#lines + 1] = table.concat(out, "  ")
  end
  if #list == 0 then lines[#lines + 1] = "(no executions)" end
  return table.concat(lines, "\n")
end

List.__tostring = M.table

-- ---- requests -------------------------------------------------------------------------

-- Parse a JSON object body: unwrap {status, result}; an error body sent
-- with 200 or a non-object is a `protocol` error.
local function parse_object(text, id)
  if type(text) ~= "string" then
    return nil, errors.new("protocol", "expected a response body", { execution_id = id, retryable = false })
  end
  local ok, body = pcall(json.decode, text)
  if not ok or type(body) ~= "table" or rawlen(body) > 0 or type(next(body)) == "number" then
    local what = (not ok) and (text:match("^%s*<") and "an HTML or XML page" or "invalid JSON") or "another JSON value"
    return nil, errors.new("protocol", format("expected a JSON object, got %s: '%s'", what, model.snippet(text)),
      { execution_id = id, retryable = false })
  end
  if rawget(body, "status") == false then
    return nil, errors.new("protocol", "server answered with an error body: "
      .. (model.server_message(body) or "error body without a message"), { execution_id = id, retryable = false })
  end
  return model.unwrap(body)
end

local function get_json(c, url, id)
  return kpis._send(c, { method = "GET", url = url, headers = c.req_headers, timeout = c.timeout,
    ca_file = c.ca_file }, id, parse_object)
end

local function escape_component(s)
  return (s:gsub("[^%w%-_.~]", function(ch) return format("%%%02X", ch:byte()) end))
end

-- Split opts into this function's own fields (names in own) and the
-- client's options (everything else, checked by kpis).
local function split(opts, own, where)
  if opts == nil then return {}, nil end
  if type(opts) ~= "table" then errors.raise("config", where .. ": options must be a table, got " .. type(opts)) end
  local mine, client = {}, nil
  for k, v in pairs(opts) do
    if own[k] then mine[k] = v else client = client or {}; client[k] = v end
  end
  return mine, client
end

-- shared.validate checkers
local function positive_integer(v)
  return math.type(v) == "integer" and v >= 1, "a positive integer"
end
local function positive_seconds(v)
  return type(v) == "number" and v > 0 and v < math.huge, "a positive number of seconds"
end

-- The path and query of an absolute or relative URL.
local function path_query(url)
  local rest = url:match("^%a[%w+.-]*://[^/?#]*(.*)$") or url
  local path, query = rest:match("^([^?#]*)%??([^#]*)")
  return path, query
end

-- Follow a paginated list from url: on_page(body) for each page, in order.
-- `next` is followed by its query only, on the configured base URL and the
-- same path: the credentials never go to another host or scheme than the
-- configured one (a proxy may build http:// links for an https API).
-- A failing page raises (never a silently truncated list).
local function each_page(c, url, id, on_page, max_pages)
  local want_path = path_query(url)
  local seen = {}
  local pages = 0
  while url do
    pages = pages + 1
    if seen[url] or pages > (max_pages or 100000) then
      errors.raise("protocol", "the list's `next` links loop (page " .. pages .. "): " .. model.snippet(url),
        { url = url, execution_id = id })
    end
    seen[url] = true
    local body = get_json(c, url, id)
    if type(body.results) ~= "table" then
      errors.raise("protocol", "expected a paginated list with `results`, got a JSON object without it",
        { url = url, execution_id = id })
    end
    local stop = on_page(body)
    local nxt = body.next
    if stop or type(nxt) ~= "string" or nxt == "" then break end
    local p, q = path_query(nxt)
    if p ~= want_path then
      errors.raise("protocol", "the list's `next` link leaves the list: " .. model.snippet(nxt),
        { url = url, execution_id = id })
    end
    url = c.base .. p:sub(#(path_query(c.base)) + 1) .. (q ~= "" and ("?" .. q) or "")
  end
end

-- ---- run tests ------------------------------------------------------------------------

--- The id of the run test named `name` (GET
--- /simulate/run-tests/get-id-by-name/{name}/). Raises `not_found` for an
--- unknown name.
---@async
---@param name string the run test's name, exactly
---@param opts table|nil client options (kpis.configure's)
---@return string run_test_id a UUID, lowercase
function M.run_test_id(name, opts)
  if type(name) ~= "string" or name == "" or #name > 500 then
    errors.raise("config", "run test name must be a non-empty string", { retryable = false })
  end
  local c = kpis._client(opts)
  local url = c.base .. "/simulate/run-tests/get-id-by-name/" .. escape_component(name) .. "/"
  local ok, body = pcall(get_json, c, url, nil)
  if not ok then
    if errors.is(body) and body.kind == "not_found" then
      body.message = format('run test not found: "%s" (%s)', kpis._show_id(name), body.message)
      body.run_test = name
    end
    error(body, 0)
  end
  local rid = type(body) == "table" and body.run_test_id
  if not kpis.is_uuid(rid) then
    errors.raise("protocol", "get-id-by-name answered without a run_test_id UUID", { url = url })
  end
  return rid:lower()
end

--- The name of the run test `run_test_id`. The API names a run test only in
--- its list of run tests (GET /simulate/run-tests/, whose `search` matches
--- names, not ids): the pages are read until the id is met. Raises
--- `not_found` when no run test has that id.
---@async
---@param run_test_id string a run test UUID
---@param opts table|nil client options (kpis.configure's)
---@return string name
function M.run_test_name(run_test_id, opts)
  if not kpis.is_uuid(run_test_id) then
    errors.raise("config", "run test id must be a UUID", { retryable = false })
  end
  local want = run_test_id:lower()
  local c = kpis._client(opts)
  local url = c.base .. "/simulate/run-tests/?limit=100"
  local name
  each_page(c, url, nil, function(body)
    for _, item in ipairs(body.results) do
      if type(item) == "table" and type(item.id) == "string" and item.id:lower() == want then
        name = type(item.name) == "string" and item.name or nil
        return true
      end
    end
  end)
  if not name then
    errors.raise("not_found", "run test not found: " .. want, { url = url, retryable = false })
  end
  return name
end

--- A run test given as an id or a name -> its id (a name costs one request).
---@async
---@param run_test string
---@param client table|nil client options
---@return string run_test_id
local function run_test_of(run_test, client)
  if kpis.is_uuid(run_test) then return run_test:lower() end
  if type(run_test) ~= "string" then
    errors.raise("config", "run test must be an id or a name, got " .. type(run_test), { retryable = false })
  end
  return M.run_test_id(run_test, client)
end
M.resolve_run_test = run_test_of

-- ---- one execution --------------------------------------------------------------------

--- The execution `id` with its status, from one cheap request (the detail
--- endpoint with ?limit=1).
---@async
---@param id string the execution's UUID
---@param opts table|nil client options
---@return kpiwatch.Execution
function M.execution(id, opts)
  local c = kpis._client(opts)
  id = kpis.check_id(id)
  local body = get_json(c, c.root .. id .. "/?limit=1", id)
  return new_execution(body, id)
end

local EXECUTIONS_OPTS = { status = true, limit = true, page_size = true, stop = true }

--- Every execution of a run test, newest first, following `next` across
--- all pages. A page that fails raises: the list is never truncated
--- silently. The result prints as a table (tostring).
---@async
---@param run_test string a run test id or name
---@param opts table|nil status (one status, any casing), limit (at most this many, the newest),
--- stop = fn(execution) -> true to end the list before that execution (no further page is read:
--- a watch stops at the first execution it knows), page_size (per request, default 10), and
--- client options
---@return kpiwatch.Execution[]
function M.executions(run_test, opts)
  local o, client = split(opts, EXECUTIONS_OPTS, "kpis.executions")
  shared.validate("kpis.executions", {
    limit = { o.limit, positive_integer, true },
    page_size = { o.page_size, positive_integer, true },
    stop = { o.stop, "callable", true },
    status = { o.status, function(v)
      return type(v) == "string" and v:find("%a") ~= nil, 'a status name such as "completed"'
    end, true },
  })
  local limit, page_size, stop = o.limit, o.page_size, o.stop
  if not page_size and limit and limit < 10 then page_size = limit end
  local want = o.status ~= nil and norm_status(o.status)
  local c = kpis._client(client)
  local rid = run_test_of(run_test, client)
  local q = {}
  if want then q[#q + 1] = "status=" .. escape_component(want) end
  if page_size then q[#q + 1] = "limit=" .. page_size end
  local url = c.base .. "/simulate/run-tests/" .. rid .. "/executions/"
    .. (#q > 0 and ("?" .. table.concat(q, "&")) or "")
  local out = setmetatable({}, List)
  each_page(c, url, nil, function(body)
    for _, item in ipairs(body.results) do
      if type(item) == "table" then
        local e = new_execution(item)
        if stop and stop(e) then return true end
        -- the server's filter may want another casing: filter here as well
        if not want or e.status == want then out[#out + 1] = e end
        if limit and #out >= limit then return true end
      end
    end
  end)
  return out
end

--- Every call of an execution (the detail endpoint, all pages), as the
--- server sent them (`overall_score`, `status`, `eval_outputs`, ...), and
--- the execution's status: scores are final only once it is completed.
---@async
---@param id string the execution's UUID
---@param opts table|nil page_size (default 100) and client options
---@return table[] calls
---@return string status lowercase
function M.calls(id, opts)
  local o, client = split(opts, { page_size = true }, "kpis.calls")
  local c = kpis._client(client)
  id = kpis.check_id(id)
  shared.validate("kpis.calls", { page_size = { o.page_size, positive_integer, true } })
  local size = o.page_size or 100
  local out, status = {}, nil
  each_page(c, c.root .. id .. "/?limit=" .. size, id, function(body)
    status = status or norm_status(body.status)
    for _, call in ipairs(body.results) do out[#out + 1] = call end
  end)
  return out, status
end

--- The per-call overall_score values of an execution (calls without a
--- score left out), in call order, and its status.
---@async
---@param id string the execution's UUID
---@param opts table|nil as kpis.calls
---@return number[] scores
---@return string status lowercase
function M.scores(id, opts)
  local calls, status = M.calls(id, opts)
  local out = {}
  for _, call in ipairs(calls) do
    local s = type(call) == "table" and call.overall_score
    if type(s) == "number" and s == s then out[#out + 1] = s end
  end
  return out, status
end

-- ---- starting a run -------------------------------------------------------------------

local RUN_OPTS = { scenario_ids = true, simulator_id = true, select_all = true }

--- Start a run of a run test (POST /simulate/run-tests/{id}/execute/).
--- Not idempotent: retried only when the request provably never reached
--- the server (a connect failure; DNS failures are never retried), never
--- after a timeout, a dropped connection or an HTTP error, so one call
--- never starts two runs.
---@async
---@param run_test string a run test id or name
---@param opts table|nil scenario_ids (list of UUIDs), simulator_id, select_all, and client options
---@return string execution_id the new execution's UUID
---@return table answer the server's answer (message, total_calls, ...)
function M.run(run_test, opts)
  local o, client = split(opts, RUN_OPTS, "kpis.run")
  shared.validate("kpis.run", {
    scenario_ids = { o.scenario_ids, "table", true },
    simulator_id = { o.simulator_id, "string", true },
    select_all = { o.select_all, "boolean", true },
  })
  local body = {}
  if o.scenario_ids ~= nil then
    local ids = {}
    for i, sid in ipairs(o.scenario_ids) do
      if not kpis.is_uuid(sid) then
        errors.raise("config", format('kpis.run: scenario id is not a UUID: "%s"', kpis._show_id(sid)))
      end
      ids[i] = sid:lower()
    end
    body.scenario_ids = #ids > 0 and ids or json.array()
  end
  body.simulator_id = o.simulator_id
  body.select_all = o.select_all
  local c = kpis._client(client)
  local rid = run_test_of(run_test, client)
  local headers = {}
  for k, v in pairs(c.req_headers) do headers[k] = v end
  headers["Content-Type"] = "application/json"
  local url = c.base .. "/simulate/run-tests/" .. rid .. "/execute/"
  local answer = kpis._send(c, { method = "POST", url = url, headers = headers, body = json.encode(body),
    timeout = c.timeout, ca_file = c.ca_file }, nil, parse_object, true)
  local eid = answer.execution_id
  if not kpis.is_uuid(eid) then
    errors.raise("protocol", "execute answered without an execution_id UUID", { url = url })
  end
  return eid:lower(), answer
end

-- ---- waiting --------------------------------------------------------------------------

--- Defaults of kpis.wait, in seconds: every, max_every, factor (of the
--- backoff between polls), timeout.
M.WAIT = { every = 2, max_every = 30, factor = 1.5, timeout = 1800 }

--- Seconds as a short duration ("4.2s", "42s", "3m05s", "1h02m").
---@param s number
---@return string
local function duration_text(s)
  if s < 10 then return format("%.1fs", s) end
  s = math.floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return format("%dm%02ds", s // 60, s % 60) end
  return format("%dh%02dm", s // 3600, (s % 3600) // 60)
end
M.duration_text = duration_text

-- Progress lines at the REPL when no on_status is given.
local function repl_progress()
  local repl = package.loaded["kpiwatch.repl"]
  if not (type(repl) == "table" and repl.active) then return nil end
  return function(e, _, elapsed)
    print(format("execution %s: %s (%s)", e.id, e.status, duration_text(elapsed)))
  end
end

local WAIT_OPTS = { timeout = true, every = true, max_every = true, on_status = true, client = true }

--- Wait until an execution's status is terminal (completed, failed or
--- cancelled) and return it. Polls with the cheap status read, from
--- `every` seconds backing off to `max_every`; each read goes through the
--- client's rate limit and honours Retry-After. A cancellation of the task
--- (Ctrl-C at the REPL) stops it.
--- Raises an error of kind `timeout` (fields execution_id,
--- execution_status) when `timeout` seconds pass first.
---@async
---@param id string the execution's UUID
---@param opts table|nil timeout (s, default 1800; false: none), every (first interval, default 2),
--- max_every (default 30), on_status = fn(execution, previous_status, elapsed_seconds) on each
--- change, client (client options)
---@return kpiwatch.Execution
function M.wait(id, opts)
  opts = opts or {}
  if type(opts) ~= "table" then errors.raise("config", "kpis.wait: options must be a table") end
  for k in pairs(opts) do
    if not WAIT_OPTS[k] then errors.raise("config", "kpis.wait: unknown option '" .. tostring(k) .. "'") end
  end
  shared.validate("kpis.wait", {
    timeout = { opts.timeout, function(v)
      return v == false or positive_seconds(v), "a positive number of seconds, or false"
    end, true },
    every = { opts.every, positive_seconds, true },
    max_every = { opts.max_every, positive_seconds, true },
    on_status = { opts.on_status, "callable", true },
    client = { opts.client, "table", true },
  })
  local timeout = opts.timeout
  if timeout == nil then timeout = M.WAIT.timeout end
  local every = opts.every or M.WAIT.every
  local max_every = math.max(every, opts.max_every or M.WAIT.max_every)
  local on_status = opts.on_status or repl_progress()
  id = kpis.check_id(id)
  local task = require "kpiwatch.task"
  local t0 = task.now()
  local interval, last = every, nil
  while true do
    local e = M.execution(id, opts.client)
    local elapsed = task.now() - t0
    if e.status ~= last then
      if on_status then on_status(e, last, elapsed) end
      last = e.status
      interval = every -- a change: look again soon
    end
    if e:is_done() then return e end
    local wait = interval
    if timeout then
      local left = timeout - elapsed
      if left <= 0 then
        errors.raise("timeout", format("execution %s is still %s after %s (wait timeout %s)", id, e.status,
          duration_text(elapsed), duration_text(timeout)),
          { execution_id = id, execution_status = e.status, retryable = false })
      end
      if wait > left then wait = left end
    end
    task.sleep(wait)
    interval = math.min(max_every, interval * M.WAIT.factor)
  end
end

return M
