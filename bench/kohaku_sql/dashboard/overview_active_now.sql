-- Overview: the connections and sessions active now, i.e. that sent stats in the last 120 s
-- (rtclake: active_now_sql; this corpus has no connection log or webhooks, so stats are
-- the only source on both sides).
SELECT count(DISTINCT connection_id) AS connections,
    count(DISTINCT session_id) AS sessions
FROM rtc_stats
WHERE timestamp >= CAST($__timeTo() AS TIMESTAMP) - INTERVAL 120 SECOND
    AND timestamp <= $__timeTo()
