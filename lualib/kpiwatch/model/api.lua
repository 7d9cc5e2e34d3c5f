-- kpiwatch.model.api: the table `require "kpiwatch.model"` returns. Every
-- file of model/ adds its part of the API to this one table, so a field
-- replaced on it (MAX_KEYS, ...) is seen by all of them.
return {}
