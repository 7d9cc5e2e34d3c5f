-- tools/gen_lua_api.lua LUALIB: print doc/lua-api.md, the reference of the
-- public Lua modules, generated from their LuaCATS annotations (as Neovim's
-- gen_vimdoc makes lua.txt). Run it with the built binary or plain Lua:
--
--   build/kpiwatch tools/gen_lua_api.lua lualib > doc/lua-api.md   (make doc)
--
-- What it reads, per module (MODULES below, in that order):
--   lualib/kpiwatch/_meta/NAME.lua   annotations of what C implements
--   lualib/kpiwatch/NAME.lua, or lualib/kpiwatch/NAME/init.lua (a folder)
--     and the files of the folder that init.lua requires and that add to its
--     table (they require NAME.api), in that order
-- A `---` comment block documents the line after it:
--   function M.f(a, b)        the module's function (M: the table the file returns)
--   function Class:m(a)       a method; Class is a local declared right after a
--   function Class.m(...)     `---@class Name` block, shown as Name:m(a) (the
--                             parameters from @param when the code has `...`)
--   M.f = ...                 a function when the block has @param/@return,
--   Class.m = ...             otherwise a value (Class.m is shown as Name:m)
--   local Class = {}          after a block with `---@class Name` (and @field lines)
-- A block holding `---@brief` is the module's introduction. Names starting
-- with `_`, and blocks tagged `---@private` or `---@nodoc`, are left out. A
-- public `function M.f` or `function Class:m` with no block is named on
-- stderr, so a new function does not go undocumented unnoticed.
-- Tags: @param name[?] type desc, @return type desc, @class, @field,
-- @overload, @async, @see, @deprecated; text lines after a tag continue it.

local MODULES = { "task", "http", "json", "kpis", "execution", "model", "shared", "time", "alert", "notify",
  "metrics", "comment", "sandbox", "repl", "history", "stats" }

local root = arg and arg[1]
if not root then
  io.stderr:write("usage: gen_lua_api.lua LUALIB_DIR\n")
  os.exit(2)
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Splits "type rest" where the type may hold spaces inside brackets, and
-- `fun(...): ret` or `a | b` forms. Returns type, rest.
local function split_type(s)
  s = s:gsub("^%s+", "")
  local i, n, depth = 1, #s, 0
  local open = { ["("] = 1, ["["] = 1, ["{"] = 1, ["<"] = 1 }
  local close = { [")"] = 1, ["]"] = 1, ["}"] = 1, [">"] = 1 }
  while i <= n do
    local c = s:sub(i, i)
    if open[c] then
      depth = depth + 1
    elseif close[c] and depth > 0 then
      depth = depth - 1
    elseif c:match("%s") and depth == 0 then
      local rest = s:sub(i)
      -- `fun(a): ret` and `a | b` continue the type past the space
      local cont = rest:match("^%s*|%s*()") or (s:sub(i - 1, i - 1) == ":" and rest:match("^%s*()"))
      if cont and cont <= #rest then
        i = i + cont - 2 -- the loop's increment lands on the type's next character
      else
        break
      end
    end
    i = i + 1
  end
  local ty = s:sub(1, i - 1):gsub("%s+$", "")
  return ty, (s:sub(i):gsub("^%s+", ""))
end

-- Parses one comment block into {desc = {lines}, params, returns, ...}.
local function parse_block(lines)
  local b = { desc = {}, params = {}, returns = {}, fields = {}, overloads = {}, see = {} }
  local last -- the tag a continuation line extends
  for _, l in ipairs(lines) do
    local tag, rest = l:match("^@(%w+)%s*(.*)$")
    if tag == "param" then
      local name, r = rest:match("^(%S+)%s*(.*)$")
      local ty, d = split_type(r or "")
      last = { name = name, type = ty, desc = d }
      b.params[#b.params + 1] = last
    elseif tag == "return" then
      -- LuaCATS: @return type [name [comment]], or @return type # comment
      local ty, d = split_type(rest)
      local name
      if d:sub(1, 1) == "#" then
        d = d:gsub("^#%s*", "")
      else
        name, d = d:match("^(%S*)%s*(.*)$")
        if name == "" then name = nil end
      end
      last = { type = ty, name = name, desc = d }
      b.returns[#b.returns + 1] = last
    elseif tag == "field" then
      local name, r = rest:match("^(%S+)%s*(.*)$")
      local ty, d = split_type(r or "")
      last = { name = name, type = ty, desc = d }
      b.fields[#b.fields + 1] = last
    elseif tag == "class" then
      b.class = rest:match("^(%S+)")
      last = nil
    elseif tag == "overload" then
      last = { desc = rest }
      b.overloads[#b.overloads + 1] = last
    elseif tag == "see" then
      last = { desc = rest }
      b.see[#b.see + 1] = last
    elseif tag then
      b[tag] = rest ~= "" and rest or true
      last = nil
    elseif last then
      local t = l:gsub("^%s+", "")
      if t ~= "" then last.desc = (last.desc ~= "" and last.desc .. " " or "") .. t end
    else
      b.desc[#b.desc + 1] = l
    end
  end
  return b
end

local function short(module)
  return module:match("([^.]+)$")
end

-- Reads one file's documented items into items[] (in source order).
local function scan(path, module, mod, items)
  local src = read(path)
  if not src then return false end
  local modvar = src:match("\nreturn%s+([%a_][%w_]*)%s*$") or "M"
  local classes = {} -- local variable -> class name
  local block = nil
  for line in (src .. "\n"):gmatch("(.-)\r?\n") do
    local c = line:match("^%s*%-%-%-(.*)$")
    if c and not line:match("^%s*%-%-%-%-") then
      block = block or {}
      block[#block + 1] = c:gsub("^ ", "", 1)
    else
      if block then
        local b = parse_block(block)
        local skip = b.private or b.nodoc
        if b.brief then
          mod.brief = mod.brief or {}
          for _, l in ipairs(b.desc) do mod.brief[#mod.brief + 1] = l end
        elseif b.class then
          local var = line:match("^%s*local%s+([%a_][%w_]*)%s*=")
          if var then classes[var] = b.class end
          if not skip then items[#items + 1] = { kind = "class", name = b.class, b = b } end
        elseif not skip then
          local owner, sep, name, args = line:match("^%s*function%s+([%a_][%w_]*)([.:])([%a_][%w_]*)%s*%(([^)]*)%)")
          local item
          if owner and name:sub(1, 1) ~= "_" then
            local list = {}
            for a in args:gmatch("[^,%s]+") do list[#list + 1] = a end
            -- function(...) taking documented parameters (a closure that
            -- accepts both obj.f(x) and obj:f(x)): show the parameters
            local varargs = #list == 1 and list[1] == "..." and #b.params > 0
            if varargs then
              list = {}
              for _, p in ipairs(b.params) do list[#list + 1] = (p.name:gsub("%?$", "")) end
            end
            local prefix
            if owner == modvar then
              prefix = short(module) .. "."
            elseif classes[owner] then
              -- objects of a class are called as obj:m(...)
              if sep == "." and list[1] == "self" then table.remove(list, 1) end
              prefix = short(classes[owner]) .. ":"
            else
              prefix = owner .. sep
            end
            item = { kind = "function", name = prefix .. name, args = table.concat(list, ", "), b = b }
          else
            local var, vname = line:match("^%s*([%a_][%w_]*)%.([%a_][%w_]*)%s*=")
            local prefix = var == modvar and short(module) .. "."
              or classes[var] and short(classes[var]) .. ":"
            if prefix and vname:sub(1, 1) ~= "_" then
              if #b.params > 0 or #b.returns > 0 then
                local list = {}
                for _, p in ipairs(b.params) do list[#list + 1] = (p.name:gsub("%?$", "")) end
                item = { kind = "function", name = prefix .. vname,
                  args = table.concat(list, ", "), b = b }
              else
                item = { kind = "value", name = prefix .. vname, b = b }
              end
            end
          end
          items[#items + 1] = item
        end
      elseif not path:find("/_meta/", 1, true) then
        -- a public function with no annotation: say so (stderr only)
        local owner, name = line:match("^function%s+([%a_][%w_]*)[.:]([%a_][%w_]*)%s*%(")
        if owner and (owner == modvar or classes[owner]) and name:sub(1, 1) ~= "_" then
          io.stderr:write("gen_lua_api: ", path, ": ", owner, ".", name, " has no annotation\n")
        end
      end
      block = nil
    end
  end
  return true
end

local out = {}
local function emit(s)
  out[#out + 1] = s or ""
end

-- GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'.
local used = {}
local function anchor(text)
  local a = text:lower():gsub("[^%w%s_-]", ""):gsub("%s", "-")
  local base, n = a, used[a]
  if n then a = base .. "-" .. n end
  used[base] = (n or 0) + 1
  return a
end

local function paragraph(lines)
  -- drop leading and trailing blank lines, keep the rest as written
  local first, last = 1, #lines
  while first <= last and lines[first]:match("^%s*$") do first = first + 1 end
  while last >= first and lines[last]:match("^%s*$") do last = last - 1 end
  for i = first, last do emit(lines[i]) end
  if last >= first then emit() end
end

local function code(s)
  if s == nil or s == "" then return "" end
  local ticks = s:find("`", 1, true) and "``" or "`"
  local pad = ticks == "``" and " " or ""
  return ticks .. pad .. s .. pad .. ticks
end

local function render_item(it)
  local b = it.b
  if it.kind == "class" then
    emit("### " .. code(it.name))
    emit()
    paragraph(b.desc)
    if #b.fields > 0 then
      emit("Fields:")
      for _, f in ipairs(b.fields) do
        emit("- " .. code(f.name) .. " (" .. code(f.type) .. ")" .. (f.desc ~= "" and ": " .. f.desc or ""))
      end
      emit()
    end
    return
  end
  if it.kind == "value" then
    emit("### " .. code(it.name))
  else
    emit("### " .. code(it.name .. "(" .. it.args .. ")"))
  end
  emit()
  if b.deprecated then
    emit("**Deprecated**" .. (type(b.deprecated) == "string" and ": " .. b.deprecated or "") .. ".")
    emit()
  end
  paragraph(b.desc)
  if b.async then
    emit("Async: suspends only the calling task (and turns the event loop where the caller cannot yield).")
    emit()
  end
  if b.type then
    emit("Type: " .. code(b.type))
    emit()
  end
  if #b.overloads > 0 then
    emit("Also:")
    for _, o in ipairs(b.overloads) do emit("- " .. code(o.desc)) end
    emit()
  end
  if #b.params > 0 then
    emit("Parameters:")
    for _, p in ipairs(b.params) do
      emit("- " .. code(p.name) .. " (" .. code(p.type) .. ")" .. (p.desc ~= "" and ": " .. p.desc or ""))
    end
    emit()
  end
  if #b.returns > 0 then
    emit("Returns:")
    for _, r in ipairs(b.returns) do
      emit("- " .. (r.name and code(r.name) .. " " or "") .. "(" .. code(r.type) .. ")"
        .. (r.desc ~= "" and ": " .. r.desc or ""))
    end
    emit()
  end
  if #b.see > 0 then
    local s = {}
    for _, x in ipairs(b.see) do s[#s + 1] = code(x.desc) end
    emit("See also: " .. table.concat(s, ", ") .. ".")
    emit()
  end
end

local modules = {}
for _, name in ipairs(MODULES) do
  local module = "kpiwatch." .. name
  local mod = { name = module, items = {} }
  local base = root .. "/kpiwatch/"
  local found = scan(base .. "_meta/" .. name .. ".lua", module, mod, mod.items)
  found = scan(base .. name .. ".lua", module, mod, mod.items) or found
  -- A folder whose files share the module's table (each requires
  -- NAME.api, the table init.lua returns): the files init.lua requires,
  -- in that order, then init.lua. Other folders' files are private.
  local init = read(base .. name .. "/init.lua")
  if init then
    local quoted = module:gsub("%.", "%%.")
    local seen = {}
    for sub in init:gmatch("require%s*%(?%s*[\"']" .. quoted .. "%.([%w_]+)[\"']") do
      local path = base .. name .. "/" .. sub .. ".lua"
      local src = not seen[sub] and read(path)
      seen[sub] = true
      if src and src:find("require%s*%(?%s*[\"']" .. quoted .. "%.api[\"']") then
        scan(path, module, mod, mod.items)
      end
    end
  end
  found = scan(base .. name .. "/init.lua", module, mod, mod.items) or found
  if not found then
    io.stderr:write("gen_lua_api: no source for ", module, " under ", root, "\n")
    os.exit(1)
  end
  modules[#modules + 1] = mod
end

emit("# kpiwatch Lua API")
emit()
emit("<!-- Generated by tools/gen_lua_api.lua from the LuaCATS annotations in lualib/.")
emit("     Do not edit: change the annotations and run `make doc`. -->")
emit()
emit("Every module is `require \"kpiwatch.NAME\"`; `task`, `json`, `http` and `kpis` are also")
emit("globals. Functions marked async suspend only the calling task. Errors are")
emit("`kpiwatch.errors` objects (`kind`, `message`, ...) unless a function says otherwise.")
emit()
for _, mod in ipairs(modules) do
  emit("- [" .. mod.name .. "](#" .. anchor(mod.name) .. ")")
end
emit()
for _, mod in ipairs(modules) do
  emit("## " .. mod.name)
  emit()
  if mod.brief then paragraph(mod.brief) end
  if #mod.items == 0 then
    emit("(No annotated functions yet.)")
    emit()
  end
  for _, it in ipairs(mod.items) do render_item(it) end
end
-- one trailing newline
while out[#out] == "" do out[#out] = nil end
io.stdout:write(table.concat(out, "\n"), "\n")
