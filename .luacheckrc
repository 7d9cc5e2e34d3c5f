-- luacheck configuration (Debian lua-check): `make lint` runs it over
-- lualib/ and spec/ and fails on any warning.
std = "lua54"
max_line_length = 120
-- Fixture bodies and fuzz dictionaries are data, not code lines.
max_string_line_length = false
max_comment_line_length = 160
files["spec/**/*.lua"] = { std = "+busted" }
-- A spec may run under the binary's busted with kpiwatch's `task` global
-- (spec/valgrind, spec/bench scripts run by the binary itself).
files["spec/valgrind/*.lua"] = { globals = { "task" } }
