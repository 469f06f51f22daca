-- Grafana variable connection: the session's connections that reported in the range, with
-- their client and role, in the order they first reported.
SELECT connection_id AS __value,
    concat_ws(' ', connection_id, any_value(client_id), any_value(role)) AS __text
FROM rtc_stats
WHERE $__timeFilter(timestamp) AND session_id = ${session:sqlstring}
    AND connection_id IS NOT NULL
GROUP BY connection_id ORDER BY min(timestamp)
