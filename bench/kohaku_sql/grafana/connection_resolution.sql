-- Grafana connection, Resolution: per video stream sent and received, each sample's frame
-- width and height. A gauge needs no window: a stream's first sample shows here, where
-- rtclake's rates-based view starts at its second.
WITH stats AS (
    SELECT rtc_id, rtc_type, timestamp AS time,
        json_transform(rtc_data, '{"kind": "VARCHAR", "frameWidth": "DOUBLE",
            "frameHeight": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp')
        AND $__timeFilter(timestamp)
)
SELECT time, concat_ws(' ', CASE rtc_type WHEN 'inbound-rtp' THEN 'in'
        WHEN 'outbound-rtp' THEN 'out' WHEN 'remote-inbound-rtp' THEN 'out (remote)'
        ELSE 'pair' END, s.kind, rtc_id) AS stream,
    s.frameWidth AS width, s.frameHeight AS height
FROM stats
WHERE s.kind = 'video'
ORDER BY time
