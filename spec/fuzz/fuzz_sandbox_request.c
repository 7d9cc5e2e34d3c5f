/* fuzz_sandbox_request: requests to the sandbox (kpiwatch.sandbox's handler on
 * a fuzzed method, path, query and headers; http_server.parse_query).
 * The driver, spec/fuzz/sandbox_request.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "sandbox_request.lua"
#include "fuzz_lua.h"
