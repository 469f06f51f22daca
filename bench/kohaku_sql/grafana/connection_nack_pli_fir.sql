-- Grafana connection, NACK, PLI and FIR per minute: per video stream sent and received,
-- each per minute since the previous sample.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "nackCount": "DOUBLE",
            "pliCount": "DOUBLE", "firCount": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, t - lag(t) OVER w AS interval_s, lag(s) OVER w AS p
    FROM stats WHERE s.kind = 'video' WINDOW w AS (PARTITION BY rtc_id ORDER BY t)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    60.0 * counter_delta(s.nackCount, p.nackCount) / interval_s AS nack,
    60.0 * counter_delta(s.pliCount, p.pliCount) / interval_s AS pli,
    60.0 * counter_delta(s.firCount, p.firCount) / interval_s AS fir
FROM lagged
WHERE interval_s > 0 AND time >= $__timeFrom()
ORDER BY time
