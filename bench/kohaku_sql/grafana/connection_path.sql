-- Grafana connection, Path: the latest report's selected candidate pair (the transport's,
-- else the nominated succeeded pair): its local candidate's type and protocols, and the
-- remote candidate's type.
WITH objects AS (
    SELECT timestamp AS time, rtc_type, rtc_id,
        json_transform(rtc_data, '{"selectedCandidatePairId": "VARCHAR",
            "localCandidateId": "VARCHAR", "remoteCandidateId": "VARCHAR",
            "state": "VARCHAR", "nominated": "BOOLEAN", "candidateType": "VARCHAR",
            "protocol": "VARCHAR", "relayProtocol": "VARCHAR"}') AS o
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('transport', 'candidate-pair', 'local-candidate', 'remote-candidate')
        AND $__timeFilter(timestamp)
), candidates AS (
    SELECT rtc_id, any_value(o.candidateType) AS candidate_type,
        any_value(o.protocol) AS protocol, any_value(o.relayProtocol) AS relay_protocol
    FROM objects WHERE rtc_type IN ('local-candidate', 'remote-candidate') GROUP BY rtc_id
), latest AS (
    SELECT p.o.localCandidateId AS local_id, p.o.remoteCandidateId AS remote_id
    FROM objects p
    LEFT JOIN objects t ON t.rtc_type = 'transport' AND t.time = p.time
    WHERE p.rtc_type = 'candidate-pair'
    ORDER BY p.time DESC, (p.rtc_id = t.o.selectedCandidatePairId) DESC NULLS LAST,
        (p.o.nominated AND p.o.state = 'succeeded') DESC NULLS LAST, p.rtc_id
    LIMIT 1
)
SELECT l.candidate_type AS local, l.protocol, l.relay_protocol AS "to TURN",
    r.candidate_type AS remote
FROM latest
LEFT JOIN candidates l ON l.rtc_id = latest.local_id
LEFT JOIN candidates r ON r.rtc_id = latest.remote_id
