/* fuzz_template: alert summary and label templates (kpiwatch.template render
 * with the alert engine's lookup over a fixture KPI object).
 * The driver, spec/fuzz/template.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "template.lua"
#include "fuzz_lua.h"
