-- Grafana session, Bitrate received per participant: per connection of the session and report,
-- the bits per second received (inbound-rtp, audio and video summed), from bytesReceived since each
-- stream's previous sample.
WITH stats AS (
    SELECT connection_id, rtc_id, timestamp AS time, rtc_timestamp / 1000 AS t,
        json_extract(rtc_data, 'bytesReceived')::DOUBLE AS bytes
    FROM rtc_stats
    WHERE session_id = ${session:sqlstring} AND rtc_type = 'inbound-rtp'
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp <= $__timeTo()
), rates AS (
    SELECT connection_id, time, t - lag(t) OVER w AS interval_s,
        8.0 * counter_delta(bytes, lag(bytes) OVER w) / (t - lag(t) OVER w) AS bitrate_bps
    FROM stats WINDOW w AS (PARTITION BY connection_id, rtc_id ORDER BY t)
)
SELECT time, connection_id, sum(bitrate_bps) AS "received"
FROM rates
WHERE interval_s > 0 AND time >= $__timeFrom()
GROUP BY time, connection_id
ORDER BY time
