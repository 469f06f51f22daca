-- Grafana connection, Packets per second: per stream sent and received, every sample's
-- packets per second since the stream's previous sample.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "packetsSent": "DOUBLE",
            "packetsReceived": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, t - lag(t) OVER w AS interval_s, lag(s) OVER w AS p
    FROM stats WINDOW w AS (PARTITION BY rtc_id ORDER BY t)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    coalesce(counter_delta(s.packetsSent, p.packetsSent),
        counter_delta(s.packetsReceived, p.packetsReceived)) / interval_s AS packets
FROM lagged
WHERE interval_s > 0 AND time >= $__timeFrom()
ORDER BY time
