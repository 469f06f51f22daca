-- Grafana connection, Quality limitation: per video stream sent, the share of each interval
-- since the previous sample the encoder spent limited by nothing, the CPU, the bandwidth or
-- another reason (qualityLimitationDurations, seconds per reason, as counters).
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "qualityLimitationDurations": {
            "none": "DOUBLE", "cpu": "DOUBLE", "bandwidth": "DOUBLE", "other": "DOUBLE"}}')
            AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type = 'outbound-rtp'
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), deltas AS (
    SELECT time, rtc_type, rtc_id, s.kind, t - lag(t) OVER w AS interval_s,
        counter_delta(s.qualityLimitationDurations.none,
            lag(s.qualityLimitationDurations.none) OVER w) AS none,
        counter_delta(s.qualityLimitationDurations.cpu,
            lag(s.qualityLimitationDurations.cpu) OVER w) AS cpu,
        counter_delta(s.qualityLimitationDurations.bandwidth,
            lag(s.qualityLimitationDurations.bandwidth) OVER w) AS bandwidth,
        counter_delta(s.qualityLimitationDurations.other,
            lag(s.qualityLimitationDurations.other) OVER w) AS other,
        none + cpu + bandwidth + other AS total
    FROM stats WHERE s.kind = 'video'
    WINDOW w AS (PARTITION BY rtc_id ORDER BY t)
)
SELECT time, concat_ws(' ', 'out', kind, rtc_id) AS stream,
    CASE WHEN total > 0 THEN none / total END AS none,
    CASE WHEN total > 0 THEN cpu / total END AS cpu,
    CASE WHEN total > 0 THEN bandwidth / total END AS bandwidth,
    CASE WHEN total > 0 THEN other / total END AS other
FROM deltas
WHERE interval_s > 0 AND time >= $__timeFrom()
ORDER BY time
