-- Grafana connection, Jitter: per stream received and reported by the other end, each
-- sample's jitter in ms. A gauge needs no window: a stream's first sample shows here,
-- where rtclake's rates-based view starts at its second.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time,
        json_transform(rtc_data, '{"kind": "VARCHAR", "jitter": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'remote-inbound-rtp')
        AND $__timeFilter(timestamp)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    1000.0 * s.jitter AS jitter
FROM stats
ORDER BY time
