-- fuzz_retry_after: Retry-After values (RFC 9110 10.2.3: delay-seconds or
-- an HTTP date in any of its three forms), as a header string and, when it
-- reads as a number, as the number a JSON body carries.
--
-- Documented: never raises; gives seconds to wait (a number >= 0, not NaN,
-- at most 2^31 for delay-seconds) or nil.

local http = require "kpiwatch.http"
local check, show = fuzz.check, fuzz.show

local NOW = 1700000000 -- Tue, 14 Nov 2023 22:13:20 GMT

local function valid(v, what)
  if v == nil then return end
  check(type(v) == "number", "%s gave %s", what, show(v))
  check(v == v and v >= 0 and v < math.huge, "%s gave %s", what, show(v))
end

return function(text)
  local ok, v = pcall(http.parse_retry_after, text, NOW)
  check(ok, "raised %s", show(v))
  valid(v, "string")
  if v and text:match("^[ \t]*%d+[ \t]*$") then
    check(v <= 2 ^ 31, "delay-seconds %s gave %s", show(text), show(v))
    check(v == math.min(tonumber(text), 2 ^ 31), "delay-seconds %s gave %s", show(text), show(v))
  end
  -- the same value one second later: a date waits a second less (or stays
  -- at 0), delay-seconds are relative and do not change
  local ok2, v2 = pcall(http.parse_retry_after, text, NOW + 1)
  check(ok2, "raised %s", show(v2))
  check((v == nil) == (v2 == nil), "now changes whether %s parses", show(text))
  if v and v2 then check(v2 == v or v2 == v - 1 or (v == 0 and v2 == 0), "%s: %s then %s", show(text), v, v2) end
  local n = tonumber(text)
  if n then
    local ok3, v3 = pcall(http.parse_retry_after, n, NOW)
    check(ok3, "number raised %s", show(v3))
    valid(v3, "number")
  end
  local ok4, v4 = pcall(http.parse_retry_after, text) -- now = os.time()
  check(ok4, "raised %s", show(v4))
  valid(v4, "string without now")
end
