-- luacheck configuration (Debian lua-check): `make lint` runs it over every
-- Lua file of the repository and fails on any warning.
std = "lua54"
max_line_length = 120
-- Fixture bodies and fuzz dictionaries are data, not code lines.
max_string_line_length = false
max_comment_line_length = 160

-- What the kpiwatch binary gives a script without a require (see
-- lualib/kpiwatch/cli/init.lua): scripts, examples, tools and tests run
-- under it. Library modules get none of them: they require what they use.
stds.kpiwatch = { read_globals = { "task", "json", "http", "kpis" } }
for _, dir in ipairs({ "scripts", "examples", "tools", "spec" }) do
  files[dir .. "/**/*.lua"] = { std = "lua54+kpiwatch" }
end
files["spec/lua/**/*.lua"] = { std = "lua54+kpiwatch+busted" }
-- The fuzz drivers run inside the libFuzzer harness (spec/fuzz/fuzz_lua.h),
-- which sets these.
files["spec/fuzz/*.lua"] = { std = "lua54+kpiwatch", read_globals = { "fuzz", "FUZZ_DIR" } }
