-- Grafana variable channel: the channels that reported in the range, the most recent first.
SELECT channel_id FROM rtc_stats
WHERE $__timeFilter(timestamp) AND channel_id IS NOT NULL
GROUP BY channel_id ORDER BY max(timestamp) DESC
