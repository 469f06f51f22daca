-- Grafana session, Audio loss per participant: per connection of the session and report,
-- the larger of the audio loss received (inbound-rtp: packetsLost over packets expected
-- since the stream's previous sample) and the loss the other end reports (remote-inbound-rtp
-- fractionLost).
WITH stats AS (
    SELECT connection_id, rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "packetsReceived": "DOUBLE",
            "packetsLost": "DOUBLE", "fractionLost": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE session_id = ${session:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'remote-inbound-rtp')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), deltas AS (
    SELECT connection_id, time, rtc_type, s.fractionLost AS fraction_lost,
        t - lag(t) OVER w AS interval_s,
        counter_delta(s.packetsReceived, lag(s.packetsReceived) OVER w) AS received,
        counter_delta(s.packetsLost, lag(s.packetsLost) OVER w) AS lost
    FROM stats WHERE s.kind = 'audio'
    WINDOW w AS (PARTITION BY connection_id, rtc_id ORDER BY t)
)
SELECT time, connection_id,
    max(CASE rtc_type
        WHEN 'inbound-rtp' THEN
            CASE WHEN received + lost > 0 THEN 100.0 * lost / (received + lost) ELSE 0 END
        ELSE 100.0 * fraction_lost END) AS "audio loss"
FROM deltas
WHERE interval_s > 0 AND time >= $__timeFrom()
GROUP BY connection_id, time
ORDER BY time
