-- kpiwatch.http_server: an HTTP server (libh2o on the event loop).
--
-- serve{host = "127.0.0.1", port = 0, handler = function(req) ... end,
--       max_body = 64 MiB}
--   -> server {host=, port=, url=, close=, stats=}
--
-- Each request runs `handler(req)` in its own task, so a handler may
-- task.sleep, call http.request, or wait on anything else without holding
-- up other requests. req = {method=, path=, query=, params=, headers=,
-- body=, http_version=}:
--   path     the request target before "?", as sent (not percent-decoded)
--   query    the raw query string after "?" ("" when there is none)
--   params   the query decoded: params[name] = value ("+" and %XX decoded;
--            for a repeated name, the first value)
--   headers  names lowercased; a repeated field is joined with ", "
--   body     the whole request body ("" when none)
-- The handler returns a table {status = 200, headers = {}, body = ""}
-- (each field optional; a header value may be a list for a repeated
-- field), a string (the body of a 200), or nothing (an empty 200). With
-- `json = value` instead of body, the value is JSON-encoded and the
-- content type defaults to application/json.
-- A handler that returns `http_server.DROP` gets no response at all: its
-- connection is closed (the client sees the connection end before any byte
-- of a response; other HTTP/2 streams on it go too). For fault injection.
-- A handler that raises answers 500, and the error with its traceback is
-- written to stderr; the server keeps serving.
--
-- server:close() stops accepting at once (the port is free when it
-- returns), answers requests whose handler has not finished with 503 and
-- cancels those handlers, and closes every connection once its response is
-- written. Called from inside a handler, it spares that handler's request.
-- server:wait() suspends the calling task until the server has closed.
-- An open server keeps the script running (as a listening socket does in
-- node) until it is closed; at exit it is closed for you.

local C = require "kpiwatch._server"
local errors = require "kpiwatch.errors"
local task = require "kpiwatch.task"

local M = {}

M.server_name = C.server_name

-- The handler's return value that drops the connection without an answer.
M.DROP = setmetatable({}, {
  __name = "kpiwatch.http_server.DROP",
  __tostring = function() return "http_server.DROP" end,
})

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- parse_query("a=1&b=x%20y") -> {a = "1", b = "x y"}
function M.parse_query(q)
  local params = {}
  for pair in q:gmatch("[^&;]+") do
    local k, v = pair:match("^([^=]*)=(.*)$")
    if not k then k, v = pair, "" end
    k = unescape(k)
    if params[k] == nil then params[k] = unescape(v) end
  end
  return params
end

local function report(req, what, msg)
  io.stderr:write(string.format("kpiwatch: http handler error (%s %s): %s%s\n", req.method,
    req.path, what, msg))
  io.stderr:flush()
end

local function traceback(e)
  if type(e) ~= "string" then
    local ok, s = pcall(tostring, e)
    e = ok and s or "(error object is a " .. type(e) .. " value)"
  end
  return debug.traceback(e, 2)
end

local function has_header(headers, name)
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

-- Turn what the handler returned into (status, headers, body); raises on
-- a malformed response, which the dispatcher answers with 500.
local function normalize(res)
  if res == nil then return 200, { server = M.server_name }, "" end
  if type(res) == "string" then return 200, { server = M.server_name }, res end
  if type(res) ~= "table" then
    error("handler returned a " .. type(res) .. " (expected a table, a string or nothing)", 0)
  end
  local status = res.status or 200
  if math.type(status) ~= "integer" and not (type(status) == "number" and status % 1 == 0) then
    error("response status must be an integer, got " .. tostring(status), 0)
  end
  local headers = {}
  if res.headers ~= nil then
    if type(res.headers) ~= "table" then
      error("response headers must be a table, got " .. type(res.headers), 0)
    end
    for k, v in pairs(res.headers) do headers[k] = v end
  end
  local body = res.body
  if res.json ~= nil then
    body = require("kpiwatch.json").encode(res.json)
    if not has_header(headers, "content-type") then headers["content-type"] = "application/json" end
  end
  if body == nil then body = "" end
  if type(body) ~= "string" then
    error("response body must be a string, got " .. type(body), 0)
  end
  if not has_header(headers, "server") then headers.server = M.server_name end
  return math.tointeger(status), headers, body
end

local function internal_error(ud)
  C.respond(ud, 500, { ["content-type"] = "text/plain", server = M.server_name },
    "internal server error\n")
end

-- Runs in the request's task.
local function dispatch(handler, ud, req)
  if not C.alive(ud) then return end
  local ok, res = xpcall(handler, traceback, req)
  -- Answered meanwhile (the server closed and cancelled us) or the client
  -- is gone: nothing to send, and a cancellation is not worth a report.
  if not C.alive(ud) then return end
  if not ok then
    report(req, "", res)
    return internal_error(ud)
  end
  if res == M.DROP then
    C.drop(ud)
    return
  end
  local ok2, err = pcall(function()
    C.respond(ud, normalize(res))
  end)
  if not ok2 then
    report(req, "bad response: ", tostring(err))
    internal_error(ud)
  end
end

local Server = {}
Server.__index = Server

function Server:close()
  if self._closed then return end
  self._closed = true
  local me = task.running()
  local spare = me and self._inflight[me] or nil
  C.close(self._ud, spare)
  for t in pairs(self._inflight) do
    if t ~= me then task.cancel(t, "http server closed") end
  end
end

-- wait(): suspends the calling task until the server is closed and its
-- last connection is gone (returns at once if it already is). A script's
-- main task can serve until some handler calls close():
--   local srv = http.serve{...}; srv:wait()
function Server:wait()
  return C.wait(self._ud)
end

-- stats() -> {connections=, open_connections=, requests=, responses=,
-- in_flight=, state=}: connections counts accepted connections, so with
-- keep-alive it stays below requests.
function Server:stats()
  return C.stats(self._ud)
end

function Server:__tostring()
  return "http server " .. self.url .. (self._closed and " (closed)" or "")
end

function M.serve(opts)
  if type(opts) ~= "table" then
    error("http.serve: expected a table of options, got " .. type(opts), 2)
  end
  local handler = opts.handler
  if type(handler) ~= "function" and not (getmetatable(handler) or {}).__call then
    error("http.serve: handler must be a function", 2)
  end
  local host = opts.host or "127.0.0.1"
  local port = opts.port or 0
  if type(host) ~= "string" then error("http.serve: host must be a string", 2) end
  if math.type(port) ~= "integer" or port < 0 or port > 65535 then
    error("http.serve: port must be an integer between 0 and 65535", 2)
  end
  if opts.max_body ~= nil and (math.type(opts.max_body) ~= "integer" or opts.max_body < 0) then
    error("http.serve: max_body must be a non-negative integer", 2)
  end

  local inflight = setmetatable({}, { __mode = "k" }) -- task -> request handle

  local function run(ud, req)
    local me = task.running()
    local ok, err = pcall(dispatch, handler, ud, req)
    inflight[me] = nil
    if not ok then io.stderr:write("kpiwatch: http server: ", tostring(err), "\n") end
  end

  -- Called by C between loop turns, once per request.
  local function on_request(ud, req)
    req.params = M.parse_query(req.query)
    local t = task.spawn(run, ud, req)
    inflight[t] = ud
  end

  local ud, message, kind = C.listen(host, port, on_request,
    { max_body = opts.max_body, background = opts.background })
  if not ud then
    error(errors.new(kind, message, { host = host, port = port }), 2)
  end
  local bound = C.port(ud)
  local urlhost = host:find(":", 1, true) and ("[" .. host .. "]") or host
  return setmetatable({
    host = host,
    port = bound,
    url = "http://" .. urlhost .. ":" .. bound,
    _ud = ud,
    _inflight = inflight,
    _closed = false,
  }, Server)
end

return M
