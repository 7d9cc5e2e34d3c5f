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
local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"
local retry = require "kpiwatch.http_retry"

local M = {}

local type, tostring, tonumber, pcall, error = type, tostring, tonumber, pcall, error
local format = string.format
local math_type = math.type

local http -- loaded on first request, so `kpis.configure` costs no libcurl
local task

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

local function lazy()
  if not http then
    http = require "kpiwatch.http"
    task = require "kpiwatch.task"
  end
end

-- ---- options ------------------------------------------------------------------

M.DEFAULT_BASE_URL = "https://api.futureagi.com"

local DEFAULTS = {
  base_url = M.DEFAULT_BASE_URL,
  timeout = 30,           -- seconds, per attempt
  retries = 3,            -- retries after the first attempt
  backoff = 0.5,          -- base of the exponential backoff, seconds
  backoff_max = 10,       -- cap of one backoff delay, seconds
  max_retry_after = 60,   -- a 429 asking to wait longer than this is not retried
  concurrency = 16,       -- default for get_all
  rate = false,           -- "100/min": client-side limit shared by the script
  burst = 1,              -- requests the rate limit lets through at once
  allow_insecure_http = false,
  verbose = false,
}

-- option -> checker(value) returning the normalized value or nil, message
local function non_negative(name)
  return function(v)
    if type(v) ~= "number" or v ~= v or v < 0 then return nil, name .. " must be a number >= 0" end
    return v
  end
end
local function boolean(name)
  return function(v)
    if type(v) ~= "boolean" then return nil, name .. " must be true or false" end
    return v
  end
end
local function string_opt(name)
  return function(v)
    if type(v) ~= "string" then return nil, name .. " must be a string" end
    return v
  end
end

--- The options of `kpis.configure` and of a call. Unknown or wrongly typed
--- options raise a `config` error.
---@class kpiwatch.kpis.Options
---@field base_url? string API base URL (default `https://api.futureagi.com`)
---@field api_key? string default `$FI_API_KEY`
---@field secret_key? string default `$FI_SECRET_KEY`
---@field timeout? number seconds per attempt (default 30; at most 1000000)
---@field retries? integer retries after the first attempt (default 3; at most 100)
---@field backoff? number base of one backoff delay, seconds (default 0.5)
---@field backoff_max? number cap of one backoff delay, seconds (default 10)
---@field max_retry_after? number a 429 asking to wait longer is not retried (default 60)
---@field rate? string|false client-side limit for the whole script: `"100/min"`, `"10/s"`, `"5000/hour"` (default off)
---@field burst? integer requests the rate limit lets through at once (default 1)
---@field concurrency? integer workers of `get_all` and `each` (default 16)
---@field allow_insecure_http? boolean allow plain `http://` to a host other than loopback (default false)
---@field verbose? boolean trace each request on stderr, never a secret (default false)
---@field ca_file? string CA certificates (PEM) to verify TLS with (default `$KPIWATCH_CA_FILE`)
---@field headers? table<string, string> extra request headers
local CHECK = {
  base_url = string_opt("base_url"),
  api_key = string_opt("api_key"),
  secret_key = string_opt("secret_key"),
  -- finite and within what kpiwatch.http accepts (one million seconds)
  timeout = function(v)
    if type(v) ~= "number" or not (v > 0 and v <= 1e6) then
      return nil, "timeout must be a positive number of seconds, at most 1000000"
    end
    return v
  end,
  retries = function(v)
    if math_type(v) == "float" and v == math.floor(v) then v = math.tointeger(v) end
    if math_type(v) ~= "integer" or v < 0 or v > 100 then
      return nil, "retries must be an integer from 0 to 100"
    end
    return v
  end,
  backoff = non_negative("backoff"),
  backoff_max = non_negative("backoff_max"),
  max_retry_after = non_negative("max_retry_after"),
  concurrency = function(v)
    if math_type(v) ~= "integer" or v < 1 then return nil, "concurrency must be a positive integer" end
    return v
  end,
  rate = function(v)
    if v == false then return false end
    if type(v) ~= "string" then return nil, "rate must be a string like \"100/min\", or false" end
    local n, unit = v:match("^%s*(%d+%.?%d*)%s*/%s*(%a+)%s*$")
    local seconds = { s = 1, sec = 1, second = 1, m = 60, min = 60, minute = 60, h = 3600, hour = 3600 }
    local per = seconds[unit and unit:lower() or ""]
    n = tonumber(n)
    if not n or not per or n <= 0 then
      return nil, "rate must look like \"100/min\", \"10/s\" or \"5000/hour\", got '" .. v .. "'"
    end
    return v
  end,
  burst = function(v)
    if math_type(v) ~= "integer" or v < 1 then return nil, "burst must be a positive integer" end
    return v
  end,
  allow_insecure_http = boolean("allow_insecure_http"),
  verbose = boolean("verbose"),
  ca_file = string_opt("ca_file"),
  headers = function(v)
    if type(v) ~= "table" then return nil, "headers must be a table" end
    return v
  end,
}

local SECRET = { api_key = true, secret_key = true }

local configured = {} -- kpis.configure
local flags = {}      -- kpis._set_flags, kpis.point_at (command line, --sandbox)
local generation = 0  -- bumped on every change, invalidates the cache
local cache           -- resolved options without call opts

local function check_opts(t, where)
  for k, v in pairs(t) do
    local check = CHECK[k]
    if not check then
      errors.raise("config", where .. ": unknown option '" .. tostring(k) .. "'")
    end
    local nv, msg = check(v)
    if nv == nil then errors.raise("config", where .. ": " .. msg) end
  end
end

-- configure{...}: options for every later call of this script. A key set
-- to false (rate, verbose, ...) turns it off; kpis.configure{} keeps all.
--- Set options for the whole script (they override the command line and the
--- environment). Setting an option to `false` turns it off.
---@param t kpiwatch.kpis.Options
function M.configure(t)
  if type(t) ~= "table" then
    errors.raise("config", "kpis.configure: expected a table of options, got " .. type(t))
  end
  check_opts(t, "kpis.configure")
  for k, v in pairs(t) do configured[k] = (CHECK[k](v)) end
  generation = generation + 1
  cache = nil
end

-- _set_flags{base_url=, timeout=, retries=, verbose=, allow_insecure_http=,
-- api_key=, secret_key=}: the command line's layer (the CLI calls it).
-- Merges into what was set before.
function M._set_flags(t)
  check_opts(t, "command line")
  for k, v in pairs(t) do flags[k] = (CHECK[k](v)) end
  generation = generation + 1
  cache = nil
end

--- Point the client at an API endpoint (the sandbox, a staging server): its base
--- URL and credentials, at the level of command-line flags (a script's
--- `kpis.configure` still wins). `kpiwatch --sandbox` does it with the sandbox.
---@param endpoint {base_url?: string, url?: string, api_key?: string, secret_key?: string} a sandbox object (`sandbox.start`) fits
function M.point_at(endpoint)
  if type(endpoint) ~= "table" then
    errors.raise("config", "kpis.point_at: expected {base_url=, api_key=, secret_key=}, got "
      .. type(endpoint))
  end
  local t = { base_url = endpoint.base_url or endpoint.url, api_key = endpoint.api_key,
    secret_key = endpoint.secret_key }
  if t.base_url == nil then errors.raise("config", "kpis.point_at: base_url is required") end
  M._set_flags(t)
end

-- Forget every configure and flag (tests).
function M._reset()
  configured, flags = {}, {}
  generation = generation + 1
  cache = nil
  M._buckets = {}
end

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function is_loopback(host)
  host = host:lower()
  return host == "localhost" or host:sub(-10) == ".localhost" or host == "[::1]"
    or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- Whether libcurl would send a plain http:// request for host through a
-- proxy: http_proxy or all_proxy set (libcurl ignores HTTP_PROXY), host
-- not in no_proxy. Loopback never is (runtime/http_client.c).
local function proxied(host)
  if not (getenv("http_proxy") or getenv("all_proxy") or getenv("ALL_PROXY")) then return false end
  local skip = getenv("no_proxy") or getenv("NO_PROXY") or ""
  if skip == "*" or is_loopback(host) then return false end
  host = host:lower():gsub("^%[(.*)%]$", "%1")
  for entry in skip:lower():gmatch("[^,%s]+") do
    entry = entry:gsub("^%.", "")
    if host == entry or host:sub(-#entry - 1) == "." .. entry then return false end
  end
  return true
end

-- Split and check a base URL; returns the URL without trailing slashes, or
-- raises a config error. No userinfo (a password in a URL would end up in
-- traces), no query or fragment.
local function check_base_url(url, allow_insecure)
  local function bad(why)
    -- userinfo may hold a password: never echoed
    local shown = model.snippet(url:gsub("^([^/]*//)[^/@]*@", "%1[REDACTED]@"))
    errors.raise("config", format("invalid base URL '%s': %s", shown, why))
  end
  local scheme, authority, path = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then bad("expected http(s)://host[:port][/path]") end
  scheme = scheme:lower()
  if scheme ~= "https" and scheme ~= "http" then bad("the scheme must be https or http") end
  if authority:find("@", 1, true) then
    bad("credentials in the URL are not allowed; use FI_API_KEY and FI_SECRET_KEY")
  end
  if authority == "" then bad("missing host") end
  local host, port = authority:match("^(%[[%x:.]+%])(.*)$")
  if not host then host, port = authority:match("^([%w.-]*)(.*)$") end
  if host == "" and authority:sub(1, 1) == "[" then bad("bad IPv6 address (expected [address])") end
  if host == "" and port:sub(1, 1) == ":" then bad("missing host") end
  if host == "" or (port ~= "" and port:sub(1, 1) ~= ":") then
    bad("invalid character in the host (expected a host name, an IP address or [IPv6];"
      .. " an international domain name in its xn-- form)")
  end
  if #host > 253 then bad(format("the host name is %d characters long (DNS allows 253)", #host)) end
  if port ~= "" then
    local p = port:match("^:(%d+)$")
    if not p or tonumber(p) < 1 or tonumber(p) > 65535 then bad("bad port") end
  end
  if path:find("[?#]") then bad("a query or fragment is not allowed") end
  if path:find("[%s%c]") then bad("whitespace in the path") end
  if scheme == "http" and not allow_insecure and not is_loopback(host) then
    errors.raise("config", format(
      "refusing plain http:// to %s: the credentials would travel unencrypted; use https://,"
        .. " or set allow_insecure_http (--allow-insecure-http) if you mean it",
      host))
  end
  if scheme == "http" and proxied(host) then
    errors.raise("config", format(
      "refusing plain http:// to %s through the proxy of http_proxy/all_proxy: it would read the credentials;"
        .. " use https://, or add the host to no_proxy",
      host))
  end
  return scheme .. "://" .. authority .. path:gsub("/+$", "")
end
M._check_base_url = check_base_url

local function resolve_base()
  if cache then return cache end
  local c = {}
  for k, v in pairs(DEFAULTS) do c[k] = v end
  c.base_url = getenv("FI_BASE_URL") or c.base_url
  c.api_key = getenv("FI_API_KEY")
  c.secret_key = getenv("FI_SECRET_KEY")
  c.ca_file = getenv("KPIWATCH_CA_FILE")
  for k, v in pairs(flags) do c[k] = v end
  for k, v in pairs(configured) do c[k] = v end
  c.generation = generation
  cache = c
  return c
end

-- The options of one call: the cached base, overlaid with opts.
local function resolve(opts)
  local base = resolve_base()
  if opts == nil then return base end
  if type(opts) ~= "table" then
    errors.raise("config", "kpis: options must be a table, got " .. type(opts))
  end
  if next(opts) == nil then return base end
  check_opts(opts, "kpis")
  local c = {}
  for k, v in pairs(base) do c[k] = v end
  for k, v in pairs(opts) do c[k] = (CHECK[k](v)) end
  c.generation = nil
  return c
end

-- Checks what a request needs (credentials, base URL) once per resolved
-- config, and builds the request headers once.
local function prepare(c)
  if c.prepared then return c end
  if not c.api_key or not c.secret_key then
    local msg
    if not c.api_key and not c.secret_key then
      msg = "no API credentials: set FI_API_KEY and FI_SECRET_KEY"
    else
      msg = "missing " .. (c.api_key and "FI_SECRET_KEY" or "FI_API_KEY")
        .. ": both FI_API_KEY and FI_SECRET_KEY are needed"
    end
    errors.raise("config", msg .. " (or call kpis.configure{api_key=..., secret_key=...})",
      { retryable = false })
  end
  for field, var in pairs({ api_key = "FI_API_KEY", secret_key = "FI_SECRET_KEY" }) do
    -- a header value cannot hold CR, LF or NUL: say which setting, never the value
    if c[field]:find("%c") then
      errors.raise("config", format("%s contains a control character (CR, LF, ...): not a valid credential",
        c[field] == getenv(var) and var or field), { retryable = false })
    end
  end
  c.base = check_base_url(c.base_url, c.allow_insecure_http)
  c.root = c.base .. "/simulate/test-executions/"
  if c.ca_file then
    -- libcurl would only say "error setting certificate file" on the first
    -- request, and as a tls error at that
    local f, ferr = io.open(c.ca_file, "r")
    if not f then
      errors.raise("config", "cannot read the CA file (ca_file, --ca-file, KPIWATCH_CA_FILE) "
        .. model.snippet(tostring(ferr)), { retryable = false })
    end
    f:close()
  end
  local h = { ["Accept"] = "application/json" }
  if c.headers then
    for k, v in pairs(c.headers) do
      local lk = type(k) == "string" and k:lower()
      if lk ~= "x-api-key" and lk ~= "x-secret-key" then h[k] = v end
    end
  end
  h["X-Api-Key"] = c.api_key
  h["X-Secret-Key"] = c.secret_key
  c.req_headers = h
  c.prepared = true
  return c
end

-- Replace every occurrence of a secret in s.
-- The configured secrets, for shared.redact.
local function secrets_of(c)
  local list = {}
  for key in pairs(SECRET) do
    if type(c[key]) == "string" then list[#list + 1] = c[key] end
  end
  return list
end

local function redact(c, s)
  return shared.redact(s, secrets_of(c))
end

-- _secrets() -> the credentials in effect (for the REPL's history filter,
-- and notify.exec keeps them out of a hook's environment).
function M._secrets()
  return secrets_of(resolve())
end

-- config() -> the effective options, with the secrets shown as
-- "[REDACTED]" (or nil when unset); prints as one line.
local ConfigView = {
  __name = "kpiwatch.kpis.config",
  __tostring = function(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do
      local v = t[k]
      if type(v) == "string" then v = format("%q", v) else v = tostring(v) end
      parts[#parts + 1] = k .. "=" .. v
    end
    return "kpis.config{" .. table.concat(parts, ", ") .. "}"
  end,
}

--- The effective options; `tostring` of the result prints them, with the
--- secrets as `[REDACTED]`.
---@param opts? kpiwatch.kpis.Options options of a call to overlay
---@return table config
function M.config(opts)
  local c = resolve(opts)
  local out = {}
  for k in pairs(CHECK) do
    local v = c[k]
    if SECRET[k] then
      if v ~= nil then out[k] = "[REDACTED]" end
    elseif k == "headers" then
      if v then
        local h = {}
        for hk in pairs(v) do h[#h + 1] = tostring(hk) end
        table.sort(h)
        out.headers = table.concat(h, ",")
      end
    else
      out[k] = v
    end
  end
  return setmetatable(out, ConfigView)
end

-- ---- ids ------------------------------------------------------------------------

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

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
  if #id ~= 36 or not id:match(UUID) then
    errors.raise("invalid_id", format('not a UUID: "%s"', show_id(id)),
      { retryable = false, execution_id = nil })
  end
  return id:lower()
end
--- Check an execution id without a request.
---@param id string
---@return string id the id in lower case; raises `invalid_id` when it is not a UUID
M.check_id = check_id

--- Whether `id` is a canonical UUID string.
---@param id any
---@return boolean
function M.is_uuid(id)
  return type(id) == "string" and #id == 36 and id:match(UUID) ~= nil
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

local function acquire(c)
  if not c.rate then return 0 end
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
  lazy()
  http_request = http_request or http.request
  local url, method = req.url, req.method
  local stats = M._stats
  local attempt = 0
  while true do
    attempt = attempt + 1
    local waited = acquire(c)
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
          local secrets = secrets_of(c)
          local body = resp.body
          for _, sec in ipairs(secrets) do
            if body:find(sec, 1, true) or body:find("\\u") then
              -- a KPI or execution object keeps its body behind raw();
              -- a list page is the decoded body itself
              shared.redact_tree(type(k.raw) == "function" and k:raw() or k, secrets)
              break
            end
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

-- _client([opts]) -> the resolved, checked options of one call (c.base,
-- c.req_headers, c.timeout, ...) for modules that build their own requests
-- and send them with kpis._send (kpiwatch.execution).
function M._client(opts)
  local c = prepare(resolve(opts))
  lazy()
  return c
end

--- Fetch the KPIs of one execution, retrying what is worth a retry. Many
--- `kpis.get` calls in separate tasks run concurrently.
---@async
---@param id string the execution id (a UUID)
---@param opts? kpiwatch.kpis.Options options of this call
---@return kpiwatch.Kpi kpi raises an error object when the request fails
function M.get(id, opts)
  local c = prepare(resolve(opts))
  id = check_id(id)
  lazy()
  local req = { method = "GET", url = c.root .. id .. "/kpis/", headers = c.req_headers, timeout = c.timeout,
    ca_file = c.ca_file }
  return send(c, req, id, model.parse)
end

-- Run up to `concurrency` workers over ids; each result (a KPI object or
-- an error object) goes to deliver(r, id, i) as it arrives.
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
  -- an error raised by deliver) stops the pool and is raised here.
  local get = M.get
  task.map(ids, function(id, i)
    local ok, r = pcall(get, id, call_opts)
    if not ok and not errors.is(r) then error(r, 0) end
    deliver(r, id, i)
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
  run_workers(ids, opts, function(r, id, i)
    if errors.is(r) then failed = failed + 1 else fetched = fetched + 1 end
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
-- run_test_id, run, wait, calls, scores): see kpiwatch.execution.
for _, name in ipairs({ "execution", "executions", "run_test_id", "run", "wait", "calls", "scores" }) do
  M[name] = function(...) return require("kpiwatch.execution")[name](...) end
end

return M
