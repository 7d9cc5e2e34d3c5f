/* fuzz_requirement: gate requirement strings and --max-drop/--max-rise limits
 * (kpiwatch.requirement parse, parse_limit, evaluate, compare).
 * The driver, spec/fuzz/requirement.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "requirement.lua"
#include "fuzz_lua.h"
