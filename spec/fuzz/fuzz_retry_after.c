/* fuzz_retry_after: Retry-After header values (http.parse_retry_after).
 * The driver, spec/fuzz/retry_after.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "retry_after.lua"
#include "fuzz_lua.h"
