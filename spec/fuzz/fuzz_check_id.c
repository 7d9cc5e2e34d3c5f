/* fuzz_check_id: execution ids as users type them (kpis.check_id, kpis.is_uuid).
 * The driver, spec/fuzz/check_id.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "check_id.lua"
#include "fuzz_lua.h"
