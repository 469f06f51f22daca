-- Grafana overview, Connections started and ended per minute: started is a connection's
-- first report in the range, unless it reported in the two minutes before (ended comes
-- from Sora's connection log, which this corpus does not have: no such rows either side).
-- rtclake's panel counts a connection's first report (connection_spans' starts); for a
-- connection silent for more than two minutes just before the range the two differ, in
-- this corpus (no silences) they do not. The exact question, each connection's first
-- report over the whole table, would cost Kohaku's side a scan of every report.
WITH first_reports AS (
    SELECT connection_id, min(timestamp) AS time FROM rtc_stats
    WHERE $__timeFilter(timestamp) GROUP BY connection_id
), earlier AS (
    SELECT DISTINCT connection_id FROM rtc_stats
    WHERE timestamp < $__timeFrom()
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 2 MINUTE
)
SELECT time_bucket(to_milliseconds(${__interval_ms:raw}), time) AS time,
    count(*) / (${__interval_ms:raw} / 60000) AS started
FROM first_reports
WHERE connection_id NOT IN (SELECT connection_id FROM earlier)
GROUP BY 1 ORDER BY 1
