---@meta
-- Annotations of kpiwatch.json, which C implements (runtime/json.c): read by
-- tools/gen_lua_api.lua and language servers, never loaded.
-- luacheck: ignore
error("kpiwatch._meta files are documentation; require \"kpiwatch.json\"")

local json = {}

---@brief
--- JSON over Debian's lua-cjson 2.1.0 (global `json`). Integral numbers decode
--- as Lua integers (`50`, not `50.0`); JSON `null` decodes as `json.null`; an
--- empty array decodes as a table marked with `json.array_mt`, so `[]`
--- round-trips.

--- Decode JSON text into a Lua value. Raises
--- `invalid JSON: <cjson's message with the character position>`.
---@param text string the JSON text
---@return any value a table, string, number, boolean or `json.null`
function json.decode(text) end

--- Encode a Lua value as JSON text. NaN and ±infinity are written as `null`
--- (as JavaScript does), so a body from a Python server still encodes. Raises
--- `cannot encode JSON: ...` for what JSON cannot hold (functions, sparse
--- arrays, cycles).
---@param value any a table, string, number, boolean or `json.null`
---@return string text
function json.encode(value) end

--- Mark a table as an array, so that it encodes as `[]` when empty.
---@param t? table the table to mark (default: a new one)
---@return table t
function json.array(t) end

--- The value JSON `null` decodes to (a light userdata); encode it to write `null`.
---@type lightuserdata
json.null = nil

--- The metatable of tables marked as arrays (by `json.array` or by decoding `[]`).
---@type table
json.array_mt = nil

return json
