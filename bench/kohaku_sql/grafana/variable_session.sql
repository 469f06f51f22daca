-- Grafana variable session: the channel's sessions that reported in the range, the most
-- recent first.
SELECT session_id FROM rtc_stats
WHERE $__timeFilter(timestamp) AND channel_id = ${channel:sqlstring} AND session_id IS NOT NULL
GROUP BY session_id ORDER BY max(timestamp) DESC
