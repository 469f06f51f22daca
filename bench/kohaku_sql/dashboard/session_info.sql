-- Session page: the session's channel, its first and last report and its connections
-- (rtclake: session_sql).
SELECT any_value(channel_id) AS channel_id, min(timestamp) AS first_seen,
    max(timestamp) AS last_seen, count(DISTINCT connection_id) AS connections
FROM rtc_stats
WHERE session_id = ${session:sqlstring}
