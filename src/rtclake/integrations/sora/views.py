"""What Sora's ``rtc_stats`` is turned into: ``rtc_rates``, rates from the counters of
consecutive samples, derived as the stats are stored (:class:`RatesDerivation`, formulas in
:mod:`.rates`), and the query-time views over it: quality scores (``connection_quality``,
``session_quality``) and the selected transport (``connection_transport``). Column by
column in docs/METRICS.md; formulas, constants and their sources in docs/QUALITY.md.
"""

from __future__ import annotations

import pyarrow as pa

from rtclake.derive import Derivation
from rtclake.integrations.sora import rates
from rtclake.tables import Column, FieldKind, Table, View

# the columns of rtc_rates, each with its meaning (docs/METRICS.md, the API's table list)
RATES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "the later sample's rtc_timestamp"),
    ("channel_id", "Sora channel"),
    ("session_id", "Sora session"),
    ("connection_id", "Sora connection"),
    (
        "stats_type",
        "RTCStats type: inbound-rtp, outbound-rtp, remote-inbound-rtp, candidate-pair",
    ),
    ("stats_id", "the RTCStats object's id (a stream, or a candidate pair)"),
    ("media_kind", "audio or video (rtc_data.kind)"),
    ("interval_s", "seconds between the two samples"),
    ("bitrate_bps", "8 × Δbytes_sent (or Δbytes_received) / interval_s, bits/s"),
    ("packets_per_s", "Δpackets_sent (or Δpackets_received) / interval_s"),
    (
        "loss_pct",
        "inbound-rtp: Δpackets_lost / (Δpackets_received + Δpackets_lost)"
        " × 100; remote-inbound-rtp: fraction_lost × 100",
    ),
    ("jitter_ms", "jitter × 1000 (inbound-rtp, remote-inbound-rtp)"),
    (
        "rtt_ms",
        "remote-inbound-rtp round_trip_time, candidate-pair current_round_trip_time, × 1000",
    ),
    (
        "jitter_buffer_ms",
        "Δjitter_buffer_delay / Δjitter_buffer_emitted_count × 1000 (inbound-rtp)",
    ),
    ("fps", "video: frames_per_second, else Δframes_decoded (or Δframes_encoded) / interval_s"),
    ("frame_width", "the later sample's frame width, pixels"),
    ("frame_height", "the later sample's frame height, pixels"),
    ("freezes_per_min", "Δfreeze_count / interval_s × 60"),
    ("concealment_pct", "audio: Δconcealed_samples / Δtotal_samples_received × 100"),
    ("nack_per_min", "Δnack_count / interval_s × 60"),
    ("pli_per_min", "Δpli_count / interval_s × 60"),
    ("fir_per_min", "Δfir_count / interval_s × 60"),
    ("quality_limitation_reason", "the later sample's qualityLimitationReason"),
    *(
        (
            f"quality_limitation_{r}_share",
            f"share of the interval limited by '{r}' (Δ qualityLimitationDurations.{r} over"
            " the Δ of all reasons), 0–1",
        )
        for r in rates.REASONS
    ),
)


_KINDS: dict[str, FieldKind] = {
    "channel_id": "id", "session_id": "id", "connection_id": "id", "stats_id": "id",
    "stats_type": "string", "media_kind": "string", "quality_limitation_reason": "string",
    "frame_width": "int", "frame_height": "int",
}  # fmt: skip

RTC_RATES = Table(
    name="rtc_rates",
    kind="rtc_rates",
    description=(
        "One row per consecutive pair of samples of one stream of rtc_stats: rates from the"
        " counters' differences over the time between the samples (docs/METRICS.md)."
        " Derived as rtc_stats is stored, by the writer and by imports."
    ),
    columns=tuple(Column(name, _KINDS.get(name, "float"), ()) for name, _ in RATES_COLUMNS[1:]),
    identity=("connection_id", "stats_id", "time"),
    unique_rows=True,
)


class RatesDerivation(Derivation):
    """``rtc_rates`` from each batch of ``rtc_stats`` (:mod:`.rates`); the state is the
    last sample of every stream, so the first sample of a batch has its predecessor."""

    name = "rtc_rates"
    source = "rtc_stats"
    outputs = (RTC_RATES,)

    def derive(
        self, rows: pa.Table, state: pa.Table | None
    ) -> tuple[dict[str, pa.Table], pa.Table | None]:
        computed, kept = rates.derive(rates.samples(rows), state)
        if computed.num_rows == 0:
            return {}, kept
        names = [name for name, _ in RATES_COLUMNS]
        return {
            RTC_RATES.name: rates.stored(computed, RTC_RATES.stored_schema, "rtc_rates", names)
        }, kept


# -- quality ------------------------------------------------------------------------------
# docs/QUALITY.md gives each formula, its constants and their sources.
R_DEFAULT = 93.2  # G.107's R0 - Is with every default parameter
OPUS_FRAME_MS = 20.0  # packetisation: WebRTC's Opus frames
OPUS_BPL = 20.0  # loss robustness with in-band FEC (WebRTC's default useinbandfec=1)
OPUS_DTX_IE = 8.0  # Ie while DTX sends almost nothing (silence)

_PER_REPORT = """
SELECT time, connection_id, channel_id, session_id, max(interval_s) AS interval_s,
    max(rtt_ms) AS rtt_ms,
    max(jitter_ms) FILTER (WHERE media_kind = 'audio') AS audio_jitter_ms,
    max(jitter_buffer_ms) FILTER (WHERE media_kind = 'audio') AS audio_jitter_buffer_ms,
    max(loss_pct) FILTER (WHERE media_kind = 'audio') AS audio_loss_pct,
    max(bitrate_bps) FILTER (WHERE media_kind = 'audio'
        AND stats_type IN ('inbound-rtp', 'outbound-rtp')) AS audio_bitrate_bps,
    bool_or(media_kind = 'video' AND stats_type IN ('inbound-rtp', 'outbound-rtp'))
        AS has_video,
    max(loss_pct) FILTER (WHERE media_kind = 'video') AS video_loss_pct,
    min(frame_width * frame_height) FILTER (WHERE media_kind = 'video'
        AND frame_width > 0 AND frame_height > 0) AS video_pixels,
    min(fps) FILTER (WHERE media_kind = 'video') AS video_fps,
    max(freezes_per_min) FILTER (WHERE media_kind = 'video') AS video_freezes_per_min
FROM rtc_rates
GROUP BY channel_id, session_id, connection_id, time
"""  # grouped by the channel and the session too: a filter on either reaches the files

# one-way mouth-to-ear delay, ms: half the round trip, the jitter buffer (else twice the
# jitter), one Opus frame
_DELAY = (
    f"(coalesce(rtt_ms, 0) / 2 + coalesce(audio_jitter_buffer_ms, 2 * audio_jitter_ms, 0)"
    f" + {OPUS_FRAME_MS})"
)
_X = f"log2({_DELAY} / 100)"
_IDD = (
    f"(CASE WHEN {_DELAY} <= 100 THEN 0 ELSE 25 * (pow(1 + pow({_X}, 6), 1 / 6)"
    f" - 3 * pow(1 + pow({_X} / 3, 6), 1 / 6) + 2) END)"
)
_IE = (
    f"(CASE WHEN audio_bitrate_bps IS NULL OR audio_bitrate_bps < 6000 THEN {OPUS_DTX_IE}"
    " ELSE greatest(0, least(30, 55 - 4.6 * ln(audio_bitrate_bps))) END)"
)
_PPL = "coalesce(audio_loss_pct, 0)"
_IE_EFF = f"({_IE} + (95 - {_IE}) * {_PPL} / ({_PPL} + {OPUS_BPL}))"
_R = f"({R_DEFAULT} - {_IDD} - {_IE_EFF})"
_MOS = (
    f"(CASE WHEN {_R} < 0 THEN 1.0 WHEN {_R} > 100 THEN 4.5"
    f" ELSE 1 + 0.035 * {_R} + {_R} * ({_R} - 60) * (100 - {_R}) * 7e-6 END)"
)
_FULL, _LOW = 1280 * 720, 320 * 180
_VIDEO = (
    "greatest(1.0, 5.0"
    f" - 1.5 * greatest(0, least(1, (log2({_FULL}) - log2(video_pixels))"
    f" / (log2({_FULL}) - log2({_LOW}))))"
    " - 1.5 * greatest(0, least(1, (24 - video_fps) / (24 - 5)))"
    " - least(1.5, 0.5 * coalesce(video_freezes_per_min, 0))"
    " - least(1.5, 0.2 * coalesce(video_loss_pct, 0)))"
)

CONNECTION_QUALITY_SQL = f"""
SELECT time, channel_id, session_id, connection_id, interval_s,
    rtt_ms, audio_jitter_ms, audio_jitter_buffer_ms, audio_loss_pct, audio_bitrate_bps,
    CASE WHEN audio_bitrate_bps IS NOT NULL OR audio_loss_pct IS NOT NULL
        THEN {_DELAY} END AS audio_delay_ms,
    CASE WHEN audio_bitrate_bps IS NOT NULL OR audio_loss_pct IS NOT NULL
        THEN greatest(0, {_R}) END AS r_factor,
    CASE WHEN audio_bitrate_bps IS NOT NULL OR audio_loss_pct IS NOT NULL
        THEN {_MOS} END AS mos_audio,
    video_loss_pct, video_pixels, video_fps, video_freezes_per_min,
    CASE WHEN has_video THEN {_VIDEO} END AS video_score
FROM ({_PER_REPORT})
"""

CONNECTION_QUALITY = View(
    name="connection_quality",
    sql=f"SELECT *, least(mos_audio, video_score) AS score FROM ({CONNECTION_QUALITY_SQL})",
    description=(
        "Per connection and getStats report: the audio MOS of ITU-T G.107's E-model and a"
        " 1-5 video score, from rtc_rates (docs/QUALITY.md)."
    ),
    columns=(
        ("time", "the report's rtc_timestamp"),
        ("channel_id", "Sora channel"),
        ("session_id", "Sora session"),
        ("connection_id", "Sora connection"),
        ("interval_s", "seconds since the connection's previous report"),
        ("rtt_ms", "the largest round-trip time of the report (remote-inbound, candidate pair)"),
        ("audio_jitter_ms", "the largest audio jitter"),
        ("audio_jitter_buffer_ms", "the largest audio jitter-buffer delay"),
        ("audio_loss_pct", "the largest audio loss (inbound or remote-inbound)"),
        ("audio_bitrate_bps", "the largest audio bitrate (inbound or outbound)"),
        ("audio_delay_ms", "one-way delay: rtt/2 + jitter buffer (else 2 × jitter) + 20 ms"),
        ("r_factor", "the E-model's R, 0-100"),
        ("mos_audio", "MOS from R, 1-4.5 (NULL without audio)"),
        ("video_loss_pct", "the largest video loss"),
        ("video_pixels", "the smallest video resolution, width × height"),
        ("video_fps", "the lowest video frame rate"),
        ("video_freezes_per_min", "the most video freezes per minute"),
        ("video_score", "1-5 from resolution, fps, freezes and loss (NULL without video)"),
        ("score", "the lower of mos_audio and video_score"),
    ),
)

SESSION_QUALITY = View(
    name="session_quality",
    sql="""
WITH per_connection AS (
    SELECT session_id, any_value(channel_id) AS channel_id, connection_id,
        avg(score) AS score, avg(mos_audio) AS mos_audio, avg(video_score) AS video_score,
        min(time) AS first_time, max(time) AS last_time
    FROM connection_quality GROUP BY session_id, connection_id
)
SELECT session_id, any_value(channel_id) AS channel_id, count(*) AS connections,
    arg_min(connection_id, score) AS worst_connection_id, min(score) AS worst_score,
    median(score) AS median_score, min(mos_audio) AS worst_mos_audio,
    median(mos_audio) AS median_mos_audio, min(video_score) AS worst_video_score,
    median(video_score) AS median_video_score,
    min(first_time) AS first_time, max(last_time) AS last_time
FROM per_connection GROUP BY session_id
""",
    description="Per session: its connections' average scores, the worst and the median.",
    columns=(
        ("session_id", "Sora session"),
        ("channel_id", "Sora channel"),
        ("connections", "connections with a score"),
        ("worst_connection_id", "the connection with the lowest average score"),
        ("worst_score", "its average score"),
        ("median_score", "the median of the connections' average scores"),
        ("worst_mos_audio", "the lowest average audio MOS"),
        ("median_mos_audio", "the median average audio MOS"),
        ("worst_video_score", "the lowest average video score"),
        ("median_video_score", "the median average video score"),
        ("first_time", "the first report scored"),
        ("last_time", "the last report scored"),
    ),
)


CONNECTION_TRANSPORT = View(
    name="connection_transport",
    sql="""
WITH transports AS (
    SELECT connection_id, rtc_timestamp AS time, ice_state, dtls_state,
        selected_candidate_pair_id, selected_candidate_pair_changes
    FROM rtc_stats WHERE stats_type = 'transport'
), pairs AS (
    SELECT channel_id, session_id, connection_id, rtc_timestamp AS time, stats_id,
        local_candidate_id, remote_candidate_id, state, nominated, current_round_trip_time,
        available_outgoing_bitrate
    FROM rtc_stats WHERE stats_type = 'candidate-pair'
), candidates AS (
    SELECT connection_id, stats_id, any_value(candidate_type) AS candidate_type,
        any_value(protocol) AS protocol, any_value(relay_protocol) AS relay_protocol,
        any_value(network_type) AS network_type
    FROM rtc_stats WHERE stats_type IN ('local-candidate', 'remote-candidate')
    GROUP BY connection_id, stats_id
), selected AS (
    SELECT p.*, t.ice_state, t.dtls_state, t.selected_candidate_pair_changes
    FROM pairs p LEFT JOIN transports t
        ON t.connection_id = p.connection_id AND t.time = p.time
    QUALIFY row_number() OVER (
        PARTITION BY p.channel_id, p.session_id, p.connection_id, p.time
        ORDER BY (p.stats_id = t.selected_candidate_pair_id) DESC NULLS LAST,
            (p.nominated AND p.state = 'succeeded') DESC NULLS LAST, p.stats_id) = 1
)
SELECT s.time, s.channel_id, s.session_id, s.connection_id, s.stats_id AS pair_id,
    s.state AS pair_state, s.ice_state, s.dtls_state, s.selected_candidate_pair_changes,
    l.candidate_type AS local_candidate_type, l.protocol AS local_protocol,
    l.relay_protocol, l.network_type, r.candidate_type AS remote_candidate_type,
    1000.0 * s.current_round_trip_time AS rtt_ms,
    s.available_outgoing_bitrate AS available_outgoing_bitrate_bps
FROM selected s
LEFT JOIN candidates l ON l.connection_id = s.connection_id AND l.stats_id = s.local_candidate_id
LEFT JOIN candidates r ON r.connection_id = s.connection_id AND r.stats_id = s.remote_candidate_id
""",
    description=(
        "Per connection and report: the selected candidate pair (the transport's, else the"
        " nominated succeeded pair), its candidates' types and the ICE and DTLS states."
    ),
    columns=(
        ("time", "the report's rtc_timestamp"),
        ("channel_id", "Sora channel"),
        ("session_id", "Sora session"),
        ("connection_id", "Sora connection"),
        ("pair_id", "the selected candidate pair's stats id"),
        ("pair_state", "its state (succeeded, in-progress, failed, ...)"),
        ("ice_state", "the transport's iceState (connected, disconnected, failed, ...)"),
        ("dtls_state", "the transport's dtlsState"),
        ("selected_candidate_pair_changes", "how often the selected pair changed so far"),
        ("local_candidate_type", "host, srflx, prflx or relay (relay: through TURN)"),
        ("local_protocol", "udp or tcp"),
        ("relay_protocol", "to the TURN server: udp, tcp or tls"),
        ("network_type", "the local candidate's network type, when reported"),
        ("remote_candidate_type", "the remote candidate's type"),
        ("rtt_ms", "the pair's current_round_trip_time × 1000"),
        ("available_outgoing_bitrate_bps", "the pair's available_outgoing_bitrate"),
    ),
)

VIEWS = (CONNECTION_QUALITY, SESSION_QUALITY, CONNECTION_TRANSPORT)
