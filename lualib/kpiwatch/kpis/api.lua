-- kpiwatch.kpis.api: the table `require "kpiwatch.kpis"` returns. Every file
-- of kpis/ adds its part of the API to this one table, so what tests and
-- kpiwatch.metrics replace on it (_random, _observer, _buckets) is seen by
-- all of them; the config cache stays in config.lua, the one place it lives.
return {}
