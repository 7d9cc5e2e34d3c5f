-- kpiwatch.errors: the one error object every kpiwatch module raises.
--
-- Errors are tables rather than strings so that callers branch on `kind`
-- (a timeout is retried, an invalid id is not) without parsing messages,
-- while tostring() still gives the one line a person reads.

local M = {}

local Error = {}
Error.__index = Error
Error.__name = "kpiwatch.error"

function Error.__tostring(e)
  return e.kind .. ": " .. e.message
end

-- new(kind, message [, fields]): fields are copied into the error (url,
-- status, execution_id, retryable, ...). `level` is not used: the object
-- carries no position, tracebacks come from the task that raised it.
function M.new(kind, message, fields)
  local e = { kind = kind, message = message }
  if fields then
    for k, v in pairs(fields) do
      if e[k] == nil then e[k] = v end
    end
  end
  return setmetatable(e, Error)
end

-- raise(kind, message [, fields]): build and throw, no position prefix.
function M.raise(kind, message, fields)
  error(M.new(kind, message, fields), 0)
end

function M.is(v)
  return getmetatable(v) == Error
end

M.Error = Error
return M
