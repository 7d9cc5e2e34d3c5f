-- kpiwatch.http_retry: when an HTTP request may be tried again (re-exported
-- by kpiwatch.http): the transport failures that may pass, and Retry-After.
-- One rule for every client: the KPIs client (kpis.lua) and the
-- notification hooks (notify.lua).

local M = {}

local type, tonumber = type, tonumber

-- Transport failures (kinds http.request raises) that may pass on a retry.
-- Not dns: the system resolver has already retried (resolv.conf attempts)
-- before libcurl reports a failure, which then is nearly always a name that
-- does not exist, and retrying it only delays the error. Nor tls,
-- too_large, invalid_url: the same request fails the same way. (A hook
-- whose delivery fails for any reason is spooled all the same: the next run
-- tries again.)
local RETRYABLE = { timeout = true, connect = true, network = true }

--- Whether a transport failure may pass if the request is tried again:
--- kinds timeout, connect and network; not dns, tls, too_large, invalid_url.
---@param e string|table an error kind, or an error object http.request raised
---@return boolean
function M.retryable(e)
  local kind = e
  if type(e) == "table" then kind = e.kind end
  return RETRYABLE[kind] == true
end

--- Seconds to wait from a Retry-After value: delay-seconds or an HTTP date
--- (RFC 9110 10.2.3: the IMF-fixdate, and the obsolete RFC 850 and asctime
--- forms); a number (as a JSON body carries it) is delay-seconds. Never
--- raises, whatever the input.
---@param value any the header value (or a number)
---@param now_epoch number|nil the current time, seconds since the epoch (default os.time())
---@return number|nil seconds seconds to wait (>= 0, at most 2^31), nil when not a Retry-After
function M.parse_retry_after(value, now_epoch)
  if type(value) == "number" then
    if value ~= value or value < 0 then return nil end
    return math.min(value, 2 ^ 31)
  end
  if type(value) ~= "string" or #value > 128 then return nil end
  local v = value:match("^[ \t]*(.-)[ \t]*$")
  local digits = v:match("^%d+$") or v:match("^%d+%.%d+$")
  if digits then
    -- tonumber reads any length (a float past 2^63), leading zeros too
    return math.min(tonumber(v), 2 ^ 31)
  end
  -- the dates are read where every timestamp is (kpiwatch.time)
  local t = require("kpiwatch.time").parse_http_date(v)
  if not t then return nil end
  now_epoch = now_epoch or os.time()
  local wait = t - now_epoch
  if wait < 0 then wait = 0 end
  return wait
end

return M
