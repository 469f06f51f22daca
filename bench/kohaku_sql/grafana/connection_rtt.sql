-- Grafana connection, Round-trip time: the other end's reports (remote-inbound-rtp
-- roundTripTime) and ICE's (the candidate pair's currentRoundTripTime), ms. A gauge needs
-- no window: a stream's first sample shows here, where rtclake's rates-based view starts
-- at its second.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time,
        json_transform(rtc_data, '{"kind": "VARCHAR", "roundTripTime": "DOUBLE",
            "currentRoundTripTime": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('remote-inbound-rtp', 'candidate-pair')
        AND $__timeFilter(timestamp)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    1000.0 * coalesce(s.roundTripTime, s.currentRoundTripTime) AS rtt
FROM stats
ORDER BY time
