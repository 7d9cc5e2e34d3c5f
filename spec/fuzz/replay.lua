-- spec/fuzz/replay.lua TARGET FILE...: run fuzz_TARGET's driver over the
-- files with the kpiwatch binary itself, no libFuzzer and no clang needed:
--   kpiwatch spec/fuzz/replay.lua json_kpi spec/fuzz/corpus/json_kpi/*
-- Prints one line per failing file; exits 1 if any failed.
-- spec/e2e/test_fuzz_replay.sh replays every seed and regression this way
-- in the normal and the sanitizer build.

local target = assert(arg[1], "usage: kpiwatch spec/fuzz/replay.lua TARGET FILE...")
FUZZ_DIR = arg[0]:match("^(.*)/[^/]*$") or "."
dofile(FUZZ_DIR .. "/common.lua")
local driver = dofile(FUZZ_DIR .. "/" .. target .. ".lua")

local failed = 0
for i = 2, #arg do
  local f = assert(io.open(arg[i], "rb"))
  local input = f:read("a")
  f:close()
  local ok, err = xpcall(driver, debug.traceback, input)
  if not ok then
    failed = failed + 1
    io.stderr:write(("FAIL %s: %s\n"):format(arg[i], tostring(err)))
  end
end
print(("%s: %d inputs, %d failed"):format(target, #arg - 1, failed))
os.exit(failed == 0 and 0 or 1)
