-- kpiwatch.kpis: the Future AGI KPIs client (global `kpis`).
--
--   kpis.get(id [, opts])            -> KPI object (kpiwatch.model), or raises
--   kpis.get_all(ids [, opts])       -> results in the order of ids, an error
--                                       object in place of each failure
--   kpis.each(ids, fn [, opts])      -> fetched, failed: fn(result, id, i) as
--                                       results arrive, none kept
--   kpis.configure{...}              -> set options for the whole script
--   kpis.config()                    -> the effective options, secrets redacted
--
-- Everything here is policy over kpiwatch.http (libcurl on the event loop):
-- configuration precedence, id validation, retries with backoff, the
-- client-side rate limit, error classification and the verbose trace.
--
-- Configuration, strongest first: the opts of a call, kpis.configure{},
-- command-line flags (kpis._set_flags from the CLI's flags, kpis.point_at
-- for --sandbox),
-- the environment (FI_BASE_URL, FI_API_KEY, FI_SECRET_KEY, KPIWATCH_CA_FILE),
-- the defaults.
--
-- Secrets (api_key, secret_key) only ever go into request headers. They are
-- never part of an error, a trace or a printed config, and any text that
-- reaches the user through this module is scrubbed of them as well (a
-- server could echo a header back).

local errors = require "kpiwatch.errors"
local shared = require "kpiwatch.shared"
local model = require "kpiwatch.model"
local M = require "kpiwatch.kpis.api"
local config = require "kpiwatch.kpis.config"
local transport = require "kpiwatch.kpis.transport"

local type, tostring, pcall, error = type, tostring, pcall, error
local format = string.format
local CHECK, resolve, prepare = config.CHECK, config.resolve, config.prepare
local send, lazy, headers = M._send, transport.lazy, transport.headers

---@brief
--- The Future AGI KPIs client (global `kpis`): `GET
--- {base}/simulate/test-executions/{id}/kpis/` with the headers `X-Api-Key` and
--- `X-Secret-Key`, retries with exponential backoff and full jitter
--- (`random(0, min(backoff_max, backoff*2^(n-1)))`; after a 429, `Retry-After`
--- plus `random(0, backoff)`), an optional client-side rate limit, and errors
--- classified by kind.
---
--- Configuration, strongest first: the options of a call, `kpis.configure{}`,
--- the command line (`--base-url`, `--timeout`, `--retries`, `--verbose`,
--- `--allow-insecure-http`, `--ca-file`, `--sandbox`), the environment
--- (`FI_BASE_URL`, `FI_API_KEY`, `FI_SECRET_KEY`, `KPIWATCH_CA_FILE`), the defaults.
---
--- Errors are `kpiwatch.errors` objects with `kind`, `message`, `status`,
--- `execution_id`, `retryable`, `attempts`, `url` (sometimes `code`,
--- `retry_after`); `tostring(e)` is `kind: message`. Kinds: `invalid_id` and
--- `config` (no request sent); `auth` (401, 403), `not_found` (404), `request`
--- (other 4xx), `protocol` (a 2xx body that is not a KPIs object, or a redirect),
--- not retried; `rate_limited` (429), `server` (5xx), `timeout`, `connect`,
--- `network`, retried; `dns`, `tls`, `too_large`, not retried. Secrets only go
--- into request headers and are removed from every message, trace and printed
--- config, even when a server echoes them.

-- ---- ids ------------------------------------------------------------------------

local uuid = shared.uuid

-- An id as it can be shown in one line of a message: printable, short.
local function show_id(id)
  if type(id) ~= "string" then return tostring(type(id)) end
  local s = id:sub(1, 48):gsub("[%c\128-\255\"]", "?")
  if #id > 48 then s = s .. format("... (%d bytes)", #id) end
  return s
end
M._show_id = show_id

-- check_id(id) -> the id in lower case, or raises invalid_id. The API's
-- route takes a canonical UUID; anything else never needs a request.
local function check_id(id)
  if type(id) ~= "string" then
    errors.raise("invalid_id", "execution id must be a UUID string, got " .. type(id),
      { retryable = false })
  end
  local lower = uuid(id)
  if not lower then
    errors.raise("invalid_id", format('not a UUID: "%s"', show_id(id)),
      { retryable = false, execution_id = nil })
  end
  return lower
end
--- Check an execution id without a request.
---@param id string
---@return string id the id in lower case; raises `invalid_id` when it is not a UUID
M.check_id = check_id

--- Whether `id` is a canonical UUID string.
---@param id any
---@return boolean
function M.is_uuid(id)
  return uuid(id) ~= nil
end

-- fetch(c, id) -> KPI object, or raises: one execution with the prepared
-- options c (kpis.get, and each worker of get_all and each).
local function fetch(c, id)
  id = uuid(id) or check_id(id) -- check_id raises the error of a bad one
  -- GET, http.request's default: one option fewer to build and read
  local req = { url = c.root .. id .. "/kpis/", headers = c.header_list or headers(c), timeout = c.timeout,
    ca_file = c.ca_file }
  return send(c, req, id, model.parse)
end

--- Fetch the KPIs of one execution, retrying what is worth a retry. Many
--- `kpis.get` calls in separate tasks run concurrently.
---@async
---@param id string the execution id (a UUID)
---@param opts? kpiwatch.kpis.Options options of this call
---@return kpiwatch.Kpi kpi raises an error object when the request fails
function M.get(id, opts)
  local c = prepare(resolve(opts))
  lazy()
  return fetch(c, id)
end

-- Run up to `concurrency` workers over ids; each result (a KPI object or
-- an error object) goes to deliver(r, id, i, ok) as it arrives, ok telling
-- which.
local function run_workers(ids, opts, deliver)
  if type(ids) ~= "table" then
    errors.raise("config", "kpis: expected a list of ids, got " .. type(ids))
  end
  opts = opts or {}
  local conc = opts.concurrency
  local call_opts = opts
  if conc ~= nil then
    call_opts = {}
    for k, v in pairs(opts) do if k ~= "concurrency" then call_opts[k] = v end end
  end
  local c = prepare(resolve(call_opts))
  conc = conc or c.concurrency
  local ok_c, msg = CHECK.concurrency(conc)
  if not ok_c then errors.raise("config", "kpis: " .. msg) end
  lazy()
  -- A per-id failure is a result; anything else (a cancellation, a bug,
  -- an error raised by deliver) stops the pool and is raised here. The
  -- options are resolved and checked once for the whole run, not per id.
  require("kpiwatch.task").map(ids, function(id, i)
    local ok, r = pcall(fetch, c, id)
    if not ok and not errors.is(r) then error(r, 0) end
    deliver(r, id, i, ok)
  end, { concurrency = conc })
end

--- Fetch many executions with `concurrency` workers. A missing credential, or
--- the cancellation of the calling task, raises at once.
---@async
---@param ids string[]
---@param opts? kpiwatch.kpis.Options `concurrency` (default 16) and any option of `kpis.get`
---@return (kpiwatch.Kpi|table)[] results in the order of `ids`: a KPI object, or an error object in place of each failure
function M.get_all(ids, opts)
  local results = {}
  run_workers(ids, opts, function(r, _, i) results[i] = r end)
  return results
end

--- Like `get_all`, but hands each result to `fn` as it arrives (in completion
--- order) and keeps none, so memory stays flat over any number of ids. An
--- error raised by `fn` stops the run and is raised here.
---@async
---@param ids string[]
---@param fn fun(result: kpiwatch.Kpi|table, id: string, index: integer) result is a KPI object or an error object
---@param opts? kpiwatch.kpis.Options
---@return integer fetched
---@return integer failed
function M.each(ids, fn, opts)
  if type(fn) ~= "function" then
    errors.raise("config", "kpis.each: expected a function, got " .. type(fn))
  end
  local fetched, failed = 0, 0
  run_workers(ids, opts, function(r, id, i, ok)
    if ok then fetched = fetched + 1 else failed = failed + 1 end
    fn(r, id, i)
  end)
  return fetched, failed
end

---Execution ids or KPI objects (or decoded bodies), in any mix, as KPI
---objects: the ids are fetched concurrently (kpis.get_all), the rest is
---kept as is (a decoded body becomes a KPI object). A single id or object
---is a list of one.
---@param x string|table|table[]  an id, a KPI object, or a list of them
---@param opts? table  options of kpis.get_all
---@return table[] kpis  the KPI objects, in the order of x, failed ids left out
---@return {execution_id: string, error: table}[] failed  one per id that could not be fetched
function M.resolve(x, opts)
  local list
  if type(x) == "string" or model.is(x) then
    list = { x }
  elseif type(x) == "table" and rawlen(x) == 0 and next(x) ~= nil then
    list = { x } -- a decoded body
  elseif type(x) == "table" then
    list = x
  else
    errors.raise("config", "expected execution ids or KPI objects, got " .. type(x))
  end
  local ids, pos = {}, {}
  local out = {}
  for i, v in ipairs(list) do
    if type(v) == "string" then
      ids[#ids + 1] = v
      pos[#ids] = i
    elseif type(v) == "table" then
      out[i] = model.as_kpi(v)
    else
      errors.raise("config", "expected an execution id or a KPI object, got " .. type(v))
    end
  end
  local failed = {}
  if #ids > 0 then
    for j, r in ipairs(M.get_all(ids, opts)) do
      if errors.is(r) then
        failed[#failed + 1] = { execution_id = ids[j], error = r }
        out[pos[j]] = false
      else
        out[pos[j]] = r
      end
    end
  end
  local kpis = {}
  for i = 1, #list do
    if out[i] then kpis[#kpis + 1] = out[i] end
  end
  return kpis, failed
end

--- Print two executions side by side: the core fields, the voice and/or text
--- fields, the union of their eval metrics and the number of scenario graphs,
--- with the delta `b - a` and its relative change. Ids are fetched concurrently.
---@async
---@param a kpiwatch.Kpi|string a KPI object or an execution id
---@param b kpiwatch.Kpi|string
function M.compare(a, b)
  return require("kpiwatch.compare").compare(a, b, M.get)
end

-- Executions, run tests, runs and calls (kpis.execution, executions,
-- run_test_id, run_test_name, run, wait, calls, scores): see kpiwatch.execution.
for _, name in ipairs({ "execution", "executions", "run_test_id", "run_test_name", "run", "wait", "calls",
  "scores" }) do
  M[name] = function(...) return require("kpiwatch.execution")[name](...) end
end

return M
