/* fuzz_json_kpi: a KPIs response body (JSON text) through json.decode,
 * kpiwatch.model and what reads a KPI object (gate, alert rules, templates).
 * The driver, spec/fuzz/json_kpi.lua, runs the code and checks its outcome;
 * spec/fuzz/fuzz_lua.h is the harness. */
#define KW_FUZZ_DRIVER "json_kpi.lua"
#include "fuzz_lua.h"
