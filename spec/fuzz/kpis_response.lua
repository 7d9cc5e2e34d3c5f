-- fuzz_kpis_response: a whole HTTP response as kpis.get receives it from
-- kpiwatch.http (replaced here by a stub that answers with the input):
--
--   STATUS\n
--   name: value\n          (headers, any number)
--   \n
--   body
--
-- through the success path (model.parse), the classification of error
-- answers (server messages, HTML pages, Retry-After from the header or
-- the body) and the redaction of the credentials.
--
-- Documented: kpis.get returns a KPI object or raises an error object of a
-- known kind with a one-line message that never contains the API key or
-- the secret (a server may echo them back).

-- random-looking, so that no 8-byte piece of them turns up by chance
local API_KEY = "Kq7VxP2mZr9TwL4sNb6Y"
local SECRET = "Hj3Fd8GcQ5Wv1Xe0Ru7Ta2Mn"

local response
package.loaded["kpiwatch.http"] = {
  -- the client prepares its headers once (http.headers): kept as the table
  headers = function(t) return t end,
  request = function(req)
    assert(req.headers["X-Api-Key"] == API_KEY and req.headers["X-Secret-Key"] == SECRET)
    return response
  end,
}

local kpis = require "kpiwatch.kpis"
local model = require "kpiwatch.model"
local check, show = fuzz.check, fuzz.show

local ID = "c0ffee00-0000-4000-8000-000000000002"
local OPTS = { base_url = "http://127.0.0.1:9", api_key = API_KEY, secret_key = SECRET, retries = 0 }
local KINDS = fuzz.set({ "protocol", "auth", "not_found", "rate_limited", "server", "request" })

local function without(s, secret)
  local out, i = {}, 1
  while true do
    local a, b = s:find(secret, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out, "[REDACTED]")
end

-- The credential s leaks when it is in s whole, or when s holds a piece of
-- it that the server only sent inside a whole copy (a snippet cut the copy
-- in two before redaction could see it).
local function leaks(s, input)
  for _, secret in ipairs({ API_KEY, SECRET }) do
    if s:find(secret, 1, true) then return secret end
    local rest = without(input, secret)
    for i = 1, #secret - 7 do
      local piece = secret:sub(i, i + 7)
      if s:find(piece, 1, true) and not rest:find(piece, 1, true) then return secret end
    end
  end
  return nil
end

return function(input)
  local lines, body = fuzz.split_head(input)
  local status = math.tointeger(tonumber(lines[1]))
  if not status or status < 100 or status > 599 then status = 200 end
  local headers = fuzz.headers(lines, 2)
  response = { status = status, headers = headers, body = body or "", time = 0.001 }

  local ok, k = pcall(kpis.get, ID, OPTS)
  if ok then
    check(status >= 200 and status <= 299, "a %d answer gave a KPI object", status)
    check(model.is(k) and k.execution_id == ID, "kpis.get gave %s", show(k))
    check(type(tostring(k)) == "string", "tostring")
    return
  end
  local good, why = fuzz.is_error(k, KINDS)
  check(good, "kpis.get raised %s: %s", why, show(k))
  check(fuzz.one_line(k.message), "message is not one line: %s", show(k.message))
  check(not leaks(k.message, input), "the message leaks a credential: %s", show(k.message))
  for key, v in pairs(k) do
    if type(v) == "string" then check(not leaks(v, input), "field %s leaks a credential: %s", key, show(v)) end
  end
  check(k.retryable == true or k.retryable == false, "retryable is %s", show(k.retryable))
  if k.kind == "rate_limited" and k.retry_after ~= nil then
    check(type(k.retry_after) == "number" and k.retry_after >= 0, "retry_after %s", show(k.retry_after))
  end
  if status >= 200 and status <= 299 then check(k.kind == "protocol", "a %d answer gave %s", status, k.kind) end
end
