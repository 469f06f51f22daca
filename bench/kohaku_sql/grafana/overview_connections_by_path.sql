-- Grafana overview, Connections by path: per bucket, the connections by the type of their
-- selected pair's local candidate (host, srflx, prflx, relay).
WITH objects AS (
    SELECT connection_id, timestamp AS time, rtc_type, rtc_id,
        json_transform(rtc_data, '{"selectedCandidatePairId": "VARCHAR",
            "localCandidateId": "VARCHAR", "state": "VARCHAR", "nominated": "BOOLEAN",
            "candidateType": "VARCHAR"}') AS o
    FROM rtc_stats
    WHERE rtc_type IN ('transport', 'candidate-pair', 'local-candidate')
        AND $__timeFilter(timestamp)
), candidates AS (
    SELECT connection_id, rtc_id, any_value(o.candidateType) AS candidate_type
    FROM objects WHERE rtc_type = 'local-candidate' GROUP BY connection_id, rtc_id
), selected AS (
    SELECT p.connection_id, p.time, p.o.localCandidateId AS local_id
    FROM objects p
    LEFT JOIN objects t ON t.rtc_type = 'transport' AND t.connection_id = p.connection_id
        AND t.time = p.time
    WHERE p.rtc_type = 'candidate-pair'
    QUALIFY row_number() OVER (PARTITION BY p.connection_id, p.time
        ORDER BY (p.rtc_id = t.o.selectedCandidatePairId) DESC NULLS LAST,
            (p.o.nominated AND p.o.state = 'succeeded') DESC NULLS LAST, p.rtc_id) = 1
)
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), s.time) AS time,
    l.candidate_type AS local_candidate_type, count(DISTINCT s.connection_id) AS connections
FROM selected s
JOIN candidates l ON l.connection_id = s.connection_id AND l.rtc_id = s.local_id
WHERE l.candidate_type IS NOT NULL
GROUP BY ALL ORDER BY 1
