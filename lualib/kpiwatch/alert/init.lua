-- kpiwatch.alert: alert rules over KPI objects, notification hooks, one-shot
-- checks and watch mode. The public API and the default registry; the
-- work is done in alert/rule.lua (compile, evaluate), alert/state.lua (the
-- watch state machine), alert/deliver.lua (hooks, retries, spool),
-- alert/watch.lua (the loop), alert/rules_file.lua (load_rules).
--
--   alert.rule{...}            register a rule (see README "Alert rules")
--   alert.hook(name, fn)       register a notification hook
--   alert.evaluate(x)          -> report, no notification, no state (the gate)
--   alert.check(x)             -> report, after notifying what fires
--   alert.watch{ids=, run_tests=, every=, state=}   poll until SIGINT/SIGTERM
--   alert.step(state, kpis, now)        one watch evaluation (pure, for tests)
--   alert.load_rules(path)     -> a fresh registry holding the file's rules
--   alert.registry()           -> a fresh, empty registry
--   alert.reset()              empty the default registry
--   alert.configure{...}       delivery options of the default registry
--
-- x is an execution id (fetched with kpis.get), a KPI object, a plain decoded
-- body, or a list of those. Module functions act on the default registry;
-- a registry object has the same functions as methods (reg:rule{...}).
--
-- Delivery: each (event, hook) pair runs in its own task with retries and
-- backoff for retryable failures (an error object with retryable ~= false,
-- or any other error); what still fails is spooled (kpiwatch.spool) and
-- sent again on the next run or cycle. A notification that could be neither
-- delivered nor spooled is "lost": check() then raises an error of kind
-- "lost" carrying the report in its `report` field (the CLI exits 3), unless
-- configure{exit_on_lost = false}; watch() counts it.

local errors = require "kpiwatch.errors"
local spool = require "kpiwatch.spool"
local rule = require "kpiwatch.alert.rule"
local report = require "kpiwatch.alert.report"
local state = require "kpiwatch.alert.state"
local deliver = require "kpiwatch.alert.deliver"
local watch = require "kpiwatch.alert.watch"
local rules_file = require "kpiwatch.alert.rules_file"
local group = require "kpiwatch.alert.group"

local M = {}

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local format = string.format
local math_type = math.type
local caller_where, config_error, compile = rule.caller_where, rule.config_error, rule.compile
local kpi_list = rule.kpi_list

rule.internal(debug.getinfo(1, "S").source)

-- msg quotes server text (metric names, reasons): one clean line
local function warn(msg)
  io.stderr:write("kpiwatch: alert: ", require("kpiwatch.shared").clean(msg), "\n")
  io.stderr:flush()
end

-- Helpers for scripts and tests (the names the single-file module had).
M.rfc3339, M.new_id, M.parse_duration = report.rfc3339, report.new_id, rule.parse_duration
M._compile, M._eval_rule = rule.compile, rule.eval_rule
M._lookup_for, M._fingerprint, M._make_event = rule.lookup_for, rule.fingerprint, report.make_event
M.new_state, M.load_state, M.save_state = state.new, state.load, state.save

-- ---- the registry ---------------------------------------------------------------

local Registry = {}
Registry.__index = Registry

local DEFAULT_CONFIG = {
  retries = 3,            -- retries of a failed delivery (after the first attempt)
  backoff = 0.5,          -- first backoff delay, seconds (exponential, full jitter)
  max_backoff = 30,       -- cap of one backoff delay
  max_retry_wait = 60,    -- a Retry-After longer than this is not waited for: spooled
  concurrency = 8,        -- deliveries in flight at once
  spool = false,          -- spool file; false: spool.default_path()
  exit_on_lost = true,    -- check(): raise kind "lost" (exit 3) when a notification is lost
  quiet = false,          -- no no-data / rule-error lines on stderr
}

local CONFIG_CHECK = {
  retries = function(v) return math_type(v) == "integer" and v >= 0 end,
  backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_retry_wait = function(v) return type(v) == "number" and v >= 0 end,
  concurrency = function(v) return math_type(v) == "integer" and v >= 1 end,
  spool = function(v) return v == false or (type(v) == "string" and v ~= "") end,
  exit_on_lost = function(v) return type(v) == "boolean" end,
  quiet = function(v) return type(v) == "boolean" end,
}

--- A fresh, empty registry: rules, hooks and delivery options of its own.
--- It has the module's functions as methods (reg:rule{...}, reg:check(x)).
---@return table registry
function M.registry()
  local config = {}
  for k, v in pairs(DEFAULT_CONFIG) do config[k] = v end
  return setmetatable({ rules = {}, by_name = {}, hooks = {}, hook_names = {}, config = config },
    Registry)
end

--- Sets delivery options: retries, backoff, max_backoff, max_retry_wait,
--- concurrency, spool, exit_on_lost, quiet (see DEFAULT_CONFIG).
---@param t table
---@return table self
function Registry:configure(t)
  if type(t) ~= "table" then config_error(caller_where(), "alert.configure expects a table") end
  for k, v in pairs(t) do
    local check = CONFIG_CHECK[k]
    if not check then config_error(caller_where(), "alert.configure: unknown option '" .. tostring(k) .. "'") end
    if not check(v) then
      config_error(caller_where(), "alert.configure: bad value for '" .. k .. "': " .. tostring(v))
    end
    self.config[k] = v
  end
  return self
end

-- Messages about deliveries and state on stderr; quiet keeps only those
-- about lost notifications (force).
function Registry:_log(msg, force)
  if force or not self.config.quiet then warn(msg) end
end

--- Registers a rule; a bad spec raises a config error naming file:line,
--- the rule and the field.
---@param spec table {name=, metric= | evals= | when=, below= | above= | at_most= |
--- at_least= | equals=, severity=, labels=, summary=, notify=, no_data=, after=, ...}
---@return table rule the compiled rule
function Registry:rule(spec)
  local where = caller_where()
  local r = compile(spec, where)
  if self.by_name[r.name] then
    config_error(where, "rule '" .. r.name .. "' is defined twice (first at " ..
      tostring(self.by_name[r.name].where) .. ")", { field = "name", rule = r.name })
  end
  self.rules[#self.rules + 1] = r
  self.by_name[r.name] = r
  return r
end

--- Registers (or replaces) a notification hook. By default it gets one
--- event per execution per check or watch cycle, listing every alert that
--- fired or resolved (kpiwatch.alert.group); group_by = false: one per alert.
---@param name string
---@param fn function function(event); raising an error object with retryable = false
--- stops its retries
---@param opts table|nil {group_by = {"execution_id"} | false, group_wait = duration}
---@return function fn
function Registry:hook(name, fn, opts)
  local where = caller_where()
  if type(name) ~= "string" or name == "" then
    config_error(where, "alert.hook: the name must be a non-empty string, got " .. type(name))
  end
  require("kpiwatch.shared").validate("alert.hook '" .. name .. "'", { fn = { fn, "callable" } }, where)
  self.hook_opts = self.hook_opts or {}
  self.hook_opts[name] = group.options(where, name, opts)
  if not self.hooks[name] then self.hook_names[#self.hook_names + 1] = name end
  self.hooks[name] = fn
  return fn
end

-- The hook names a rule notifies: its `notify` list, or every hook.
function Registry:_hooks_of(r)
  if r and r.notify then return r.notify end
  return self.hook_names
end

function Registry:_check_hooks()
  for _, r in ipairs(self.rules) do
    for _, h in ipairs(r.notify or {}) do
      if not self.hooks[h] then
        config_error(r.where, "rule '" .. r.name .. "': notify names hook '" .. h ..
          "', which is not registered (alert.hook(\"" .. h .. "\", fn))",
          { field = "notify", rule = r.name })
      end
    end
  end
end

Registry.evaluate = rule.evaluate
Registry.step = state.step
Registry.watch = watch.watch
Registry._spool_path = deliver.spool_path
Registry._replay = deliver.replay
Registry._deliver = deliver.deliver
Registry._flush_outbox = watch.flush_outbox

-- fetch(x) -> KPI objects, failed ids ({execution_id=, error=}); a single
-- id raises its error.
local function fetch(x)
  local kpis = require "kpiwatch.kpis"
  if type(x) == "string" then return { kpis.get(x) }, {} end
  return kpis.resolve(kpi_list(x))
end

--- Evaluates every rule once, notifies each firing alert's hooks, spools
--- what cannot be delivered.
---@param x any an execution id, a KPI object, a decoded body, or a list of those
---@param opts table|nil {spool = path, ctx = a stop context {stopping=, sleepers={}}: once
--- stopping, deliveries are not retried and what failed is spooled}
---@return table report evaluate's, with deliveries, delivered, spooled, lost, skipped;
--- when a notification is lost (and exit_on_lost), raises instead an error of kind
--- "lost" whose `report` field is this report (the CLI exits 3)
function Registry:check(x, opts)
  opts = opts or {}
  self:_check_hooks()
  local list, failed = fetch(x)
  local rep = self:evaluate(list)
  for _, f in ipairs(failed) do
    rep.errors[#rep.errors + 1] = { execution_id = f.execution_id, kind = f.error.kind,
      reason = tostring(f.error), message = tostring(f.error) }
  end
  report.finish(rep)
  report.print_problems(self, rep)

  local sp = spool.open(self:_spool_path(opts))
  rep.spool = sp.path
  self:_replay(sp, opts.ctx, rep)
  local now = os.time()
  local jobs = {}
  for _, a in ipairs(rep.firing) do
    local src = report.SOURCES[a]
    local ev = report.make_event(a, "firing", now, src[2])
    for _, h in ipairs(self:_hooks_of(src[1])) do
      jobs[#jobs + 1] = { hook = h, event = ev }
    end
  end
  self:_deliver(group.jobs(self, jobs), sp, opts.ctx, rep)
  if rep.lost > 0 and self.config.exit_on_lost then
    -- The library does not end the process: the CLI exits 3 on this kind.
    errors.raise("lost", format("%d notification%s could be neither delivered nor spooled",
      rep.lost, rep.lost == 1 and "" or "s"), { report = rep })
  end
  return rep
end

-- ---- module-level API (the default registry) -------------------------------------

local default = M.registry()

--- Loads a rules file into a fresh registry: the file's alert.rule{...}
--- calls register there, or it returns a list of rule tables. Errors name
--- the file, the line and the field.
---@param path string
---@return table registry
function M.load_rules(path)
  return rules_file.load(M, path, function(reg)
    local saved = default
    default = reg
    return saved
  end)
end

--- Empties the default registry (rules, hooks, options).
---@return table registry the new default registry
function M.reset()
  default = M.registry()
  return default
end

--- The default registry, which the module-level functions act on.
---@return table registry
function M.default()
  return default
end

for _, name in ipairs({ "rule", "hook", "configure", "evaluate", "check", "watch", "step" }) do
  M[name] = function(...) return default[name](default, ...) end
end

--- The rules of the default registry, in registration order.
---@return table rules
function M.rules()
  return default.rules
end

M.Registry = Registry
return M
