-- Specs for kpiwatch.time, the one place timestamps are parsed and
-- formatted: ISO 8601 as the API writes it (start_time, last_run_at: Django
-- REST Framework's "Z", microseconds, offsets), HTTP dates (Retry-After),
-- RFC 3339 UTC as kpiwatch writes it.
-- Run: busted --lua=build/kpiwatch spec/lua/time_spec.lua

local time = require "kpiwatch.time"

local T = 1796072700 -- 2026-11-30T21:05:00Z (Python: calendar.timegm)

describe("time.parse_iso8601", function()
  it("reads UTC with Z (either case), a T or a space, and no zone as UTC", function()
    assert.are.equal(T, time.parse_iso8601("2026-11-30T21:05:00Z"))
    assert.are.equal(T, time.parse_iso8601("2026-11-30t21:05:00z"))
    assert.are.equal(T, time.parse_iso8601("2026-11-30 21:05:00Z"))
    assert.are.equal(T, time.parse_iso8601("2026-11-30T21:05:00"))
  end)

  it("reads the API's forms: microseconds, +00:00, other offsets", function()
    -- DRF: "Z" for UTC, six fraction digits when there are any
    assert.are.near(T + 0.123456, time.parse_iso8601("2026-11-30T21:05:00.123456Z"), 1e-6)
    -- Python's isoformat(): "+00:00"
    assert.are.equal(T, time.parse_iso8601("2026-11-30T21:05:00+00:00"))
    assert.are.near(T + 0.5, time.parse_iso8601("2026-11-30T21:05:00.500000+00:00"), 1e-9)
    -- a server in another zone: the same instant
    assert.are.equal(T, time.parse_iso8601("2026-12-01T02:35:00+05:30"))
    assert.are.equal(T, time.parse_iso8601("2026-12-01T02:35:00+0530"))
    assert.are.equal(T, time.parse_iso8601("2026-11-30T13:05:00-08:00"))
    assert.are.equal(T, time.parse_iso8601("2026-11-30T22:05:00+01"))
    assert.are.near(T + 0.25, time.parse_iso8601("2026-11-30T21:05:00,25Z"), 1e-9)
  end)

  it("reads what the sandbox serves, and what rfc3339 writes, back to the same second", function()
    assert.are.equal(T, time.parse_iso8601(time.rfc3339(T)))
    assert.are.equal(T, time.parse_iso8601(time.rfc3339(T + 0.9)))
  end)

  it("counts civil dates right: leap days, the epoch, before it, far years", function()
    assert.are.equal(951782400, time.parse_iso8601("2000-02-29T00:00:00Z"))
    assert.are.equal(0, time.parse_iso8601("1970-01-01T00:00:00Z"))
    assert.are.equal(-1, time.parse_iso8601("1969-12-31T23:59:59Z"))
    assert.are.equal(253402300799, time.parse_iso8601("9999-12-31T23:59:59Z"))
  end)

  it("returns nil for anything else, and never raises", function()
    for _, v in ipairs({ "", "2026-11-30", "2026-11-30T21:05Z", "2026-13-01T00:00:00Z",
      "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-11-30T24:00:00Z", "2026-11-30T21:60:00Z",
      "2026-11-30T21:05:00.Z", "2026-11-30T21:05:00PST", "2026-11-30T21:05:00+5:30",
      "2026-11-30T21:05:00+05:3", "2026-11-30T21:05:00+25:00", "2026-11-30T21:05:00Z junk",
      " 2026-11-30T21:05:00Z", string.rep("9", 100000) }) do
      assert.is_nil(time.parse_iso8601(v), v:sub(1, 40))
    end
    for _, v in ipairs({ 0, true, {}, false }) do assert.is_nil(time.parse_iso8601(v)) end
    assert.is_nil(time.parse_iso8601(nil))
    assert.is_nil(time.parse_iso8601(require("kpiwatch.json").null))
  end)
end)

describe("time.rfc3339 and time.to_utc", function()
  it("write RFC 3339 UTC, whole seconds, and turn any offset into Z", function()
    assert.are.equal("2026-11-30T21:05:00Z", time.rfc3339(T))
    assert.are.equal("2026-11-30T21:05:00Z", time.rfc3339(T + 0.999))
    assert.are.equal("1970-01-01T00:00:00Z", time.rfc3339(0))
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", time.rfc3339())
    assert.are.equal("2026-11-30T21:05:00Z", time.to_utc("2026-12-01T02:35:00.5+05:30"))
    assert.is_nil(time.to_utc("yesterday"))
  end)
end)

describe("time.parse_http_date and time.http_date", function()
  it("read the three HTTP date forms (RFC 9110) and write the IMF-fixdate", function()
    local t = 784111777 -- Sun, 06 Nov 1994 08:49:37 GMT
    assert.are.equal(t, time.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.are.equal(t, time.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.are.equal(t, time.parse_http_date("Sun Nov  6 08:49:37 1994"))
    assert.are.equal("Sun, 06 Nov 1994 08:49:37 GMT", time.http_date(t))
    assert.are.equal(T, time.parse_http_date(time.http_date(T)))
    for _, v in ipairs({ "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST",
      "2026-11-30T21:05:00Z", "" }) do
      assert.is_nil(time.parse_http_date(v), v)
    end
  end)
end)
