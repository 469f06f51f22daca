-- Connection page: per stream (and candidate pair) and bucket, the time-weighted mean of
-- each rate from the counters of consecutive samples (bitrate, packets, loss, jitter,
-- RTT, jitter buffer, fps, resolution, freezes, concealment, NACK/PLI/FIR, quality
-- limitation shares) and the last quality-limitation reason (rtclake:
-- connection_rates_sql over rtc_rates).
WITH stats AS (  -- the samples of the streams with rates, from 5 minutes before the range
    SELECT channel_id, session_id, connection_id, rtc_id, rtc_type, timestamp AS time,
        rtc_timestamp / 1000 AS t,
        json_transform(rtc_data, '{"kind": "VARCHAR", "bytesSent": "DOUBLE",
            "bytesReceived": "DOUBLE", "packetsSent": "DOUBLE", "packetsReceived": "DOUBLE",
            "packetsLost": "DOUBLE", "fractionLost": "DOUBLE", "jitter": "DOUBLE",
            "roundTripTime": "DOUBLE", "currentRoundTripTime": "DOUBLE",
            "jitterBufferDelay": "DOUBLE", "jitterBufferEmittedCount": "DOUBLE",
            "framesPerSecond": "DOUBLE", "framesDecoded": "DOUBLE", "framesEncoded": "DOUBLE",
            "frameWidth": "DOUBLE", "frameHeight": "DOUBLE", "freezeCount": "DOUBLE",
            "concealedSamples": "DOUBLE", "totalSamplesReceived": "DOUBLE",
            "nackCount": "DOUBLE", "pliCount": "DOUBLE", "firCount": "DOUBLE",
            "qualityLimitationReason": "VARCHAR", "qualityLimitationDurations": {
                "none": "DOUBLE", "cpu": "DOUBLE", "bandwidth": "DOUBLE", "other": "DOUBLE"}}')
            AS s
    FROM rtc_stats
    WHERE connection_id = ${connection:sqlstring}
        AND rtc_type IN ('inbound-rtp', 'outbound-rtp', 'remote-inbound-rtp', 'candidate-pair')
        AND timestamp >= CAST($__timeFrom() AS TIMESTAMP) - INTERVAL 5 MINUTE
        AND timestamp < $__timeTo()
), lagged AS (  -- each sample with its stream's previous one
    SELECT *, lag(t) OVER w AS prev_t, lag(s) OVER w AS p
    FROM stats WINDOW w AS (PARTITION BY connection_id, rtc_id ORDER BY t)
), deltas AS (
    SELECT channel_id, session_id, connection_id, rtc_id, rtc_type, time, s,
        t - prev_t AS interval_s,
        coalesce(counter_delta(s.bytesSent, p.bytesSent),
            counter_delta(s.bytesReceived, p.bytesReceived)) AS bytes,
        coalesce(counter_delta(s.packetsSent, p.packetsSent),
            counter_delta(s.packetsReceived, p.packetsReceived)) AS packets,
        counter_delta(s.packetsReceived, p.packetsReceived) AS received,
        counter_delta(s.packetsLost, p.packetsLost) AS lost,
        counter_delta(s.jitterBufferDelay, p.jitterBufferDelay) AS jb_delay,
        counter_delta(s.jitterBufferEmittedCount, p.jitterBufferEmittedCount) AS jb_emitted,
        coalesce(counter_delta(s.framesDecoded, p.framesDecoded),
            counter_delta(s.framesEncoded, p.framesEncoded)) AS frames,
        counter_delta(s.freezeCount, p.freezeCount) AS freezes,
        counter_delta(s.concealedSamples, p.concealedSamples) AS concealed,
        counter_delta(s.totalSamplesReceived, p.totalSamplesReceived) AS samples,
        counter_delta(s.nackCount, p.nackCount) AS nacks,
        counter_delta(s.pliCount, p.pliCount) AS plis,
        counter_delta(s.firCount, p.firCount) AS firs,
        counter_delta(s.qualityLimitationDurations.none, p.qualityLimitationDurations.none)
            AS ql_none,
        counter_delta(s.qualityLimitationDurations.cpu, p.qualityLimitationDurations.cpu)
            AS ql_cpu,
        counter_delta(s.qualityLimitationDurations.bandwidth,
            p.qualityLimitationDurations.bandwidth) AS ql_bandwidth,
        counter_delta(s.qualityLimitationDurations.other, p.qualityLimitationDurations.other)
            AS ql_other
    FROM lagged WHERE t > prev_t AND time >= $__timeFrom()
), rates AS (  -- per stream and sample: the rates since the previous sample
    SELECT channel_id, session_id, connection_id, rtc_id AS stats_id, rtc_type AS stats_type,
        s.kind AS media_kind, time, interval_s,
        8.0 * bytes / interval_s AS bitrate_bps,
        packets / interval_s AS packets_per_s,
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
        s.frameWidth AS frame_width, s.frameHeight AS frame_height,
        60.0 * freezes / interval_s AS freezes_per_min,
        CASE WHEN s.kind = 'audio' AND samples > 0 THEN 100.0 * concealed / samples END
            AS concealment_pct,
        60.0 * nacks / interval_s AS nack_per_min,
        60.0 * plis / interval_s AS pli_per_min,
        60.0 * firs / interval_s AS fir_per_min,
        s.qualityLimitationReason AS quality_limitation_reason,
        ql_none + ql_cpu + ql_bandwidth + ql_other AS ql_total,
        CASE WHEN ql_total > 0 THEN ql_none / ql_total END AS quality_limitation_none_share,
        CASE WHEN ql_total > 0 THEN ql_cpu / ql_total END AS quality_limitation_cpu_share,
        CASE WHEN ql_total > 0 THEN ql_bandwidth / ql_total END
            AS quality_limitation_bandwidth_share,
        CASE WHEN ql_total > 0 THEN ql_other / ql_total END AS quality_limitation_other_share
    FROM deltas
)
SELECT stats_type, stats_id, media_kind,
    time_bucket(to_milliseconds(${__interval_ms:raw}), time) AS time,
    weighted(bitrate_bps, interval_s) AS bitrate_bps,
    weighted(packets_per_s, interval_s) AS packets_per_s,
    weighted(loss_pct, interval_s) AS loss_pct,
    weighted(jitter_ms, interval_s) AS jitter_ms,
    weighted(rtt_ms, interval_s) AS rtt_ms,
    weighted(jitter_buffer_ms, interval_s) AS jitter_buffer_ms,
    weighted(fps, interval_s) AS fps,
    weighted(frame_width, interval_s) AS frame_width,
    weighted(frame_height, interval_s) AS frame_height,
    weighted(freezes_per_min, interval_s) AS freezes_per_min,
    weighted(concealment_pct, interval_s) AS concealment_pct,
    weighted(nack_per_min, interval_s) AS nack_per_min,
    weighted(pli_per_min, interval_s) AS pli_per_min,
    weighted(fir_per_min, interval_s) AS fir_per_min,
    weighted(quality_limitation_none_share, interval_s) AS quality_limitation_none_share,
    weighted(quality_limitation_cpu_share, interval_s) AS quality_limitation_cpu_share,
    weighted(quality_limitation_bandwidth_share, interval_s)
        AS quality_limitation_bandwidth_share,
    weighted(quality_limitation_other_share, interval_s) AS quality_limitation_other_share,
    arg_max(quality_limitation_reason, time) AS quality_limitation_reason
FROM rates
GROUP BY ALL ORDER BY stats_type, stats_id, media_kind, time
