-- Grafana connection, Packet loss: per stream received (inbound-rtp: packets lost over
-- packets expected since the previous sample) and as the other end reports what this end
-- sends (remote-inbound-rtp: fractionLost).
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "packetsReceived": "DOUBLE",
            "packetsLost": "DOUBLE", "fractionLost": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'remote-inbound-rtp')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, t - lag(t) OVER w AS interval_s, lag(s) OVER w AS p
    FROM stats WINDOW w AS (PARTITION BY rtc_id ORDER BY t)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    CASE rtc_type
        WHEN 'inbound-rtp' THEN CASE
            WHEN counter_delta(s.packetsReceived, p.packetsReceived)
                + counter_delta(s.packetsLost, p.packetsLost) > 0
            THEN 100.0 * counter_delta(s.packetsLost, p.packetsLost)
                / (counter_delta(s.packetsReceived, p.packetsReceived)
                    + counter_delta(s.packetsLost, p.packetsLost))
            ELSE 0 END
        ELSE 100.0 * s.fractionLost END AS loss
FROM lagged
WHERE interval_s > 0 AND time >= $__timeFrom()
ORDER BY time
