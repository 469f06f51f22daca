"""The lake: its layout (:mod:`.layout`, the one place that knows where a file goes), the
sink that writes it (:mod:`.sink`) and the query engine that reads it (:mod:`.query`)."""
