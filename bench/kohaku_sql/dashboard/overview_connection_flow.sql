-- Overview: connections created per minute, per bucket; created is a connection's first
-- report, looking back a day before the range (rtclake: connection_flow_sql; no connection
-- log in this corpus, so nothing is destroyed on either side).
WITH created AS (
    SELECT connection_id, min(timestamp) AS t
    FROM rtc_stats
    WHERE timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 1 DAY
        AND timestamp < $__timeTo()
    GROUP BY connection_id
)
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), t) AS time,
    60000.0 * count(*) / ${__interval_ms:raw} AS created_per_min, count(*) AS created
FROM created
WHERE t >= $__timeFrom() AND t < $__timeTo()
GROUP BY 1 ORDER BY 1
