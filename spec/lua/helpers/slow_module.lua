-- A module whose top level waits on the loop: require() cannot yield.
require("kpiwatch.task").sleep(0.01)
return { loaded_at = require("kpiwatch.task").now() }
