-- Grafana connection, the transport charts Candidate pair round-trip time, Available
-- outgoing bitrate, Selected pair changes and ICE, DTLS and pair state: per report in the
-- range, the selected candidate pair (the transport's, else the nominated succeeded pair)
-- with its round-trip time and bandwidth estimate, the transport's states and how often the
-- selected pair changed.
WITH objects AS (
    SELECT timestamp AS time, rtc_type, rtc_id,
        json_transform(rtc_data, '{"selectedCandidatePairId": "VARCHAR",
            "iceState": "VARCHAR", "dtlsState": "VARCHAR",
            "selectedCandidatePairChanges": "BIGINT", "state": "VARCHAR",
            "nominated": "BOOLEAN", "currentRoundTripTime": "DOUBLE",
            "availableOutgoingBitrate": "DOUBLE"}') AS o
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('transport', 'candidate-pair') AND $__timeFilter(timestamp)
)
SELECT p.time, 1000.0 * p.o.currentRoundTripTime AS rtt,
    p.o.availableOutgoingBitrate AS available,
    t.o.selectedCandidatePairChanges AS changes,
    t.o.iceState AS ice, t.o.dtlsState AS dtls, p.o.state AS pair
FROM objects p
LEFT JOIN objects t ON t.rtc_type = 'transport' AND t.time = p.time
WHERE p.rtc_type = 'candidate-pair'
QUALIFY row_number() OVER (PARTITION BY p.time
    ORDER BY (p.rtc_id = t.o.selectedCandidatePairId) DESC NULLS LAST,
        (p.o.nominated AND p.o.state = 'succeeded') DESC NULLS LAST, p.rtc_id) = 1
ORDER BY p.time
