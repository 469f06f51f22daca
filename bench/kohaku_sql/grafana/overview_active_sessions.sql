-- Grafana overview, Active sessions: per bucket, the sessions with a client report.
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), timestamp) AS time,
    count(DISTINCT session_id) AS sessions
FROM rtc_stats WHERE $__timeFilter(timestamp)
GROUP BY 1 ORDER BY 1
