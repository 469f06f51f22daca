-- Grafana overview, Round-trip time across connections: per bucket, the median, the 95th
-- percentile and the worst of each report's largest round-trip time (remote-inbound-rtp's
-- roundTripTime, the candidate pair's currentRoundTripTime). Gauges need no window: a
-- stream's first report counts here, where rtclake's rates-based view starts at its second.
WITH reports AS (
    SELECT connection_id, timestamp AS time,
        1000.0 * max(CASE rtc_type
            WHEN 'remote-inbound-rtp' THEN json_extract(rtc_data, 'roundTripTime')
            ELSE json_extract(rtc_data, 'currentRoundTripTime') END::DOUBLE) AS rtt_ms
    FROM rtc_stats
    WHERE rtc_type IN ('remote-inbound-rtp', 'candidate-pair') AND $__timeFilter(timestamp)
    GROUP BY connection_id, timestamp
)
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), time) AS time,
    quantile_cont(rtt_ms, 0.5) AS median, quantile_cont(rtt_ms, 0.95) AS "95th percentile",
    max(rtt_ms) AS worst
FROM reports
GROUP BY 1 ORDER BY 1
