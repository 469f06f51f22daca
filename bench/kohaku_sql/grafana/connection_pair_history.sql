-- Grafana connection, Candidate pair history: the selected candidate pair (the transport's,
-- else the nominated succeeded pair) at the first report and whenever it or a state
-- changed, with its candidates' types and protocols, the latest first.
WITH objects AS (
    SELECT timestamp AS time, rtc_type, rtc_id,
        json_transform(rtc_data, '{"selectedCandidatePairId": "VARCHAR",
            "iceState": "VARCHAR", "dtlsState": "VARCHAR",
            "selectedCandidatePairChanges": "BIGINT", "localCandidateId": "VARCHAR",
            "remoteCandidateId": "VARCHAR", "state": "VARCHAR", "nominated": "BOOLEAN",
            "candidateType": "VARCHAR", "protocol": "VARCHAR", "relayProtocol": "VARCHAR",
            "networkType": "VARCHAR"}') AS o
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('transport', 'candidate-pair', 'local-candidate', 'remote-candidate')
        AND $__timeFilter(timestamp)
), candidates AS (
    SELECT rtc_id, any_value(o.candidateType) AS candidate_type,
        any_value(o.protocol) AS protocol, any_value(o.relayProtocol) AS relay_protocol,
        any_value(o.networkType) AS network_type
    FROM objects WHERE rtc_type IN ('local-candidate', 'remote-candidate') GROUP BY rtc_id
), selected AS (
    SELECT p.time, p.rtc_id AS pair_id, p.o.state AS pair_state, t.o.iceState AS ice_state,
        t.o.dtlsState AS dtls_state, p.o.localCandidateId AS local_id,
        p.o.remoteCandidateId AS remote_id,
        t.o.selectedCandidatePairChanges AS selected_candidate_pair_changes
    FROM objects p
    LEFT JOIN objects t ON t.rtc_type = 'transport' AND t.time = p.time
    WHERE p.rtc_type = 'candidate-pair'
    QUALIFY row_number() OVER (PARTITION BY p.time
        ORDER BY (p.rtc_id = t.o.selectedCandidatePairId) DESC NULLS LAST,
            (p.o.nominated AND p.o.state = 'succeeded') DESC NULLS LAST, p.rtc_id) = 1
)
SELECT s.time, s.pair_id, s.pair_state, s.ice_state, s.dtls_state,
    l.candidate_type AS local_candidate_type, l.protocol AS local_protocol,
    l.relay_protocol, l.network_type, r.candidate_type AS remote_candidate_type,
    s.selected_candidate_pair_changes
FROM selected s
LEFT JOIN candidates l ON l.rtc_id = s.local_id
LEFT JOIN candidates r ON r.rtc_id = s.remote_id
WINDOW w AS (ORDER BY s.time)
QUALIFY row_number() OVER w = 1
    OR (s.pair_id, s.pair_state, s.ice_state, s.dtls_state)
        IS DISTINCT FROM lag((s.pair_id, s.pair_state, s.ice_state, s.dtls_state)) OVER w
ORDER BY s.time DESC
