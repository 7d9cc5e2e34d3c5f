-- kpiwatch.alert: alert rules over KPI objects, notification hooks, one-shot
-- checks and watch mode. The public API and the default registry; the
-- work is done in alert/rule.lua (compile, evaluate), alert/state.lua (the
-- watch state machine), alert/deliver.lua (hooks, retries, spool),
-- alert/watch.lua (the loop), alert/rules_file.lua (load_rules).
--
--   alert.rule{...}            register a rule (doc/lua-api.md)
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

---@brief
--- Alert rules over KPI objects, notification hooks, one-shot checks and watch
--- mode. Rules say when an execution is bad; hooks say who hears about it.
--- The module functions `alert.rule`, `alert.hook`, `alert.configure`,
--- `alert.evaluate`, `alert.check`, `alert.watch` and `alert.step` act on the
--- default registry: they are the `Registry:` methods below.
---
--- `x` (what `evaluate` and `check` take) is a KPI object, a plain decoded body,
--- or a list of those; `check` also takes execution ids (fetched with
--- `kpis.get`). So rules can be unit-tested with no server.
---
--- No data: a missing or null field, a listed eval the execution does not have,
--- or a glob matching nothing is reported as `no_data`, never as a pass; so is a
--- predicate that read a missing field and did not fire. Both make `report.ok`
--- false.
---
--- Templates (`summary`, `labels`): `{field}` or `{field:%.1f}`, looked up in the
--- alert (`rule`, `metric`, `value`, `threshold`, `op`, `severity`,
--- `execution_id`, `state`, `labels.x`), then the KPI fields, then the evals.
--- `{{` and `}}` are literal braces; an unknown name stays as written.
---
--- Delivery: each hook runs in its own task; retryable failures are retried with
--- exponential backoff and full jitter; what still fails is appended to the spool
--- (`$KPIWATCH_SPOOL`, else `$XDG_STATE_HOME/kpiwatch/spool.json`) and re-sent
--- on the next run or cycle. The library never ends the process: a notification
--- that could be neither delivered nor spooled makes `check` raise an error of
--- kind `lost` (the command line exits 3).

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
M.rfc3339, M.new_id = report.rfc3339, report.new_id
--- Parse a duration: `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2d"`, or seconds.
---@param v string|number
---@return number|nil seconds
---@return string? err why it is not a duration
M.parse_duration = rule.parse_duration
M._compile, M._eval_rule = rule.compile, rule.eval_rule
M._lookup_for, M._fingerprint, M._make_event = rule.lookup_for, rule.fingerprint, report.make_event
--- An empty watch state, for `alert.step`.
---@return table state `{alerts = {}, outbox = {}}`
M.new_state = state.new
M.load_state, M.save_state = state.load, state.save

-- ---- the registry ---------------------------------------------------------------

--- A rule, as given to `alert.rule`. Exactly one of `metric`, `evals` or `when`;
--- `metric` and `evals` rules take one threshold. Unknown fields and wrong types
--- raise a `config` error naming the file, line and field.
---@class kpiwatch.alert.Rule
---@field name string unique
---@field metric? string any KPI field in either casing, or an eval name
---@field evals? string|string[] `"*"`, a glob, or a list of eval names: one alert per matching eval (globs skip choice evals)
---@field when? fun(k: kpiwatch.Kpi): (boolean, any) a predicate over a read-only KPI view, and optionally the value to report
---@field below? number
---@field above? number
---@field at_most? number
---@field at_least? number
---@field equals? number|string|boolean
---@field severity? string default `"warning"`
---@field labels? table<string, string> templates
---@field summary? string template
---@field resolved_summary? string template
---@field description? string
---@field notify? string|string[] hook names (default: every hook)
---@field no_data? "report"|"ok"|"alert" default `"report"`
---@field after? integer|string watch: consecutive evaluations, or a duration (`"5m"`) the condition must hold (also `["for"]`)
---@field keep_firing_for? string|number watch: how long a cleared alert keeps firing
---@field repeat_interval? string|number watch: re-send a still-firing alert after this (default `"4h"`)

--- What `evaluate`, `check` and `step` return.
---@class kpiwatch.alert.Report
---@field ok boolean no alert firing, no data missing, no error
---@field firing table[] `{rule, execution_id, metric, value, threshold, op, severity, labels, summary}`
---@field no_data table[] `{rule, execution_id, metric, reason}`
---@field errors table[] rule errors and executions that failed to fetch
---@field passed table[]
---@field deliveries table[] `check`: `{hook, event_id, status = "delivered"|"spooled"|"skipped"|"lost", attempts, error}`
---@field delivered integer
---@field spooled integer
---@field skipped integer
---@field lost integer
---@field spool? string `check`: the spool's path

--- A set of rules and hooks with its delivery options. `alert.registry()` and
--- `alert.load_rules()` make one; the module functions use the default one.
---@class kpiwatch.alert.Registry
---@field rules kpiwatch.alert.Rule[] the compiled rules, in order
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
  spool_max_age = spool.DEFAULTS.max_age,           -- seconds; older entries go to PATH.dead
  spool_max_attempts = spool.DEFAULTS.max_attempts, -- attempts; then PATH.dead
}

--- The options of `alert.configure` (each optional).
---@class kpiwatch.alert.Options
---@field retries? integer retries of a failed delivery (default 3)
---@field backoff? number base of one backoff delay, seconds (default 0.5)
---@field max_backoff? number cap of one backoff delay, seconds (default 30)
---@field max_retry_wait? number a Retry-After longer than this is not waited for: spooled (default 60)
---@field concurrency? integer deliveries in flight at once (default 8)
---@field spool? string|false spool file (default false: the default spool)
---@field exit_on_lost? boolean `check` raises `lost` when a notification is lost (default true)
---@field quiet? boolean no no-data / rule-error lines on stderr (default false)
---@field spool_max_age? string|number a duration; older entries go to `<spool>.dead` (default "7d")
---@field spool_max_attempts? integer attempts; then `<spool>.dead` (default 100)
local CONFIG_CHECK = {
  retries = function(v) return math_type(v) == "integer" and v >= 0 end,
  backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_backoff = function(v) return type(v) == "number" and v >= 0 end,
  max_retry_wait = function(v) return type(v) == "number" and v >= 0 end,
  concurrency = function(v) return math_type(v) == "integer" and v >= 1 end,
  spool = function(v) return v == false or (type(v) == "string" and v ~= "") end,
  exit_on_lost = function(v) return type(v) == "boolean" end,
  quiet = function(v) return type(v) == "boolean" end,
  spool_max_age = function(v) return rule.parse_duration(v) ~= nil and rule.parse_duration(v) > 0 end,
  spool_max_attempts = function(v) return math_type(v) == "integer" and v >= 1 end,
}

--- A fresh, empty registry.
---@return kpiwatch.alert.Registry registry
function M.registry()
  local config = {}
  for k, v in pairs(DEFAULT_CONFIG) do config[k] = v end
  return setmetatable({ rules = {}, by_name = {}, hooks = {}, hook_names = {}, config = config },
    Registry)
end

--- Set delivery options. `exit_on_lost`: `check` raises a `lost` error when a
--- notification could be neither delivered nor spooled (else it only counts it).
--- Spool retention: an entry spooled longer than `spool_max_age` (a duration,
--- default 7 days) or tried `spool_max_attempts` times (default 100, the first
--- run's retries included) moves to the dead-letter file `<spool>.dead`, with a
--- warning. The spool is shared by concurrent runs: every change is a locked
--- read-modify-write (flock of `<spool>.lock`), and a replayed entry leaves the
--- file as soon as it is delivered, so it is delivered once.
---@param t kpiwatch.alert.Options
---@return kpiwatch.alert.Registry self
function Registry:configure(t)
  if type(t) ~= "table" then config_error(caller_where(), "alert.configure expects a table") end
  for k, v in pairs(t) do
    local check = CONFIG_CHECK[k]
    if not check then config_error(caller_where(), "alert.configure: unknown option '" .. tostring(k) .. "'") end
    if not check(v) then
      config_error(caller_where(), "alert.configure: bad value for '" .. k .. "': " .. tostring(v))
    end
    if k == "spool_max_age" then v = rule.parse_duration(v) end
    self.config[k] = v
  end
  return self
end

-- Messages about deliveries and state on stderr; quiet keeps only those
-- about lost notifications (force).
function Registry:_log(msg, force)
  if force or not self.config.quiet then warn(msg) end
end

--- Register a rule.
---@param spec kpiwatch.alert.Rule
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

--- Evaluate every rule once against each execution: no notification, no state
--- (what `gate --rules` uses). A firing entry means the condition holds now.
---@param x kpiwatch.Kpi|table a KPI object, a decoded body, or a list of those
---@return kpiwatch.alert.Report report
function Registry:evaluate(x)
  return rule.evaluate(self, x)
end

--- One watch evaluation without sending anything (for tests): alerts go pending,
--- then firing (after `after`), then resolved (after `keep_firing_for`); a
--- still-firing alert is re-sent after `repeat_interval`. Advances `st` in place.
---@param st table a state from `alert.new_state()` or `alert.load_state(path)`
---@param kpis_in table a list of KPI objects or decoded bodies
---@param now? number epoch seconds (default `os.time()`)
---@param opts? {failed?: table<string, table>} executions that could not be fetched keep their alerts unchanged
---@return kpiwatch.alert.Report report with `events` (each `{event, hooks}`), `pending`, `resolved` and `firing`
function Registry:step(st, kpis_in, now, opts)
  return state.step(self, st, kpis_in, now, opts)
end

--- The options of `alert.watch`.
---@class kpiwatch.alert.WatchOptions
---@field ids string[]|fun(): string[] the executions, or a function returning them each cycle
---@field every? string|number the poll interval (default 60 s)
---@field state? string the state file (alert states and unsent events survive restarts)
---@field spool? string default `<state>.spool`, else the default spool
---@field max_cycles? integer stop after this many cycles
---@field on_cycle? fun(report: kpiwatch.alert.Report, n: integer): boolean? called after each cycle; `false` stops
---@field concurrency? integer fetches in flight

--- Poll through `kpis.get_all` every `every` until SIGINT or SIGTERM,
--- `max_cycles`, or `on_cycle` returning false, then stop cleanly. With `state`,
--- alert states and not-yet-sent events persist across restarts (written
--- atomically, mode 0600): a restart neither re-fires nor forgets. An execution
--- that fails to fetch keeps its alerts; one no longer in `ids`, or a removed
--- rule, resolves its alerts. The summary's `interrupted` is the signal
--- (`"int"`, `"term"`) that stopped it, `last` the last cycle's report.
---@async
---@param opts kpiwatch.alert.WatchOptions
---@return table summary `{cycles, delivered, spooled, lost, spool, interrupted, last}`
function Registry:watch(opts)
  return watch.watch(self, opts)
end

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

--- Evaluate every rule once, notify the hooks of what fires (re-sending what is
--- spooled first), and spool what cannot be delivered. A notification that could
--- be neither delivered nor spooled is lost: with `exit_on_lost` (the default)
--- `check` then raises an error of kind `lost` whose `report` field is the
--- report (the command line exits 3); the library never ends the process.
--- SIGINT, SIGTERM or SIGHUP during the deliveries cancels them, spools them,
--- and raises an error of kind `interrupted` with `signal` ("int", "term",
--- "hup") and `report` (the command line and a script exit 130, 143 or 129).
--- A `task.cancel` of the task running `check` likewise stops the deliveries
--- and spools what they did not deliver, then raises the cancellation's reason.
---@async
---@param x string|kpiwatch.Kpi|table an id, a KPI object, a body, or a list of those
---@param opts? {spool?: string} another spool path
---@return kpiwatch.alert.Report report with `deliveries` and their counts
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

  local sp = deliver.open_spool(self, self:_spool_path(opts))
  rep.spool = sp.path
  -- SIGTERM or SIGHUP (a CI job cancelled while a webhook is down) or
  -- Ctrl-C cancels the deliveries, which then spool, and check raises kind
  -- "interrupted": the CLI exits 143, 129 or 130. Left to the interrupt, a
  -- Ctrl-C was swallowed by the deliveries' pool (check returned a failed
  -- report: a script exited 1) and left their tasks running past the end.
  local ctx = deliver.stop_context({ "int", "term", "hup" })
  local ok, err = pcall(function()
    -- cancelled during the replay: this check's notifications are still
    -- spooled, untried (as on a signal), then the cancellation is raised
    local replayed, rerr = pcall(self._replay, self, sp, ctx, rep)
    if not replayed then ctx.stopping = true end
    local now = os.time()
    local jobs = {}
    for _, a in ipairs(rep.firing) do
      local src = report.SOURCES[a]
      local ev = report.make_event(a, "firing", now, src[2])
      for _, h in ipairs(self:_hooks_of(src[1])) do
        jobs[#jobs + 1] = { hook = h, event = ev }
      end
    end
    -- a cancellation of this task comes back once the rest is spooled
    local _, cancelled = self:_deliver(group.jobs(self, jobs), sp, ctx, rep)
    if not replayed then error(rerr, 0) end
    if cancelled then error(cancelled, 0) end
  end)
  deliver.stop_end(ctx)
  if not ok then error(err, 0) end
  if ctx.signal then
    errors.raise("interrupted", format("SIG%s during delivery: %d notification%s spooled to %s, %d lost",
      ctx.signal:upper(), rep.spooled, rep.spooled == 1 and "" or "s", sp.path, rep.lost),
      { signal = ctx.signal, report = rep })
  end
  if rep.lost > 0 and self.config.exit_on_lost then
    -- The library does not end the process: the CLI exits 3 on this kind.
    errors.raise("lost", format("%d notification%s could be neither delivered nor spooled",
      rep.lost, rep.lost == 1 and "" or "s"), { report = rep })
  end
  return rep
end

-- ---- module-level API (the default registry) -------------------------------------

local default = M.registry()

--- A fresh registry holding a file's rules. The file calls `alert.rule{}` or
--- returns a list of rule tables; it sees `alert` and `notify` without a
--- `require`, and its globals stay its own. It has no way to end the process:
--- `os.exit`, `alert.check` and `alert.watch` raise a `config` error there, also
--- later, from the predicates and tasks it defines (a failed task of the file is
--- a warning). Errors name the file, the line and the field.
---@param path string
---@return kpiwatch.alert.Registry registry
function M.load_rules(path)
  return rules_file.load(M, path, function(reg)
    local saved = default
    default = reg
    return saved
  end)
end

--- Empty the default registry.
---@return kpiwatch.alert.Registry registry the new default registry
function M.reset()
  default = M.registry()
  return default
end

--- The default registry (what the module functions act on).
---@return kpiwatch.alert.Registry registry
function M.default()
  return default
end

for _, name in ipairs({ "rule", "hook", "configure", "evaluate", "check", "watch", "step" }) do
  M[name] = function(...) return default[name](default, ...) end
end

--- The default registry's rules.
---@return kpiwatch.alert.Rule[] rules
function M.rules()
  return default.rules
end

M.Registry = Registry
return M
