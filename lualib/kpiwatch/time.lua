-- kpiwatch.time: the one place timestamps are parsed and formatted.
--
-- The API gives ISO 8601 times (`start_time`, `last_run_at`: Django REST
-- Framework writes "2026-11-30T21:05:00Z", with microseconds when it has
-- them, or an offset such as "+05:30" outside UTC); HTTP gives dates in
-- Retry-After (RFC 9110); kpiwatch writes RFC 3339 UTC ("...Z") in events,
-- state, spool and history files. Epoch seconds are computed here with
-- integer civil-date arithmetic, never with os.time, whose reading of a
-- table is local time.

local M = {}

local format = string.format
local tonumber, type, floor = tonumber, type, math.floor

local DAYS_IN = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function leap(y)
  return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
end

--- Days since 1970-01-01 of a civil date (proleptic Gregorian; any year).
---@param y integer
---@param m integer 1..12
---@param d integer 1..31
---@return integer days
function M.days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Epoch seconds of a UTC civil time, or nil when a field is out of range
-- (a leap second, :60, counts as the next second).
local function epoch_of(y, m, d, hh, mm, ss)
  if not (y and m and d and hh and mm and ss) then return nil end
  if m < 1 or m > 12 or d < 1 or d > DAYS_IN[m] or (m == 2 and d == 29 and not leap(y))
    or hh > 23 or mm > 59 or ss > 60 then
    return nil
  end
  return M.days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

local ISO = "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)([%.,]?%d*)(.*)$"

--- Epoch seconds of an ISO 8601 / RFC 3339 date-time: "2026-11-30T21:05:00Z",
--- with a fraction (".123456", kept), an offset ("+05:30", "+0530", "+05",
--- "-08:00") or none (read as UTC, as the API means it), "T" or a space.
--- Never raises.
---@param s any
---@return number|nil epoch seconds (with the fraction), nil when s is not such a time
function M.parse_iso8601(s)
  if type(s) ~= "string" or #s > 64 then return nil end
  local y, mo, d, h, mi, sec, frac, zone = s:match(ISO)
  if not y then return nil end
  if frac ~= "" and #frac == 1 then return nil end -- a separator without digits
  local off = 0
  if zone ~= "" and zone ~= "Z" and zone ~= "z" then
    local sign, zh, zm = zone:match("^([+-])(%d%d):?(%d?%d?)$")
    if not sign or #zm == 1 or tonumber(zh) > 23 or (zm ~= "" and tonumber(zm) > 59) then return nil end
    off = tonumber(zh) * 3600 + (tonumber(zm) or 0) * 60
    if sign == "-" then off = -off end
  end
  local t = epoch_of(tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec))
  if not t then return nil end
  if frac ~= "" then t = t + tonumber("0." .. frac:sub(2)) end
  return t - off
end

--- RFC 3339 UTC time of epoch seconds (fraction dropped): "2026-11-30T21:05:00Z".
---@param t? number epoch seconds (default now)
---@return string
function M.rfc3339(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t and floor(t) or nil)
end

--- An ISO 8601 time as RFC 3339 UTC (whole seconds), so that text order is
--- time order whatever offset the server wrote; nil when it is not a time.
---@param s any
---@return string|nil
function M.to_utc(s)
  local t = M.parse_iso8601(s)
  return t and M.rfc3339(t) or nil
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
  sep = 9, oct = 10, nov = 11, dec = 12 }
local MONTH_NAMES = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
local WEEKDAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }

local function http_epoch(y, mon, d, hh, mm, ss)
  return epoch_of(tonumber(y), MONTHS[mon:lower()], tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss))
end

--- Epoch seconds of an HTTP date (RFC 9110 5.6.7): the IMF-fixdate
--- ("Sun, 06 Nov 1994 08:49:37 GMT") and the obsolete RFC 850 and asctime
--- forms. Never raises.
---@param s any
---@return integer|nil epoch seconds
function M.parse_http_date(s)
  if type(s) ~= "string" or #s > 64 then return nil end
  local d, mon, y, hh, mm, ss = s:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if d then return http_epoch(y, mon, d, hh, mm, ss) end
  -- RFC 850: Sunday, 06-Nov-94 08:49:37 GMT (two-digit years: 1970..2069)
  d, mon, y, hh, mm, ss = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if d then
    y = tonumber(y)
    return http_epoch(y < 70 and 2000 + y or 1900 + y, mon, d, hh, mm, ss)
  end
  -- asctime: Sun Nov  6 08:49:37 1994
  mon, d, hh, mm, ss, y = s:match("^%a%a%a (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  if mon then return http_epoch(y, mon, (d:gsub(" ", "")), hh, mm, ss) end
  return nil
end

--- The IMF-fixdate of epoch seconds: "Sun, 06 Nov 1994 08:49:37 GMT".
---@param t number epoch seconds
---@return string
function M.http_date(t)
  local d = os.date("!*t", floor(t))
  return format("%s, %02d %s %04d %02d:%02d:%02d GMT", WEEKDAYS[d.wday], d.day, MONTH_NAMES[d.month],
    d.year, d.hour, d.min, d.sec)
end

return M
