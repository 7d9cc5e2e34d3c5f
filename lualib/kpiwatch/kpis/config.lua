-- kpiwatch.kpis.config: the options of the client. Configuration
-- precedence (call opts, kpis.configure, command-line flags and
-- kpis.point_at, the environment, the defaults), the one config cache, the
-- checks a request needs (credentials, base URL, CA file) and the secrets.

local errors = require "kpiwatch.errors"
local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"
local M = require "kpiwatch.kpis.api"

local type, tostring, tonumber = type, tostring, tonumber
local format = string.format
local math_type = math.type

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
  for k, v in pairs(base) do
    -- what prepare derived from the base (headers, URLs, secrets) is
    -- derived again from these options
    if CHECK[k] then c[k] = v end
  end
  for k, v in pairs(opts) do c[k] = (CHECK[k](v)) end
  return c
end

-- The configured secrets, for shared.redact.
local function secrets_of(c)
  local list = {}
  for key in pairs(SECRET) do
    if type(c[key]) == "string" then list[#list + 1] = c[key] end
  end
  return list
end

-- Checks what a request needs (credentials, base URL) once per resolved
-- config, and builds the request headers and the list of secrets once.
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
  c.secrets = secrets_of(c) -- every response is checked for them
  c.prepared = true
  return c
end

local function redact(c, s)
  return shared.redact(s, c.secrets or secrets_of(c))
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

return { CHECK = CHECK, resolve = resolve, prepare = prepare, redact = redact }
