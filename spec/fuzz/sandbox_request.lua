-- fuzz_sandbox_request: requests to `kpiwatch sandbox`, handed to the
-- sandbox's handler as kpiwatch.http_server hands them (method, path,
-- query, params decoded by http_server.parse_query, lowercased headers
-- with repeated fields joined). The input:
--
--   METHOD\n
--   TARGET\n               (path, then ?query)
--   name: value\n          (headers, any number)
--   \n
--   body
--
-- The server is a stub that keeps the handler (no socket); task.sleep is a
-- no-op, so `delay:` faults cost nothing.
--
-- Documented: the handler answers every request (it raises on none): a
-- response table with an integer status and a string body, JSON error
-- bodies that decode, or the drop marker.

local real_task = require "kpiwatch.task"
package.loaded["kpiwatch.task"] = setmetatable({
  sleep = function(s)
    assert(type(s) == "number" and s >= 0 and s < math.huge, "task.sleep(" .. tostring(s) .. ")")
  end,
}, { __index = real_task })

local handler
package.loaded["kpiwatch.http"] = {
  serve = function(opts)
    handler = opts.handler
    return { port = 1, close = function() end }
  end,
}

local sandbox = require "kpiwatch.sandbox"
local http_server = require "kpiwatch.http_server"
local check, show = fuzz.check, fuzz.show

local sb = sandbox.start { port = 0 }
assert(handler, "the sandbox did not serve")

return function(input)
  local lines, body = fuzz.split_head(input)
  local method = lines[1] or ""
  local target = lines[2] or "/"
  local path, query = target:match("^([^?]*)%?(.*)$")
  if not path then path, query = target, "" end
  local headers = fuzz.headers(lines, 3)
  local okq, params = pcall(http_server.parse_query, query)
  check(okq and type(params) == "table", "parse_query raised %s", show(params))
  local req = { method = method, path = path, query = query, params = params, headers = headers,
    body = body or "", http_version = "1.1" }

  local ok, res = pcall(handler, req)
  check(ok, "the handler raised %s", show(res))
  sb.reset_counts()
  if res == http_server.DROP then return end
  check(type(res) == "table", "the handler returned %s", show(res))
  check(math.type(res.status) == "integer" and res.status >= 100 and res.status <= 599, "status %s",
    show(res.status))
  check(type(res.body) == "string", "body %s", show(res.body))
  check(type(res.headers) == "table", "headers %s", show(res.headers))
  for k, v in pairs(res.headers) do
    check(type(k) == "string" and type(v) == "string" and not v:find("[\r\n%z]"), "header %s: %s", show(k),
      show(v))
  end
  if method == "HEAD" then check(res.body == "", "HEAD with a body") end
  if res.status ~= 200 and res.headers["content-type"] == "application/json" and method ~= "HEAD" then
    local okj, doc = pcall(json.decode, res.body)
    check(okj and type(doc) == "table" and doc.status == false, "a %d answer with a bad JSON body: %s",
      res.status, show(res.body))
  end
end
