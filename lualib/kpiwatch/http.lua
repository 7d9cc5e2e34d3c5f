-- kpiwatch.http: the HTTP client (libcurl's multi interface on the event
-- loop) and, through kpiwatch.http_server, the server (http.serve).
--
-- http.request{url=, method="GET", headers={}, body=, timeout=, max_body=,
--              ca_file=, follow=false}     (or http.request(url))
--   -> {status=, body=, headers=, header_list=, raw_headers=, time=,
--       http_version=, url= (only with follow)}
-- Suspends only the calling task (or runs the loop when the caller cannot
-- yield). The method defaults to GET, or POST when there is a body;
-- headers values may be lists for repeated headers. Response header names
-- are lowercased; `headers[name]` joins repeated ones with ", ",
-- `header_list` keeps every line in order as {name, value} pairs (both are
-- built from `raw_headers` on first access).
-- A transport failure raises an error object (kpiwatch.errors) with kind
-- timeout | connect | network | dns | tls | too_large | invalid_url, the
-- message from libcurl, and fields url and curl_code. An HTTP error status
-- is a response, not a failure. Malformed options raise a plain error.

local C = require "kpiwatch._http"
local errors = require "kpiwatch.errors"

local M = {}

local c_request = C.request

-- Responses share a metatable whose __index builds `headers` and
-- `header_list` from raw_headers on first access and keeps them: most
-- scripts never look at headers, and building them for every response
-- would be most of a response's cost.
local header_table, header_list = C.header_table, C.header_list
C.response_mt.__index = function(resp, key)
  local build = key == "headers" and header_table or key == "header_list" and header_list
  if not build then return nil end
  local v = build(rawget(resp, "raw_headers") or "")
  rawset(resp, key, v)
  return v
end
C.response_mt.__name = "kpiwatch.http.response"

--- Make an HTTP request; an HTTP error status is returned, not raised.
---@async
---@param opts kpiwatch.http.RequestOptions|string the options, or a URL to GET
---@return kpiwatch.http.Response response
function M.request(opts)
  local t = type(opts)
  if t ~= "table" then
    if t ~= "string" then error("http.request: expected a table of options, got " .. t, 2) end
    opts = { url = opts }
  end
  local resp, message, kind, code = c_request(opts)
  if resp then return resp end
  error(errors.new(kind, message, { url = opts.url, curl_code = code }), 0)
end

--- Check and build a headers table once for many requests: the returned list
--- is given as `headers` of `http.request` in place of the table, and every
--- request sends it as it is (a client's credentials). Closed (`<close>`, or
--- collected) when no request needs it any more; requests under way keep it.
---@param headers table<string, string|number|(string|number)[]> as `headers` of `http.request`
---@return kpiwatch.http.Headers list
M.headers = C.headers

-- http.get(url [, opts]): request with method GET.
--- `http.request` with method GET.
---@async
---@param url string
---@param opts? kpiwatch.http.RequestOptions the other options
---@return kpiwatch.http.Response response
function M.get(url, opts)
  local o = { url = url, method = "GET" }
  if opts then
    for k, v in pairs(opts) do
      if k ~= "url" and k ~= "method" then o[k] = v end
    end
  end
  return M.request(o)
end

-- configure{max_concurrent=, max_body=, timeout=, ca_file=}: process-wide
-- defaults. max_concurrent caps transfers in flight; further requests wait
-- in a queue (their timeout starts when their transfer starts).
--- Set the process-wide defaults. Requests beyond `max_concurrent` wait in a
--- queue (their timeout starts when their transfer starts).
---@param opts {max_concurrent?: integer, max_body?: integer, timeout?: number, ca_file?: string|false} defaults 64, 8 MiB, 30 s, the system's CAs
function M.configure(opts)
  if type(opts) ~= "table" then
    error("http.configure: expected a table of options, got " .. type(opts), 2)
  end
  C.configure(opts)
end

-- config() -> the current process-wide settings.
--- The process-wide settings `http.configure` sets.
---@return {max_concurrent: integer, max_body: integer, timeout: number, ca_file?: string} config
M.config = C.config

-- stats() -> {connections=, requests=, active=, queued=}: connections is
-- the number of connections libcurl opened so far (reuse keeps it low).
--- Client counters: connections opened so far (reuse keeps it low), requests
--- made, transfers active and queued.
---@return {connections: integer, requests: integer, active: integer, queued: integer} stats
M.stats = C.stats

--- The User-Agent sent unless a request sets one.
---@type string
M.user_agent = C.user_agent

-- When a request may be tried again: one rule for every client (kpis,
-- notify), in kpiwatch.http_retry (which loads no libcurl).
local retry = require "kpiwatch.http_retry"

--- Whether a transport failure may pass if the request is tried again: kinds
--- `timeout`, `connect` and `network`. Not `dns` (the system resolver has
--- already retried before libcurl reports it, and it is nearly always a name
--- that does not exist), nor `tls`, `too_large`, `invalid_url`.
---@param e string|table an error kind, or an error object `http.request` raised
---@return boolean
M.retryable = retry.retryable

--- Seconds to wait from a Retry-After value: delay-seconds or an HTTP date (RFC
--- 9110 10.2.3, all three forms); a number (as a JSON body carries it) is
--- delay-seconds. Never raises.
---@param value any the header value, or a number
---@param now? number the current time, epoch seconds (default `os.time()`)
---@return number|nil seconds to wait (>= 0, at most 2^31); nil when not a Retry-After
M.parse_retry_after = retry.parse_retry_after

-- The server lives in its own module; loaded on first use so that the
-- client works (and starts fast) without it.
--- Serve HTTP/1.1 (keep-alive) and HTTP/2 over plain HTTP (prior knowledge or
--- `Upgrade: h2c`) on loopback unless given another host. A port in use raises
--- kind `bind`; an unresolvable host kind `dns`.
---@param opts kpiwatch.http.ServeOptions
---@return kpiwatch.http.Server server
function M.serve(opts)
  return require("kpiwatch.http_server").serve(opts)
end

return M
