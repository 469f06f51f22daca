"""LiveKit's tables: the webhook events (``livekit_events``), the analytics events
(``livekit_analytics_events``) and stats (``livekit_stats``)."""

from __future__ import annotations

from rtclake.tables import Column, Table

# A webhook body is LiveKit's protojson (camelCase keys, int64 values as strings, enum
# names): the ids, names and enums become typed columns; every other key (the int64 times
# among them) stays in extra. The record's time is the event's createdAt (set by the
# source, which reads it before storing).
LIVEKIT_EVENTS = Table(
    name="livekit_events",
    kind="livekit_event",
    description=(
        "LiveKit's webhooks (room, participant, track, egress and ingress events), verified"
        " before they are stored; one row per event id."
    ),
    columns=(
        Column("event", "string", ("event",)),
        Column("event_id", "id", ("id",)),
        Column("room_sid", "id", ("room.sid", "egressInfo.roomId", "ingressInfo.state.roomId")),
        Column("room_name", "string", ("room.name", "egressInfo.roomName", "ingressInfo.roomName")),
        Column("num_participants", "int", ("room.numParticipants",)),
        Column("participant_sid", "id", ("participant.sid",)),
        Column(
            "participant_identity",
            "id",
            ("participant.identity", "ingressInfo.participantIdentity"),
        ),
        Column("participant_name", "string", ("participant.name",)),
        Column("participant_state", "string", ("participant.state",)),
        Column("participant_kind", "string", ("participant.kind",)),
        Column("track_sid", "id", ("track.sid",)),
        Column("track_type", "string", ("track.type",)),
        Column("track_source", "string", ("track.source",)),
        Column("track_mime_type", "string", ("track.mimeType",)),
        Column("egress_id", "id", ("egressInfo.egressId",)),
        Column("egress_status", "string", ("egressInfo.status",)),
        Column("egress_error", "string", ("egressInfo.error",)),
        Column("ingress_id", "id", ("ingressInfo.ingressId",)),
        Column("ingress_status", "string", ("ingressInfo.state.status",)),
        Column("ingress_error", "string", ("ingressInfo.state.error",)),
        Column("api_key", "id", ("_api_key",)),
        # written by the entity tracker's reconciler for what ended without an event
        Column("synthetic", "bool", ("synthetic",)),
    ),
    # a redelivered webhook carries the same id: stored once
    identity=("event_id",),
)

# An AnalyticsEvent as protojson (camelCase, int64 as strings, enum names): the ids and
# names as typed columns, and the whole message again in ``message`` (the MongoDB sink's
# OpenVidu layout rebuilds the event from it); the record's time is the event's timestamp.
LIVEKIT_ANALYTICS_EVENTS = Table(
    name="livekit_analytics_events",
    kind="livekit_analytics_event",
    description=(
        "LiveKit's AnalyticsEvent messages (what openvidu-livekit stores in MongoDB's"
        " events): room, participant, track, egress and ingress life cycles."
    ),
    columns=(
        Column("event_id", "id", ("id",)),
        Column("event_type", "string", ("type",)),
        Column("room_id", "id", ("roomId", "room.sid")),
        Column("room_name", "string", ("room.name",)),
        Column("participant_id", "id", ("participantId", "participant.sid")),
        Column("participant_identity", "id", ("participant.identity",)),
        Column("participant_state", "string", ("participant.state",)),
        Column("track_id", "id", ("trackId", "track.sid")),
        Column("track_type", "string", ("track.type",)),
        Column("egress_id", "id", ("egressId", "egress.egressId")),
        Column("ingress_id", "id", ("ingressId", "ingress.ingressId")),
        Column("node_id", "id", ("nodeId",)),
        Column("analytics_key", "id", ("analyticsKey",)),
        Column("client_region", "string", ("clientMeta.region",)),
        Column("client_addr", "string", ("clientMeta.clientAddr",)),
        Column("connection_type", "string", ("clientMeta.connectionType",)),
        Column("client_sdk", "string", ("clientInfo.sdk",)),
        Column("client_os", "string", ("clientInfo.os",)),
        Column("client_browser", "string", ("clientInfo.browser",)),
        Column("mime", "string", ("mime",)),
        Column("video_layer", "int", ("videoLayer",)),
        Column("error", "string", ("error",)),
        Column("room_end_reason", "string", ("roomEndReason",)),
        Column("message", "json", ("message",)),
    ),
    identity=("event_id", "event_type", "room_id", "participant_id", "track_id", "time"),
    # a room's event names no participant or track, and an event may come without an id:
    # its nulls are part of its identity
    identity_required=False,
)

_STREAM_COUNTS = (
    "primary_packets", "primary_bytes", "retransmit_packets", "retransmit_bytes",
    "padding_packets", "padding_bytes", "packets_lost", "packets_out_of_order", "frames",
    "rtt", "jitter", "nacks", "plis", "firs",
)  # fmt: skip

# One row per stream of an AnalyticsStat: the stat's envelope and the stream's counters,
# each of which covers the stream's own interval (start_time .. end_time, interval_s).
LIVEKIT_STATS = Table(
    name="livekit_stats",
    kind="livekit_stat",
    description=(
        "LiveKit's AnalyticsStat messages, one row per stream: counters over the interval"
        " start_time..end_time (divide by interval_s for rates), scores, video layers."
    ),
    columns=(
        Column("stat_id", "id", ("stat_id",)),
        Column("time_stamp", "string", ("time_stamp",)),
        Column("analytics_key", "id", ("analytics_key",)),
        Column("stream_kind", "string", ("stream_kind",)),
        Column("node", "id", ("node",)),
        Column("room_id", "id", ("room_id",)),
        Column("room_name", "string", ("room_name",)),
        Column("participant_id", "id", ("participant_id",)),
        Column("track_id", "id", ("track_id",)),
        Column("mime", "string", ("mime",)),
        Column("score", "float", ("score",)),
        Column("min_score", "float", ("min_score",)),
        Column("median_score", "float", ("median_score",)),
        Column("stream_index", "int", ("stream_index",)),
        Column("ssrc", "int", ("ssrc",)),
        *(Column(name, "int", (name,)) for name in _STREAM_COUNTS),
        Column("video_layer", "int", ("video_layer",)),
        Column("video_layers", "json", ("video_layers",)),
        Column("start_time", "time", ("start_time",)),
        Column("end_time", "time", ("end_time",)),
        Column("interval_s", "float", ("interval_s",)),
    ),
    identity=(
        "stat_id",
        "stream_kind",
        "node",
        "room_id",
        "participant_id",
        "track_id",
        "time",
        "stream_index",
    ),
    identity_required=False,  # a stat's unset fields are null, and part of its identity
)

LIVEKIT_TABLES = (LIVEKIT_EVENTS, LIVEKIT_ANALYTICS_EVENTS, LIVEKIT_STATS)


# livekit_stats as rtc_rates' columns, so LiveKit's participants get the dashboard's
# connection pages: a stat's counters cover its own interval, so each rate is a counter
# divided by interval_s (not a difference of rows). UPSTREAM is what the participant
# sends (outbound-rtp from its side), DOWNSTREAM what it receives (inbound-rtp); the SFU
# measures both. LiveKit reports rtt and jitter in milliseconds.
LIVEKIT_RATES_SQL = """
SELECT time, room_name AS channel_id, room_id AS session_id, participant_id AS connection_id,
    CASE stream_kind WHEN 'UPSTREAM' THEN 'outbound-rtp' ELSE 'inbound-rtp' END AS stats_type,
    concat_ws(':', track_id, stream_kind, stream_index) AS stats_id,
    split_part(mime, '/', 1) AS media_kind, track_id AS track_identifier, interval_s,
    8.0 * primary_bytes / interval_s AS bitrate_bps,
    primary_packets / interval_s AS packets_per_s,
    CASE WHEN primary_packets + packets_lost > 0
        THEN 100.0 * packets_lost / (primary_packets + packets_lost) END AS loss_pct,
    CAST(jitter AS DOUBLE) AS jitter_ms, CAST(rtt AS DOUBLE) AS rtt_ms,
    CAST(NULL AS DOUBLE) AS jitter_buffer_ms,
    CASE WHEN split_part(mime, '/', 1) = 'video' THEN frames / interval_s END AS fps,
    CAST(NULL AS BIGINT) AS frame_width, CAST(NULL AS BIGINT) AS frame_height,
    CAST(NULL AS DOUBLE) AS freezes_per_min, CAST(NULL AS DOUBLE) AS concealment_pct,
    60.0 * nacks / interval_s AS nack_per_min, 60.0 * plis / interval_s AS pli_per_min,
    60.0 * firs / interval_s AS fir_per_min,
    CAST(NULL AS VARCHAR) AS quality_limitation_reason,
    CAST(NULL AS DOUBLE) AS quality_limitation_none_share,
    CAST(NULL AS DOUBLE) AS quality_limitation_cpu_share,
    CAST(NULL AS DOUBLE) AS quality_limitation_bandwidth_share,
    CAST(NULL AS DOUBLE) AS quality_limitation_other_share,
    score
FROM livekit_stats WHERE interval_s > 0
"""

_NOT_REPORTED = "NULL: LiveKit's stats do not carry it"

# livekit_rates' columns (rtc_rates' names, LiveKit's meanings), in the view's order: the
# API's table list shows them, and a view that declares "time" is read by time range
LIVEKIT_RATES_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "the stat's time_stamp"),
    ("channel_id", "LiveKit room name"),
    ("session_id", "LiveKit room sid"),
    ("connection_id", "LiveKit participant sid"),
    ("stats_type", "outbound-rtp for an UPSTREAM stream (what the participant sends),"
                   " inbound-rtp for DOWNSTREAM (what it receives)"),
    ("stats_id", "track_id:stream_kind:stream_index"),
    ("media_kind", "audio or video (the mime type's first part)"),
    ("track_identifier", "the track sid"),
    ("interval_s", "the stream's end_time - start_time, seconds"),
    ("bitrate_bps", "8 × primary_bytes / interval_s, bits/s"),
    ("packets_per_s", "primary_packets / interval_s"),
    ("loss_pct", "packets_lost / (primary_packets + packets_lost) × 100"),
    ("jitter_ms", "the stream's jitter, ms"),
    ("rtt_ms", "the stream's rtt, ms"),
    ("jitter_buffer_ms", _NOT_REPORTED),
    ("fps", "video: frames / interval_s"),
    ("frame_width", _NOT_REPORTED),
    ("frame_height", _NOT_REPORTED),
    ("freezes_per_min", _NOT_REPORTED),
    ("concealment_pct", _NOT_REPORTED),
    ("nack_per_min", "nacks / interval_s × 60"),
    ("pli_per_min", "plis / interval_s × 60"),
    ("fir_per_min", "firs / interval_s × 60"),
    ("quality_limitation_reason", _NOT_REPORTED),
    *((f"quality_limitation_{r}_share", _NOT_REPORTED)
      for r in ("none", "cpu", "bandwidth", "other")),
    ("score", "the stat's connection quality score"),
)  # fmt: skip
