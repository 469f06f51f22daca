-- Grafana overview, Active connections: per bucket, the connections with a client report.
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), timestamp) AS time,
    count(DISTINCT connection_id) AS connections
FROM rtc_stats WHERE $__timeFilter(timestamp)
GROUP BY 1 ORDER BY 1
