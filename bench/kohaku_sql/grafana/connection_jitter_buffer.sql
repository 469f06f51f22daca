-- Grafana connection, Jitter buffer delay: per stream received, the average time a sample
-- waited in the jitter buffer since the previous sample, ms.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "jitterBufferDelay": "DOUBLE",
            "jitterBufferEmittedCount": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, t - lag(t) OVER w AS interval_s, lag(s) OVER w AS p
    FROM stats WINDOW w AS (PARTITION BY rtc_id ORDER BY t)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    CASE WHEN counter_delta(s.jitterBufferEmittedCount, p.jitterBufferEmittedCount) > 0
        THEN 1000.0 * counter_delta(s.jitterBufferDelay, p.jitterBufferDelay)
            / counter_delta(s.jitterBufferEmittedCount, p.jitterBufferEmittedCount) END AS delay
FROM lagged
WHERE interval_s > 0 AND time >= $__timeFrom()
ORDER BY time
