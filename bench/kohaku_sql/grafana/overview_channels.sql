-- Grafana overview, Channels: the channels with a client report in the range.
SELECT count(DISTINCT channel_id) AS channels FROM rtc_stats WHERE $__timeFilter(timestamp)
