-- Grafana connection, Connection: the connection's channel, session, client, role, Sora
-- node, first and last report and how many reports it sent.
SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
    any_value(client_id) AS client_id, any_value(role) AS role,
    any_value(node_name) AS node_name, min(timestamp) AS first_report,
    max(timestamp) AS last_report, count(DISTINCT rtc_timestamp) AS reports
FROM rtc_stats WHERE connection_id = ${connection:sqlstring}
GROUP BY connection_id
