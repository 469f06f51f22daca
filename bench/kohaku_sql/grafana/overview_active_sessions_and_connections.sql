-- Grafana overview, Active sessions and connections: per bucket, the sessions and the
-- connections with a client report.
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), timestamp) AS time,
    count(DISTINCT session_id) AS sessions, count(DISTINCT connection_id) AS connections
FROM rtc_stats WHERE $__timeFilter(timestamp)
GROUP BY 1 ORDER BY 1
