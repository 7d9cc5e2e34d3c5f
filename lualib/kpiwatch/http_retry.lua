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

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
  sep = 9, oct = 10, nov = 11, dec = 12 }
local DAYS_IN = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end
M.days_from_civil = days_from_civil

local function epoch_of(y, mon, d, hh, mm, ss)
  local m = MONTHS[mon:lower()]
  y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)
  if not m or not y or d < 1 or d > DAYS_IN[m] or hh > 23 or mm > 59 or ss > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
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
  local t
  -- IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  local d, mon, y, hh, mm, ss = v:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if d then
    t = epoch_of(y, mon, d, hh, mm, ss)
  else
    -- RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
    d, mon, y, hh, mm, ss = v:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if d then
      y = tonumber(y)
      y = y < 70 and 2000 + y or 1900 + y
      t = epoch_of(y, mon, d, hh, mm, ss)
    else
      -- asctime: Sun Nov  6 08:49:37 1994
      mon, d, hh, mm, ss, y = v:match("^%a%a%a (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
      if mon then t = epoch_of(y, mon, d:gsub(" ", ""), hh, mm, ss) end
    end
  end
  if not t then return nil end
  now_epoch = now_epoch or os.time()
  local wait = t - now_epoch
  if wait < 0 then wait = 0 end
  return wait
end

return M
