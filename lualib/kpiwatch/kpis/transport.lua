-- kpiwatch.kpis.transport: the client's one request loop (kpis._send) over
-- kpiwatch.http (libcurl on the event loop): the client-side rate limit,
-- retries with backoff, error classification, redaction, the verbose trace,
-- the request counters and the metrics observer.

local errors = require "kpiwatch.errors"
local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"
local retry = require "kpiwatch.http_retry"
local config = require "kpiwatch.kpis.config"
local M = require "kpiwatch.kpis.api"

local type, tostring, tonumber, pcall, error = type, tostring, tonumber, pcall, error
local format, find = string.format, string.find
local resolve, prepare, redact = config.resolve, config.prepare, config.redact

local http -- loaded on first request, so `kpis.configure` costs no libcurl
local task

local function lazy()
  if not http then
    http = require "kpiwatch.http"
    task = require "kpiwatch.task"
  end
end

-- ---- time, randomness ---------------------------------------------------------

-- Monotonic seconds (the runtime's clock, uv_hrtime): backoff, the rate
-- limit and --verbose timings must not jump with the wall clock.
local function now()
  if not task then task = require "kpiwatch.task" end
  return task.now()
end
M._now = now

M._random = math.random -- replaceable in tests

-- ---- rate limit -----------------------------------------------------------------

-- One GCRA bucket per rate spec, shared by every task of the process: each
-- request reserves the next slot before it sleeps, so concurrent tasks
-- never pass together more than `burst` requests in one emission interval.
M._buckets = {}

local function rate_interval(spec)
  local n, unit = spec:match("^%s*(%d+%.?%d*)%s*/%s*(%a+)%s*$")
  local per = ({ s = 1, sec = 1, second = 1, m = 60, min = 60, minute = 60, h = 3600, hour = 3600 })[unit:lower()]
  return per / tonumber(n)
end

-- acquire(c) -> seconds waited for a slot of c.rate (set)
local function acquire(c)
  local key = c.rate .. "#" .. c.burst
  local b = M._buckets[key]
  if not b then
    b = { interval = rate_interval(c.rate), tat = nil }
    M._buckets[key] = b
  end
  local t = now()
  local tau = (c.burst - 1) * b.interval
  local tat = b.tat or t
  if tat < t then tat = t end
  local allowed_at = tat - tau
  b.tat = tat + b.interval
  local wait = allowed_at - t
  if wait > 0 then
    task.sleep(wait)
    return wait
  end
  return 0
end

-- ---- errors ------------------------------------------------------------------------

local REASON = {
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local json_decode
local function decode_body(body)
  if type(body) ~= "string" or not body:match("^%s*{") then return nil end
  if not json_decode then
    local ok, j = pcall(function() return _G.json end)
    json_decode = (ok and type(j) == "table" and j.decode) or require("cjson").decode
  end
  local ok, t = pcall(json_decode, body)
  if ok and type(t) == "table" then return t end
  return nil
end

-- classify(resp, c, id, url) -> error object for a non-2xx response
local function classify(resp, c, id, url)
  local status = resp.status
  -- Redacted before anything quotes it: a snippet could cut an echoed
  -- secret in two, and the final redact would miss the half left.
  local body = redact(c, resp.body)
  local decoded = decode_body(body)
  local msg = decoded and model.server_message(decoded)
  local code = decoded and (decoded.code or (type(decoded.result) == "table" and decoded.result.code)) or nil
  if type(code) ~= "string" then code = nil end
  local http_text = format("HTTP %d%s", status, REASON[status] and (" " .. REASON[status]) or "")
  local fields = { status = status, execution_id = id, url = url, code = code, retryable = false }
  local kind
  if not msg and body and body ~= "" and not decoded then
    local title = body:match("<[Tt][Ii][Tt][Ll][Ee]>([^<]*)</")
    msg = http_text .. (title and (" (HTML page: " .. model.snippet(title) .. ")")
      or (" (non-JSON body: '" .. model.snippet(body) .. "')"))
  end
  if status == 401 or status == 403 then
    kind = "auth"
    msg = (msg or http_text) .. " (check the credentials: FI_API_KEY and FI_SECRET_KEY)"
  elseif status == 404 then
    kind = "not_found"
    if not (decoded and model.server_message(decoded)) then
      -- the API answers its own 404s with its error JSON; anything else
      -- (empty, HTML, a proxy's page) is a path the API does not have
      msg = (msg or (http_text .. ((body or "") == "" and " with an empty body" or "")))
        .. ": not the API's answer, the URL may be wrong"
        .. " (check FI_BASE_URL; requested " .. shared.clean(url, 400) .. ")"
    end
  elseif status == 429 then
    kind = "rate_limited"
    fields.retryable = true
    local ra = retry.parse_retry_after(resp.headers and resp.headers["retry-after"])
    if ra == nil and decoded and type(decoded.result) == "table" then
      ra = retry.parse_retry_after(decoded.result.retry_after)
    end
    fields.retry_after = ra
    msg = msg or http_text
  elseif status >= 500 and status <= 599 then
    kind = "server"
    fields.retryable = true
    msg = msg or http_text
  elseif status >= 400 and status <= 499 then
    kind = "request"
    msg = msg or http_text
  else
    kind = "protocol"
    local loc = resp.headers and redact(c, resp.headers.location)
    msg = format("unexpected %s%s", http_text,
      loc and (" (redirect to " .. model.snippet(loc) .. ")") or "")
  end
  return errors.new(kind, redact(c, msg), fields)
end

-- ---- the request ---------------------------------------------------------------------

M._stats = { requests = 0, retries = 0, failures = 0 }

-- _observer(event, ...): set by kpiwatch.metrics to count requests;
-- ("request", outcome, seconds) per attempt, ("rate_wait", seconds).
M._observer = nil

--- Counters of this process's KPIs requests.
---@return {requests: integer, retries: integer, failures: integer} stats
function M.stats()
  local s = M._stats
  return { requests = s.requests, retries = s.retries, failures = s.failures }
end

local function trace(c, line)
  if c.verbose then io.stderr:write("kpiwatch: ", redact(c, line), "\n") end
end

local function ms(secs)
  return format("%.1f ms", secs * 1000)
end

-- The delay before retry number n (1-based): full jitter over an
-- exponential ceiling; a 429's Retry-After is a floor.
local function backoff_delay(c, n, retry_after)
  if retry_after then return retry_after + M._random() * c.backoff end
  return shared.backoff(n, c.backoff, c.backoff_max, M._random)
end

local http_request

-- Transport failures that prove the request never reached the server: the
-- only ones a request that is not idempotent (POST execute) may retry (and
-- only those http_retry deems worth a retry: connect, not dns).
local UNSENT = { connect = true, dns = true }

-- send(c, req, id, parse [, not_idempotent]) -> parse(body, id) of the 2xx
-- answer, or raises an error object. The client's one request loop: rate
-- limit, retries with backoff and Retry-After, error classification,
-- redaction and the verbose trace. parse returns a value, or nil and an
-- error object. A request that is not idempotent keeps its retries only for
-- failures that prove it never reached the server (UNSENT), never after a
-- timeout, a broken connection or an HTTP error.
local function send(c, req, id, parse, not_idempotent)
  if not http then lazy() end
  http_request = http_request or http.request
  local url, method = req.url, req.method or "GET" -- http.request's default
  local stats = M._stats
  local attempt = 0
  while true do
    attempt = attempt + 1
    local waited = c.rate and acquire(c) or 0
    local observe = M._observer
    if observe and waited > 0 then observe("rate_wait", waited) end
    local t0 = (c.verbose or observe) and now()
    stats.requests = stats.requests + 1
    local ok, resp = pcall(http_request, req)
    local err
    if ok then
      local status = resp.status
      if status >= 200 and status <= 299 then
        local k, perr = parse(resp.body, id)
        if k then
          -- a server echoing a credential (as a key or a value, maybe
          -- written with \u escapes) must not get it into any output
          local secrets = c.secrets
          local body = resp.body
          local echoed = secrets[1] ~= nil and find(body, "\\u", 1, true) ~= nil
          if not echoed then
            for i = 1, #secrets do
              if find(body, secrets[i], 1, true) then
                echoed = true
                break
              end
            end
          end
          if echoed then
            -- a KPI or execution object keeps its body behind raw();
            -- a list page is the decoded body itself
            shared.redact_tree(type(k.raw) == "function" and k:raw() or k, secrets)
          end
          if observe then observe("request", "ok", now() - t0) end
          if c.verbose then
            trace(c, format("%s %s -> %d (%s)%s", method, url, status, ms(resp.time or (now() - t0)),
              attempt > 1 and format(" after %d attempts", attempt) or ""))
          end
          return k
        end
        -- the message quotes the body: parse a redacted copy for it (see classify)
        local _, rerr = parse(redact(c, resp.body), id)
        err = rerr or perr
        err.status, err.url = status, url
        err.message = redact(c, err.message)
      else
        err = classify(resp, c, id, url)
      end
    elseif errors.is(resp) then
      local msg = redact(c, tostring(resp.message))
      if resp.kind == "tls" and msg:find("certificate problem", 1, true) then
        msg = msg .. (c.ca_file and " (not signed by a CA of " .. model.snippet(c.ca_file) .. ")"
          or " (the system's CA bundle does not trust this server's certificate;"
            .. " for a private CA, give its certificate with --ca-file FILE or KPIWATCH_CA_FILE)")
      end
      err = errors.new(resp.kind, msg, {
        url = url, execution_id = id, retryable = retry.retryable(resp.kind),
        curl_code = resp.curl_code,
      })
    else
      -- a cancellation ("interrupted!", task.cancel) or a bug: not ours to wrap
      error(resp, 0)
    end
    err.attempts = attempt
    if observe then observe("request", err.kind, now() - t0) end
    if not_idempotent and not UNSENT[err.kind] then err.retryable = false end
    local outcome = err.status and tostring(err.status) .. " " .. err.kind or err.kind
    local give_up = not err.retryable or attempt > c.retries
    if not give_up and err.retry_after and err.retry_after > c.max_retry_after then
      give_up = true
      err.message = err.message .. format(" (Retry-After %gs is beyond max_retry_after %gs)",
        err.retry_after, c.max_retry_after)
    end
    if give_up then
      stats.failures = stats.failures + 1
      if c.verbose then
        trace(c, format("%s %s -> %s (%s)%s", method, url, outcome, ms(now() - t0),
          attempt > 1 and format("; giving up after %d attempts", attempt) or ""))
      end
      error(err, 0)
    end
    local delay = backoff_delay(c, attempt, err.retry_after)
    stats.retries = stats.retries + 1
    if c.verbose then
      trace(c, format("%s %s -> %s (%s); retry %d/%d in %.2f s%s", method, url, outcome, ms(now() - t0),
        attempt, c.retries, delay,
        err.retry_after and format(" (Retry-After %g)", err.retry_after) or ""))
    end
    if delay > 0 then task.sleep(delay) end
  end
end
M._send = send

-- headers(c) -> c.req_headers as one list checked and built by libcurl's
-- side once (http.headers), kept on c: every request of c sends it as it
-- is. c is a call's own copy when the call has options (config.resolve).
local function headers(c)
  if not http then lazy() end
  local list = http.headers(c.req_headers)
  c.header_list = list
  return list
end

-- _client([opts]) -> the resolved, checked options of one call (c.base,
-- c.req_headers, c.timeout, ...) for modules that build their own requests
-- and send them with kpis._send (kpiwatch.execution).
function M._client(opts)
  local c = prepare(resolve(opts))
  lazy()
  return c
end

return { lazy = lazy, headers = headers }
