-- Grafana session, Round-trip time per participant: each report's largest round-trip time
-- (remote-inbound-rtp's roundTripTime, the candidate pair's currentRoundTripTime) per
-- connection of the session. Gauges need no window (see overview_rtt.sql).
SELECT timestamp AS time, connection_id,
    1000.0 * max(CASE rtc_type
        WHEN 'remote-inbound-rtp' THEN json_extract(rtc_data, 'roundTripTime')
        ELSE json_extract(rtc_data, 'currentRoundTripTime') END::DOUBLE) AS "RTT"
FROM rtc_stats
WHERE session_id = ${session:sqlstring}
    AND rtc_type IN ('remote-inbound-rtp', 'candidate-pair') AND $__timeFilter(timestamp)
GROUP BY connection_id, timestamp
ORDER BY time
