-- Diagnosis: per report of the connection, the selected candidate pair (the transport's,
-- else the nominated succeeded pair), its state, the ICE state, how often the pair changed
-- and the local candidate's type and protocols (rtclake: diagnose's query of
-- connection_transport).
WITH objects AS (
    SELECT timestamp AS time, rtc_type, rtc_id,
        json_transform(rtc_data, '{"selectedCandidatePairId": "VARCHAR",
            "iceState": "VARCHAR", "selectedCandidatePairChanges": "BIGINT",
            "localCandidateId": "VARCHAR", "state": "VARCHAR", "nominated": "BOOLEAN",
            "candidateType": "VARCHAR", "protocol": "VARCHAR", "relayProtocol": "VARCHAR"}')
            AS o
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('transport', 'candidate-pair', 'local-candidate')
), candidates AS (
    SELECT rtc_id, any_value(o.candidateType) AS candidate_type,
        any_value(o.protocol) AS protocol, any_value(o.relayProtocol) AS relay_protocol
    FROM objects WHERE rtc_type = 'local-candidate' GROUP BY rtc_id
), selected AS (
    SELECT p.time, p.rtc_id AS pair_id, p.o.state AS pair_state, p.o.localCandidateId AS local_id,
        t.o.iceState AS ice_state,
        t.o.selectedCandidatePairChanges AS selected_candidate_pair_changes
    FROM objects p
    LEFT JOIN objects t ON t.rtc_type = 'transport' AND t.time = p.time
    WHERE p.rtc_type = 'candidate-pair'
    QUALIFY row_number() OVER (PARTITION BY p.time
        ORDER BY (p.rtc_id = t.o.selectedCandidatePairId) DESC NULLS LAST,
            (p.o.nominated AND p.o.state = 'succeeded') DESC NULLS LAST, p.rtc_id) = 1
)
SELECT s.time, s.pair_id, s.pair_state, s.ice_state, s.selected_candidate_pair_changes,
    l.candidate_type AS local_candidate_type, l.relay_protocol, l.protocol AS local_protocol
FROM selected s LEFT JOIN candidates l ON l.rtc_id = s.local_id
ORDER BY s.time, s.pair_id
