/* fuzz_kpis_response: a whole HTTP response (status, headers, body) through
 * kpis.get: the success path, error classification, Retry-After, redaction.
 * The driver, spec/fuzz/kpis_response.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "kpis_response.lua"
#include "fuzz_lua.h"
