-- kpiwatch.cli.progress: the progress of an execution on stderr while
-- `kpiwatch run` or `kpiwatch gate --wait` waits for it.
--
-- On a terminal: one line, rewritten in place every second (status and
-- elapsed time). Otherwise (a CI log): one plain line per status change, so
-- the log shows when each phase began and nothing else. Status values and
-- error reasons come from the server: they go through shared.clean
-- (control characters neutralised) before they are printed.

local model = require "kpiwatch.model"
local shared = require "kpiwatch.shared"

local M = {}

--- elapsed(secs) -> "7s", "3m 05s", "1h 02m 09s"
---@param secs number
---@return string
function M.elapsed(secs)
  secs = math.floor(math.max(0, secs or 0))
  local h, m, s = secs // 3600, (secs % 3600) // 60, secs % 60
  if h > 0 then return string.format("%dh %02dm %02ds", h, m, s) end
  if m > 0 then return string.format("%dm %02ds", m, s) end
  return string.format("%ds", s)
end

local Progress = {}
Progress.__index = Progress

local function status_of(x)
  if type(x) == "table" then return x.status, x.error_reason end
  return x, nil
end

function Progress:_text()
  local st = self.status and shared.clean(tostring(self.status), 300) or "starting"
  local line = string.format("kpiwatch: execution %s: %s (%s)", self.id, st, M.elapsed(self.now() - self.t0))
  if self.reason then line = line .. ": " .. self.reason end
  return line
end

function Progress:_draw()
  if self.closed then return end
  if self.tty then
    self.stream:write("\r\27[K", self:_text())
  else
    self.stream:write(self:_text(), "\n")
  end
  self.stream:flush()
end

--- p:update(exec) records a status read (an execution object or a status
--- string); a change is shown at once.
---@param exec table|string
function Progress:update(exec)
  local st, reason = status_of(exec)
  if st == self.status then return end
  self.status = st
  local r = reason ~= nil and reason ~= model.null and tostring(reason) or nil
  self.reason = r and r ~= "" and shared.clean(r, 300) or nil
  self:_draw()
end

--- p:finish() ends the display (the terminal line is kept, followed by a
--- newline) and stops the ticker.
function Progress:finish()
  if self.closed then return end
  if self.tty then
    self:_draw()
    self.stream:write("\n")
    self.stream:flush()
  end
  self.closed = true
  if self.ticker then
    -- A ticker that has not run yet sees `closed` and ends by itself
    -- (cancelling a task that has not started is not reliable); one that
    -- sleeps is cancelled and joined.
    local task = require "kpiwatch.task"
    if task.status(self.ticker) ~= "ready" then
      pcall(task.cancel, self.ticker)
      pcall(task.wait, self.ticker)
    end
    self.ticker = nil
  end
end

--- new{id=, stream=, tty=, now=} -> a progress display for execution id.
--- stream defaults to io.stderr, tty to whether fd 2 is a terminal, now to
--- the runtime's monotonic clock. On a terminal a task redraws the line
--- every second until finish().
---@param o {id: string, stream?: file*, tty?: boolean, now?: fun(): number}
---@return table
function M.new(o)
  local task = require "kpiwatch.task"
  local p = setmetatable({
    id = o.id,
    stream = o.stream or io.stderr,
    now = o.now or task.now,
  }, Progress)
  if o.tty == nil then p.tty = require("kpiwatch.shared").isatty(2) else p.tty = o.tty end
  p.t0 = p.now()
  if p.tty then
    p.ticker = task.spawn(function()
      while not p.closed do
        task.sleep(1)
        p:_draw()
      end
    end)
  end
  return p
end

return M
