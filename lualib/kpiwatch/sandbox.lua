-- kpiwatch.sandbox: a stand-in for the Future AGI KPIs endpoint, on
-- loopback, built on http.serve.
--
--   local sb = sandbox.start{port = 0, fixtures_dir = "dir", faults = {...}}
--   sb.url, sb.port, sb.api_key, sb.secret_key, sb:close()
--
-- It serves GET /simulate/test-executions/{id}/kpis/ (with the trailing
-- slash, as the API routes it) for the fixtures of kpiwatch.fixtures and
-- any <uuid>.json files of fixtures_dir, the run tests, executions and
-- calls of kpiwatch.sandbox_runs (sb.runs; per-page faults with the key
-- "<id>/page/<n>"), answers as the real API does
-- (401 with its error body and WWW-Authenticate: ApiKey, 404 with its
-- not-found body, 405 for other methods), and injects faults:
--
--   per request: header `X-Sandbox-Fault: SPEC` or query `?fault=SPEC`
--   per id:      faults.ids = {[id] = SPEC} (every request), the fault
--                fixtures of kpiwatch.fixtures, sb:set_fault(id, SPEC),
--                sb:inject(id, SPEC [, times]) (the next requests only)
--   at random:   faults.rates = {["500"] = 0.1, drop = 0.05, ...} drawn
--                from a PRNG seeded with faults.seed (default 1), so a
--                run is reproducible
--
-- SPEC is one of, or several joined with "+" (e.g. "delay:2+500"):
--   500                  500 with the server_error body
--   502 | 503 | 504      an HTML gateway page (nginx style)
--   429[:N]              429, Retry-After: N seconds (default 1), rate-limit body
--   429-date[:N]         the same with Retry-After as an HTTP date
--   delay:S | slow:S     answer (normally) after S seconds
--   broken               200 with the body cut in half (invalid JSON)
--   html                 200 with an HTML page
--   drop                 close the connection without an answer
--   401 | 404            the real error answers
--   flaky                odd-numbered requests for the id get 500
--   ok | none            no fault (overrides the id's own fault)

---@brief
--- A faithful local stand-in of the KPIs endpoint on loopback, built on
--- `http.serve`: `GET /simulate/test-executions/{id}/kpis/` for the built-in
--- fixtures (`kpiwatch.fixtures`) and any `<uuid>.json` of a fixtures folder,
--- answering as the real API does (401 with its error body and
--- `WWW-Authenticate: ApiKey`, 404 with its not-found body, 405 for other
--- methods). Credentials are checked before faults.
---
--- Faults, per request (header `X-Sandbox-Fault: SPEC` or query `?fault=SPEC`),
--- per id (`faults.ids`, `sb:set_fault`, `sb:inject`) or at random from a seeded
--- PRNG (`faults.rates`). SPEC is one of `500`, `502`/`503`/`504` (HTML gateway
--- pages), `429[:N]`, `429-date[:N]`, `delay:S`, `broken`, `html`, `drop`,
--- `flaky`, `401`, `404`, `ok`, or several joined with `+` (`delay:2+500`).

local M = {}

--- The API key the sandbox accepts by default.
---@type string
M.API_KEY = "kw-sandbox-api-key"
--- The secret key the sandbox accepts by default.
---@type string
M.SECRET_KEY = "kw-sandbox-secret-key"

local format = string.format

local JSON = { ["content-type"] = "application/json" }
local HTML = { ["content-type"] = "text/html" }

local BODY_NOT_AUTHENTICATED = '{"status": false, "type": "authentication_error", "code": "not_authenticated",'
  .. ' "detail": "Authentication credentials were not provided."}'
local BODY_AUTH_FAILED = '{"status": false, "type": "authentication_error", "code": "authentication_failed",'
  .. ' "detail": "Invalid API key or secret key."}'
local BODY_NOT_FOUND = '{"status": false, "type": "client_error", "code": "not_found",'
  .. ' "detail": "Test execution not found."}'
local BODY_ROUTE_NOT_FOUND = '{"status": false, "type": "client_error", "code": "not_found", "detail": "Not found."}'
local BODY_SERVER_ERROR = '{"status": false, "type": "server_error", "code": "server_error",'
  .. ' "detail": "A server error occurred."}'

local GATEWAY_TITLE = {
  [502] = "502 Bad Gateway", [503] = "503 Service Temporarily Unavailable", [504] = "504 Gateway Time-out",
}

local function gateway_page(status)
  local t = GATEWAY_TITLE[status]
  return "<html>\r\n<head><title>" .. t .. "</title></head>\r\n<body>\r\n<center><h1>" .. t
    .. "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
end

local HTML_200 = "<!DOCTYPE html>\n<html lang=\"en\">\n"
  .. "<head><meta charset=\"utf-8\"><title>Future AGI</title></head>\n"
  .. "<body><div id=\"root\"></div><script src=\"/static/js/main.js\"></script></body>\n</html>\n"

local http_date = require("kpiwatch.time").http_date
local shared = require "kpiwatch.shared"

-- A small seeded PRNG of our own (64-bit LCG, high bits), so that the
-- fault sequence depends on the seed only, not on who else uses math.random.
local function new_rng(seed)
  local s = math.tointeger(seed) or 1
  return function()
    s = s * 6364136223846793005 + 1442695040888963407
    return ((s >> 11) & 0x1FFFFFFFFFFFFF) / 9007199254740992.0
  end
end

-- parse_fault(spec) -> list of {kind=, ...} or nil, message
local function parse_fault(spec)
  if type(spec) ~= "string" or spec == "" or #spec > 200 then return nil, "empty or oversize fault spec" end
  local out = {}
  for part in spec:gmatch("[^+]+") do
    local p = part:lower():match("^%s*(.-)%s*$")
    local f
    if p == "500" then f = { kind = "status", status = 500 }
    elseif p == "502" or p == "503" or p == "504" then f = { kind = "gateway", status = tonumber(p) }
    elseif p == "401" then f = { kind = "status", status = 401 }
    elseif p == "404" then f = { kind = "status", status = 404 }
    elseif p:match("^429") then
      local date, n = p:match("^429(%-?d?a?t?e?):?([%d.]*)$")
      if not date or (date ~= "" and date ~= "-date") then return nil, "bad 429 fault '" .. part .. "'" end
      local after = tonumber(n) or 1
      -- a date beyond os.date's range would make the handler raise
      if after > 1e9 then return nil, "bad 429 fault '" .. part .. "' (at most 1e9 seconds)" end
      f = { kind = "ratelimit", after = after, date = date == "-date" }
    elseif p:match("^delay:") or p:match("^slow:") then
      local s = tonumber(p:match(":(.*)$"))
      if not s or not (s >= 0 and s < math.huge) then return nil, "bad delay in '" .. part .. "'" end
      f = { kind = "delay", seconds = s }
    elseif p == "broken" then f = { kind = "broken" }
    elseif p == "html" then f = { kind = "html" }
    elseif p == "drop" then f = { kind = "drop" }
    elseif p == "flaky" then f = { kind = "flaky" }
    elseif p == "ok" or p == "none" then f = { kind = "none" }
    else return nil, "unknown fault '" .. part .. "'" end
    out[#out + 1] = f
  end
  if #out == 0 then return nil, "empty fault spec" end
  return out
end
M.parse_fault = parse_fault

local function must_fault(spec, where)
  local f, err = parse_fault(spec)
  if not f then
    require("kpiwatch.errors").raise("config", (where or "sandbox") .. ": " .. err)
  end
  return f
end

local function url_unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query_fault(q)
  if q == nil or q == "" then return nil end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if k == "fault" then return url_unescape(v) end
  end
  return nil
end

local ROUTE = "^/simulate/test%-executions/([^/]+)/kpis/$"

-- The API's requests are GETs: a request body is never needed, and
-- http.serve's own default (64 MiB per request) is for servers that take
-- uploads. Small, so a flood of bodies cannot exhaust memory.
M.MAX_BODY = 64 * 1024

-- start{...} -> sandbox object. Options:
--   host ("127.0.0.1"), port (0: any free port)
--   api_key, secret_key (the sandbox's fixed ones by default)
--   builtin (true): serve kpiwatch.fixtures
--   fixtures: list of {id=, body=JSON text [, fault=SPEC]}
--   fixtures_dir: a folder of <uuid>.json bodies (served byte for byte)
--   faults: {ids = {[id] = SPEC}, rates = {[SPEC] = probability}, seed = n}
--   log: true (stderr) or function(line): one line per request
--   speed (1): how fast the run tests' executions move through their
--     phases (kpiwatch.sandbox_runs.PHASES, about 7 s at 1; 50 -> 0.14 s)
--   max_body (M.MAX_BODY, 64 KiB): the most a request body may have; more
--     is answered 413 before it is buffered or the credentials checked
--- The options of `sandbox.start`.
---@class kpiwatch.sandbox.Options
---@field host? string the address to bind (default `127.0.0.1`)
---@field port? integer default 0: any free port
---@field api_key? string the credentials to accept (default the sandbox's own)
---@field secret_key? string
---@field builtin? boolean serve the built-in fixtures (default true)
---@field fixtures? {id: string, body: string, fault?: string}[] more executions
---@field fixtures_dir? string serve every `<uuid>.json` of this folder byte for byte
---@field faults? {ids?: table<string, string>, rates?: table<string, number>, seed?: integer} faults per id, and at random (seed 1)
---@field log? boolean|fun(line: string) one line per request (stderr when `true`)
---@field background? boolean do not keep the process alive
---@field speed? number how fast the run tests' executions move through their phases (default 1: about 7 s)
---@field max_body? integer the largest request body (default 64 KiB; more is answered 413 before auth)

--- Start a sandbox server.
---@param opts? kpiwatch.sandbox.Options
---@return kpiwatch.sandbox.Sandbox sb
function M.start(opts)
  opts = opts or {}
  local http = require "kpiwatch.http"
  local task = require "kpiwatch.task"
  local fixtures = require "kpiwatch.fixtures"

  --- A running sandbox, as `sandbox.start` returns it. `tostring(sb)` names its
  --- URL and fixture count.
  ---@class kpiwatch.sandbox.Sandbox
  ---@field url string `http://127.0.0.1:<port>`
  ---@field host string
  ---@field port integer
  ---@field api_key string the credentials it accepts
  ---@field secret_key string
  ---@field requests integer requests served so far
  ---@field in_flight integer
  ---@field max_in_flight integer
  local sb = {
    api_key = opts.api_key or M.API_KEY,
    secret_key = opts.secret_key or M.SECRET_KEY,
    requests = 0,
  }
  local store = {}       -- id -> {body=, fault=parsed, name=}
  local order = {}       -- ids in the order they were added
  local always = {}      -- id -> parsed fault
  local queue = {}       -- id -> list of parsed faults (consumed)
  local counts = {}      -- id -> requests seen
  local rates            -- list of {p=, fault=} (cumulative)
  local rng = new_rng(1)

  local function add_fixture(f, where)
    local id = shared.uuid(f.id)
    if not id then
      require("kpiwatch.errors").raise("config",
        (where or "sandbox") .. ": fixture id is not a UUID: " .. tostring(f.id))
    end
    if not store[id] then order[#order + 1] = id end
    store[id] = { body = f.body, name = f.name, description = f.description }
    if f.fault then always[id] = must_fault(f.fault, "fixture " .. id) end
  end

  if opts.builtin ~= false then
    for _, f in ipairs(fixtures.list()) do add_fixture(f) end
  end
  for _, f in ipairs(opts.fixtures or {}) do add_fixture(f) end
  if opts.fixtures_dir then
    for _, f in ipairs(fixtures.load_dir(opts.fixtures_dir)) do add_fixture(f, opts.fixtures_dir) end
  end

  -- Methods work called as sb:m(...) and as sb.m(...).
  local function args(first, ...)
    if first == sb then return ... end
    return first, ...
  end

  --- Give every request for `id` the fault `spec` (`nil` removes it).
  ---@param id string
  ---@param spec? string
  function sb.set_fault(...)
    local id, spec = args(...)
    always[id:lower()] = spec and must_fault(spec) or nil
  end

  --- Give the next `times` requests for `id` the fault `spec`.
  ---@param id string
  ---@param spec string
  ---@param times? integer default 1
  function sb.inject(...)
    local id, spec, times = args(...)
    id = id:lower()
    local f = must_fault(spec)
    local q = queue[id] or {}
    for _ = 1, times or 1 do q[#q + 1] = f end
    queue[id] = q
  end

  --- Inject faults at random: `rates[spec]` is the probability of each (their
  --- sum at most 1), drawn from a PRNG seeded with `seed`.
  ---@param rates? table<string, number>
  ---@param seed? integer default 1
  function sb.set_rates(...)
    local r, seed = args(...)
    rates = nil
    if r and next(r) then
      local specs = {}
      for spec in pairs(r) do specs[#specs + 1] = spec end
      table.sort(specs)
      rates = {}
      local acc = 0
      for _, spec in ipairs(specs) do
        local p = tonumber(r[spec])
        if not p or p < 0 or p > 1 then
          require("kpiwatch.errors").raise("config", "sandbox: fault rate for '" .. spec .. "' must be within 0..1")
        end
        acc = acc + p
        rates[#rates + 1] = { p = acc, fault = must_fault(spec) }
      end
      if acc > 1 + 1e-9 then
        require("kpiwatch.errors").raise("config", "sandbox: fault rates add up to more than 1")
      end
    end
    rng = new_rng(seed or 1)
  end

  local faults = opts.faults or {}
  for id, spec in pairs(faults.ids or {}) do always[id:lower()] = must_fault(spec, "fault for " .. id) end
  for id, list in pairs(faults.queue or {}) do
    for _, spec in ipairs(type(list) == "table" and list or { list }) do sb.inject(id, spec) end
  end
  if faults.rates then sb.set_rates(faults.rates, faults.seed) end

  --- Requests served for `id`, or in all.
  ---@param id? string
  ---@return integer count
  function sb.count(...)
    local id = args(...)
    if id == nil then return sb.requests end
    return counts[id:lower()] or 0
  end

  --- Set the request counts back to 0.
  function sb.reset_counts()
    counts = {}
    sb.requests = 0
    sb.max_in_flight = sb.in_flight
  end

    --- The ids of the fixtures served, in order (built-in first).
  ---@return string[] ids
  function sb.ids()
    local out = {}
    for i, id in ipairs(order) do out[i] = id end
    return out
  end

  --- The fixture served for `id`.
  ---@param id string
  ---@return {body: string, name?: string, description?: string}|nil fixture
  function sb.fixture(...)
    local id = args(...)
    return store[id and id:lower()]
  end

  local log = opts.log
  if log == true then log = function(line) io.stderr:write(line, "\n") end end

  local function draw()
    if not rates then return nil end
    local r = rng()
    for _, e in ipairs(rates) do
      if r < e.p then return e.fault end
    end
    return nil
  end

  -- Run tests, executions and calls (kpiwatch.sandbox_runs); their faults
  -- and counts are keyed by the run test or execution id, and for a page
  -- of a list by "<id>/page/<n>" as well.
  local speed = opts.speed or 1
  if type(speed) ~= "number" or not (speed > 0 and speed < math.huge) then
    require("kpiwatch.errors").raise("config", "sandbox: speed must be a positive number")
  end
  local runs = require("kpiwatch.sandbox_runs").new { speed = speed, new_rng = new_rng }
  sb.runs = runs
  -- The KPI fixtures (built-in, fixtures=, fixtures_dir) are executions
  -- that completed: their status read (the gate's first request) says so.
  function runs.static_detail(id)
    local f = store[id]
    if not (f and f.body) then return nil end
    local json = require "kpiwatch.json"
    local atype = f.body:match('"agent_type"%s*:%s*"(%a+)"')
    return { count = 0, next = json.null, previous = json.null, results = json.array(), total_pages = 1,
      current_page = 1, column_order = json.array(), error_messages = json.array(), status = "completed",
      provider = json.null, agent_type = atype or json.null }
  end

  local function answer(req)
    local id = req.path:match(ROUTE)
    local route
    if not id then
      route = runs.route(req)
      if not route then return 404, JSON, BODY_ROUTE_NOT_FOUND end
      id = route.key
    end

    id = id:lower()
    local n = (counts[id] or 0) + 1
    counts[id] = n
    local page_key = route and route.page_key and route.page_key:lower()
    if page_key then counts[page_key] = (counts[page_key] or 0) + 1 end

    -- Authentication comes first, as in the API's views.
    local h = req.headers
    local key, secret = h["x-api-key"], h["x-secret-key"]
    if not key or not secret or key == "" or secret == "" then
      return 401, { ["content-type"] = "application/json", ["www-authenticate"] = "ApiKey" }, BODY_NOT_AUTHENTICATED
    end
    if key ~= sb.api_key or secret ~= sb.secret_key then
      return 401, { ["content-type"] = "application/json", ["www-authenticate"] = "ApiKey" }, BODY_AUTH_FAILED
    end
    local allowed = route and route.methods or "GET"
    if req.method ~= allowed and not (allowed == "GET" and req.method == "HEAD") then
      return 405, { ["content-type"] = "application/json", allow = allowed == "GET" and "GET, HEAD" or allowed },
        format('{"status": false, "type": "client_error", "code": "method_not_allowed",'
          .. ' "detail": "Method \\"%s\\" not allowed."}',
          req.method:gsub("[^%w%-_]", "?"))
    end

    -- The fault of this request: its own, then the id's queued and
    -- permanent ones, then a random draw.
    local spec = h["x-sandbox-fault"] or (req.params and req.params.fault) or query_fault(req.query)
    local fault
    if spec then
      local perr
      fault, perr = parse_fault(spec)
      if not fault then
        return 400, JSON, format('{"status": false, "type": "client_error", "code": "invalid_fault", "detail": "%s"}',
          (perr:gsub('[%c"\\]', "?")))
      end
    else
      local q = page_key and queue[page_key]
      if not (q and #q > 0) then q = queue[id] end
      if q and #q > 0 then
        fault = table.remove(q, 1)
      else
        fault = (page_key and always[page_key]) or always[id] or draw()
      end
    end

    local body
    if not route then
      local fixture = store[id]
      body = fixture and fixture.body or runs.kpis_body(id)
    end
    if fault then
      for _, f in ipairs(fault) do
        local k = f.kind
        if k == "delay" then
          task.sleep(f.seconds)
        elseif k == "status" then
          if f.status == 500 then return 500, JSON, BODY_SERVER_ERROR end
          if f.status == 401 then
            return 401, { ["content-type"] = "application/json", ["www-authenticate"] = "ApiKey" }, BODY_AUTH_FAILED
          end
          if f.status == 404 then return 404, JSON, BODY_NOT_FOUND end
        elseif k == "gateway" then
          return f.status, HTML, gateway_page(f.status)
        elseif k == "ratelimit" then
          local after = f.after
          local secs = math.ceil(after)
          local ra = f.date and http_date(os.time() + secs)
            or (math.tointeger(after) and tostring(math.tointeger(after)) or tostring(after))
          return 429, { ["content-type"] = "application/json", ["retry-after"] = ra },
            format('{"status": false, "result": {"code": "RATE_LIMITED",'
              .. ' "message": "Rate limit exceeded. Please retry after %d seconds.", "retry_after": %d}}', secs, secs)
        elseif k == "html" then
          return 200, HTML, HTML_200
        elseif k == "drop" then
          return "drop"
        elseif k == "flaky" then
          if n % 2 == 1 then return 500, JSON, BODY_SERVER_ERROR end
        elseif k == "broken" then
          if route then
            -- "200 with the body cut in half": an error answer stays whole
            local st, hd, b = route.handle(req)
            if st ~= 200 then return st, hd, b end
            return st, hd, b:sub(1, #b // 2)
          end
          if body then return 200, JSON, body:sub(1, #body // 2) end
          return 200, JSON, '{"total_calls": 12, "avg_sc'
        end
      end
    end
    if route then return route.handle(req) end
    if not body then return 404, JSON, BODY_NOT_FOUND end
    return 200, JSON, body
  end

  sb.in_flight, sb.max_in_flight = 0, 0
  local function handler(req)
    sb.requests = sb.requests + 1
    local inf = sb.in_flight + 1
    sb.in_flight = inf
    if inf > sb.max_in_flight then sb.max_in_flight = inf end
    local okh, status, headers, body = pcall(answer, req)
    sb.in_flight = sb.in_flight - 1
    if not okh then error(status, 0) end
    if log then log(format("%s %s%s -> %s", req.method, req.path,
      (req.query and req.query ~= "") and ("?" .. req.query) or "", tostring(status))) end
    if status == "drop" then return M._drop_response() end
    if req.method == "HEAD" then body = "" end
    return { status = status, headers = headers, body = body }
  end

  local server = http.serve { host = opts.host or "127.0.0.1", port = opts.port or 0, handler = handler,
                             background = opts.background, max_body = opts.max_body or M.MAX_BODY }
  sb.server = server
  sb.port = server.port
  sb.host = opts.host or "127.0.0.1"
  local host = sb.host:find(":", 1, true) and ("[" .. sb.host .. "]") or sb.host
  sb.url = format("http://%s:%d", host, server.port)
  runs.host_port = format("%s:%d", host, server.port)

  local closed = false
  --- Stop serving and free the port.
  function sb.close()
    if closed then return end
    closed = true
    server:close()
  end

  setmetatable(sb, { __tostring = function()
    return format("kpiwatch sandbox at %s (%d fixtures)", sb.url, #order)
  end })
  return sb
end

-- What the handler returns to drop the connection without an answer. The
-- server module decides how (kpiwatch.http_server); until it offers a way
-- the sandbox closes the exchange with an empty 502 (what a proxy in front
-- of a dead upstream sends).
function M._drop_response()
  local ok, hs = pcall(require, "kpiwatch.http_server")
  if ok and type(hs) == "table" and hs.DROP ~= nil then return hs.DROP end
  return { status = 502, headers = { ["content-type"] = "text/plain", connection = "close" }, body = "" }
end

--- Start the sandbox on a free loopback port in the background (it never
--- keeps the process alive), for this process's own client: point it there
--- with `kpis.point_at(sb)` (what `kpiwatch --sandbox` does).
---@param opts? table options of `sandbox.start`
---@return kpiwatch.sandbox.Sandbox sb
function M.start_for_client(opts)
  local o = { background = true }
  -- KPIWATCH_SANDBOX_SPEED: the run tests' clock for `--sandbox` (tests
  -- run executions in a fraction of a second with it)
  local env_speed = tonumber(os.getenv("KPIWATCH_SANDBOX_SPEED") or "")
  if env_speed then o.speed = env_speed end
  for k, v in pairs(opts or {}) do o[k] = v end
  local sb = M.start(o)
  M.current = sb -- the REPL completes fixture ids from it
  return sb
end

return M
