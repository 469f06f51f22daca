-- Grafana overview, Top channels: the 20 channels with the most connections reporting in
-- the range.
SELECT channel_id, count(DISTINCT session_id) AS sessions,
    count(DISTINCT connection_id) AS connections, min(timestamp) AS first_report,
    max(timestamp) AS last_report
FROM rtc_stats WHERE $__timeFilter(timestamp)
GROUP BY channel_id
ORDER BY connections DESC LIMIT 20
