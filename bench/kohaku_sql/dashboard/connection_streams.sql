-- Connection page: the connection's streams and candidate pairs, and for a received
-- stream the sending connection (its trackIdentifier is <connection_id>-audio|video)
-- (rtclake: connection_streams_sql).
WITH streams AS (
    SELECT rtc_id, any_value(rtc_type) AS rtc_type,
        any_value(rtc_data->>'kind') AS media_kind,
        any_value(rtc_data->>'trackIdentifier') AS track_identifier,
        min(rtc_timestamp) AS first_seen, max(rtc_timestamp) AS last_seen
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp', 'remote-inbound-rtp', 'candidate-pair')
    GROUP BY rtc_id
)
SELECT rtc_id AS stats_id, rtc_type AS stats_type, media_kind,
    make_timestamp(CAST(1000 * first_seen AS BIGINT)) AS first_seen,
    make_timestamp(CAST(1000 * last_seen AS BIGINT)) AS last_seen,
    CASE WHEN rtc_type = 'inbound-rtp' AND track_identifier LIKE '%-%'
        THEN regexp_extract(track_identifier, '^(.*)-[^-]*', 1) END AS peer_connection_id
FROM streams
ORDER BY stats_type, media_kind, stats_id
