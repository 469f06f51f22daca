-- Session page: per connection of the session and bucket, the time-weighted mean of each
-- report's score, audio MOS and video score, and the lowest score (rtclake: scores_sql).
WITH stats AS (  -- the samples of the streams with rates, from 5 minutes before the range
    SELECT channel_id, session_id, connection_id, rtc_id, rtc_type, timestamp AS time,
        rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "bytesSent": "DOUBLE",
            "bytesReceived": "DOUBLE", "packetsReceived": "DOUBLE", "packetsLost": "DOUBLE",
            "fractionLost": "DOUBLE", "jitter": "DOUBLE", "roundTripTime": "DOUBLE",
            "currentRoundTripTime": "DOUBLE", "jitterBufferDelay": "DOUBLE",
            "jitterBufferEmittedCount": "DOUBLE", "framesPerSecond": "DOUBLE",
            "framesDecoded": "DOUBLE", "framesEncoded": "DOUBLE", "frameWidth": "DOUBLE",
            "frameHeight": "DOUBLE", "freezeCount": "DOUBLE"}') AS s
    FROM rtc_stats
    WHERE session_id = ${session:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp', 'remote-inbound-rtp', 'candidate-pair')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp < $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, lag(t) OVER w AS prev_t, lag(s) OVER w AS p
    FROM stats WINDOW w AS (PARTITION BY connection_id, rtc_id ORDER BY t)
), deltas AS (
    SELECT channel_id, session_id, connection_id, time, rtc_type, s, t - prev_t AS interval_s,
        counter_delta(s.packetsReceived, p.packetsReceived) AS received,
        counter_delta(s.packetsLost, p.packetsLost) AS lost,
        coalesce(counter_delta(s.bytesSent, p.bytesSent),
            counter_delta(s.bytesReceived, p.bytesReceived)) AS bytes,
        counter_delta(s.jitterBufferDelay, p.jitterBufferDelay) AS jb_delay,
        counter_delta(s.jitterBufferEmittedCount, p.jitterBufferEmittedCount) AS jb_emitted,
        coalesce(counter_delta(s.framesDecoded, p.framesDecoded),
            counter_delta(s.framesEncoded, p.framesEncoded)) AS frames,
        counter_delta(s.freezeCount, p.freezeCount) AS freezes
    FROM lagged WHERE t > prev_t AND time >= $__timeFrom()
), rates AS (  -- per stream and sample: the rates since the previous sample
    SELECT channel_id, session_id, connection_id, time, rtc_type, s.kind AS kind, interval_s,
        8.0 * bytes / interval_s AS bitrate_bps,
        CASE rtc_type
            WHEN 'inbound-rtp' THEN
                CASE WHEN received + lost > 0 THEN 100.0 * lost / (received + lost) ELSE 0 END
            WHEN 'remote-inbound-rtp' THEN 100.0 * s.fractionLost
        END AS loss_pct,
        1000.0 * s.jitter AS jitter_ms,
        1000.0 * CASE rtc_type WHEN 'remote-inbound-rtp' THEN s.roundTripTime
            WHEN 'candidate-pair' THEN s.currentRoundTripTime END AS rtt_ms,
        CASE WHEN jb_emitted > 0 THEN 1000.0 * jb_delay / jb_emitted END AS jitter_buffer_ms,
        CASE WHEN s.kind = 'video' THEN coalesce(s.framesPerSecond, frames / interval_s) END
            AS fps,
        s.frameWidth AS width, s.frameHeight AS height,
        60.0 * freezes / interval_s AS freezes_per_min
    FROM deltas
), reports AS (  -- per connection and report: the worst of its streams
    SELECT channel_id, session_id, connection_id, time, max(interval_s) AS interval_s,
        max(rtt_ms) AS rtt_ms,
        max(jitter_ms) FILTER (WHERE kind = 'audio') AS audio_jitter_ms,
        max(jitter_buffer_ms) FILTER (WHERE kind = 'audio') AS audio_jitter_buffer_ms,
        max(loss_pct) FILTER (WHERE kind = 'audio') AS audio_loss_pct,
        max(bitrate_bps) FILTER (WHERE kind = 'audio'
            AND rtc_type IN ('inbound-rtp', 'outbound-rtp')) AS audio_bitrate_bps,
        bool_or(kind = 'video' AND rtc_type IN ('inbound-rtp', 'outbound-rtp')) AS has_video,
        max(loss_pct) FILTER (WHERE kind = 'video') AS video_loss_pct,
        min(width * height) FILTER (WHERE kind = 'video' AND width > 0 AND height > 0)
            AS video_pixels,
        min(fps) FILTER (WHERE kind = 'video') AS video_fps,
        max(freezes_per_min) FILTER (WHERE kind = 'video') AS video_freezes_per_min
    FROM rates GROUP BY channel_id, session_id, connection_id, time
), scored AS (
    SELECT *,
        CASE WHEN audio_bitrate_bps IS NOT NULL OR audio_loss_pct IS NOT NULL
            THEN emodel_mos(emodel_r(
                emodel_delay_ms(rtt_ms, audio_jitter_buffer_ms, audio_jitter_ms),
                audio_loss_pct, audio_bitrate_bps)) END AS mos_audio,
        CASE WHEN has_video THEN video_score(video_pixels, video_fps, video_freezes_per_min,
            video_loss_pct) END AS video_score
    FROM reports
), quality AS (  -- per connection and report: rtclake's connection_quality
    SELECT *, least(mos_audio, video_score) AS score FROM scored
)
SELECT connection_id, time_bucket(to_milliseconds(${__interval_ms:raw}), time) AS time,
    weighted(score, interval_s) AS score, weighted(mos_audio, interval_s) AS mos_audio,
    weighted(video_score, interval_s) AS video_score, min(score) AS min_score
FROM quality
GROUP BY ALL ORDER BY connection_id, time
