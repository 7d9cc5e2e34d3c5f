-- fuzz_check_id: execution ids as a user or a script passes them.
--
-- Documented: check_id returns the id in lower case (a canonical UUID) or
-- raises an invalid_id error whose message is one printable line quoting
-- at most 48 bytes of the id; is_uuid agrees with check_id.

local kpis = require "kpiwatch.kpis"
local check, show = fuzz.check, fuzz.show

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

return function(text)
  local ok, v = pcall(kpis.check_id, text)
  local is = kpis.is_uuid(text)
  check(type(is) == "boolean", "is_uuid gave %s", show(is))
  if ok then
    check(is, "check_id accepted %s, is_uuid did not", show(text))
    check(type(v) == "string" and #v == 36 and v:match(UUID) and v == v:lower() and v == text:lower(),
      "check_id(%s) gave %s", show(text), show(v))
  else
    check(not is, "is_uuid accepted %s, check_id raised %s", show(text), show(v))
    local good, why = fuzz.is_error(v, { invalid_id = true })
    check(good, "check_id raised %s: %s", why, show(v))
    check(v.message:find("^[\32-\126]*$"), "message is not printable ASCII: %s", show(v.message))
    check(#v.message <= 120, "message is %d bytes", #v.message)
    check(v.retryable == false, "invalid_id is retryable")
  end
  local shown = kpis._show_id(text)
  check(shown:find("^[\32-\126]*$") and not shown:find('"', 1, true), "_show_id gave %s", show(shown))
end
