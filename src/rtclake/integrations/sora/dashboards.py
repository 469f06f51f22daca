"""Sora's Grafana dashboards: ``rtclake overview``, ``session`` and ``connection``.

Registered by :func:`rtclake.integrations.sora.register`; ``python -m rtclake.grafana``
writes them to ``deploy/grafana/dashboards/``. The panels read the views of
``views.py`` (docs/METRICS.md, docs/QUALITY.md) and the tables of ``tables.py`` and
``api.py``, through the DuckDB data source of :mod:`rtclake.grafana`. Each query runs in
tests/test_grafana.py on a lake of generated Sora data.

A session and a connection are chosen with the variables ``channel``, ``session`` and
``connection`` (each lists what reported in the time range, the most recent first). Rates
are per stream of a connection: ``stream`` labels a series by its direction, kind and
stats id (``in video RTCInboundRTPVideoStream_1234``; ``out (remote)`` is what the other
end reports of what this connection sends).
"""

from __future__ import annotations

from typing import Any

from rtclake.grafana import (
    SCORE_THRESHOLDS,
    dashboard,
    row,
    stat,
    state_timeline,
    table,
    timeseries,
    variable,
)
from rtclake.lake.dashboard import SPAN_STARTS

OVERVIEW = "rtclake-overview"
SESSION = "rtclake-session"
CONNECTION = "rtclake-connection"

# Grafana's variables, quoted as SQL literals
_CHANNEL = "${channel:sqlstring}"
_SESSION = "${session:sqlstring}"
_CONNECTION = "${connection:sqlstring}"
# a connection_spans row that overlaps the time range: the connection reported in it
_OVERLAPS = "time <= $__timeTo() AND last_time >= $__timeFrom()"
# a bucket of Grafana's interval (panels set its minimum) ...
_INTERVAL = "to_milliseconds(${__interval_ms:raw})"
_BUCKET = f"time_bucket({_INTERVAL}, time)"
# ... and a count per bucket as a count per minute
_PER_MINUTE = "(${__interval_ms:raw} / 60000)"

_STREAM = """concat_ws(' ', CASE stats_type
        WHEN 'inbound-rtp' THEN 'in' WHEN 'outbound-rtp' THEN 'out'
        WHEN 'remote-inbound-rtp' THEN 'out (remote)' ELSE 'pair' END,
    media_kind, stats_id) AS stream"""
_BY_STREAM = "${__field.labels.stream}"
_BY_NAME_AND_STREAM = "${__field.name} ${__field.labels.stream}"
_BY_CONNECTION = "${__field.labels.connection_id}"
_BY_NODE = "${__field.name} ${__field.labels.node}"

_TO_CONNECTION = (
    f"/d/{CONNECTION}/connection?var-channel=${{__data.fields.channel_id}}"
    "&var-session=${__data.fields.session_id}&var-connection=${__value.raw}&${__url_time_range}"
)
_TO_SESSION = (
    f"/d/{SESSION}/session?var-channel=${{__data.fields.channel_id}}"
    "&var-session=${__value.raw}&${__url_time_range}"
)
_TO_CHANNEL = f"/d/{SESSION}/session?var-channel=${{__value.raw}}&${{__url_time_range}}"

_CHANNELS = variable(
    "channel",
    "Channel",
    f"""
SELECT channel_id FROM connection_spans
WHERE {_OVERLAPS} AND channel_id IS NOT NULL
GROUP BY channel_id ORDER BY max(last_time) DESC
""",
)
_SESSIONS = variable(
    "session",
    "Session",
    f"""
SELECT session_id FROM connection_spans
WHERE {_OVERLAPS} AND channel_id = {_CHANNEL} AND session_id IS NOT NULL
GROUP BY session_id ORDER BY max(last_time) DESC
""",
)
_CONNECTIONS = variable(
    "connection",
    "Connection",
    f"""
SELECT connection_id AS __value,
    concat_ws(' ', connection_id, any_value(client_id), any_value(role)) AS __text
FROM connection_spans
WHERE {_OVERLAPS} AND session_id = {_SESSION} AND connection_id IS NOT NULL
GROUP BY connection_id ORDER BY min(time)
""",
)


# -- rtclake overview -----------------------------------------------------------------------


def _sora_counter_rates() -> str:
    counters = ("total_connection_created", "total_failed_connections")
    deltas = ",\n    ".join(
        f"CASE WHEN {c} >= lag({c}) OVER w THEN {c} - lag({c}) OVER w ELSE {c} END AS {c}"
        for c in counters
    )
    return f"""
WITH deltas AS (
    SELECT time, node, epoch(time) - epoch(lag(time) OVER w) AS seconds,
    {deltas}
    FROM sora_stats_report
    WHERE $__timeFilter(time)
    WINDOW w AS (PARTITION BY node ORDER BY time)
)
-- a counter that went down was reset (a restart): its new value is the increase
SELECT time, node, 60 * total_connection_created / seconds AS created,
    60 * total_failed_connections / seconds AS failed
FROM deltas WHERE seconds > 0
ORDER BY time
"""


def _active_per_bucket(counts: dict[str, str]) -> str:
    """Per bucket, how many distinct values of each column of ``counts`` (by the name of
    its count, e.g. ``{"sessions": "session_id"}``) reported in it, from
    ``connection_spans``: a few rows a connection, where ``connection_reports`` has one a
    report. A bucket of two minutes or more (the panels' minimum interval) that a span
    overlaps holds one of its reports (docs/METRICS.md), so the answer is the count of
    the reports' distinct values per bucket (tests/test_connection_spans.py checks it)."""
    ranges = "\n    UNION ALL\n    ".join(
        f"SELECT '{name}' AS what, {column} AS id, b0, b1 FROM spans WHERE {column} IS NOT NULL"
        for name, column in counts.items()
    )
    columns = ", ".join(f"max(s.n) FILTER (WHERE s.what = '{name}') AS {name}" for name in counts)
    return f"""
-- each span's buckets in the range, from its first (b0) to its last (b1), per value
WITH spans AS (
    SELECT session_id, connection_id,
        time_bucket({_INTERVAL}, greatest(time, $__timeFrom())) AS b0,
        time_bucket({_INTERVAL}, least(last_time, $__timeTo())) AS b1
    FROM connection_spans WHERE {_OVERLAPS}
), ranges AS (
    {ranges}
-- a value's ranges that overlap or touch make a run: +1 where one begins (no range of
-- the value reaches it from before), -1 after one ends (none goes on from it)
), deltas AS (
    SELECT DISTINCT what, id, b0 AS time, 1 AS d FROM ranges r WHERE NOT EXISTS (
        SELECT 1 FROM ranges o WHERE o.what = r.what AND o.id = r.id
            AND o.b0 < r.b0 AND o.b1 + {_INTERVAL} >= r.b0)
    UNION ALL
    SELECT DISTINCT what, id, b1 + {_INTERVAL}, -1 FROM ranges r WHERE NOT EXISTS (
        SELECT 1 FROM ranges o WHERE o.what = r.what AND o.id = r.id
            AND o.b1 > r.b1 AND o.b0 <= r.b1 + {_INTERVAL})
-- ... summed in time order: the count from each change on
), steps AS (
    SELECT what, time, CAST(sum(sum(d)) OVER (PARTITION BY what ORDER BY time) AS BIGINT) AS n
    FROM deltas GROUP BY what, time
), buckets AS (
    SELECT what, unnest(range(min(time), max(time), {_INTERVAL})) AS time
    FROM deltas GROUP BY what
)
SELECT b.time, {columns}
FROM buckets b ASOF JOIN steps s ON b.what = s.what AND b.time >= s.time
WHERE s.n > 0
GROUP BY 1 ORDER BY 1
"""


def overview() -> dict[str, Any]:
    """Service-wide: activity, quality, the worst connections, top channels, Sora nodes."""
    panels = [
        stat(
            "Active sessions",
            _active_per_bucket({"sessions": "session_id"}),
            fmt="time_series",
            interval="2m",
            description="Sessions with a client report in the last interval (Sora sends one"
            " a minute per connection).",
        ),
        stat(
            "Active connections",
            _active_per_bucket({"connections": "connection_id"}),
            fmt="time_series",
            interval="2m",
            description="Connections with a client report in the last interval.",
        ),
        stat(
            "Channels",
            f"""
SELECT count(DISTINCT channel_id) AS channels FROM connection_spans WHERE {_OVERLAPS}
""",
            description="Channels with a client report in the time range.",
        ),
        stat(
            "Median score",
            """
SELECT median(score) AS score FROM connection_quality WHERE $__timeFilter(time)
""",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
            description="The median of every report's score (1-5, the lower of the audio MOS"
            " and the video score; docs/QUALITY.md).",
        ),
        stat(
            "Connections below 3",
            """
SELECT count(*) AS connections FROM (
    SELECT connection_id FROM connection_quality WHERE $__timeFilter(time)
    GROUP BY connection_id HAVING avg(score) < 3
)
""",
            description="Connections whose average score in the time range is below 3.",
        ),
        stat(
            "Relayed connections",
            """
SELECT count(DISTINCT connection_id) FILTER (WHERE local_candidate_type = 'relay')
    / count(DISTINCT connection_id) AS relayed
FROM connection_transport WHERE $__timeFilter(time)
""",
            unit="percentunit",
            description="The share of connections whose selected candidate pair goes"
            " through a TURN server (a relay local candidate).",
        ),
        timeseries(
            "Active sessions and connections",
            _active_per_bucket({"sessions": "session_id", "connections": "connection_id"}),
            interval="2m",
            width=8,
        ),
        timeseries(
            "Connections started and ended per minute",
            f"""
SELECT {_BUCKET} AS time,
    count(*) FILTER (WHERE what = 'started') / {_PER_MINUTE} AS started,
    count(*) FILTER (WHERE what = 'ended') / {_PER_MINUTE} AS ended
FROM (
    SELECT 'started' AS what, time FROM connection_spans
    WHERE {SPAN_STARTS} AND $__timeFilter(time)
    UNION ALL
    SELECT 'ended', destroyed_at FROM connections WHERE $__timeFilter(destroyed_at)
)
GROUP BY 1 ORDER BY 1
""",
            interval="1m",
            description="Started: a connection's first client report (connection_spans'"
            " starts); ended: Sora's connection log (connection.jsonl).",
            width=8,
        ),
        timeseries(
            "Connections by path",
            f"""
SELECT {_BUCKET} AS time, local_candidate_type, count(DISTINCT connection_id) AS connections
FROM connection_transport
WHERE $__timeFilter(time) AND local_candidate_type IS NOT NULL
GROUP BY ALL ORDER BY 1
""",
            legend="${__field.labels.local_candidate_type}",
            stack="normal",
            interval="2m",
            description="Connections by the type of their selected local candidate: host,"
            " srflx, prflx, or relay (through TURN).",
            width=8,
        ),
        timeseries(
            "Quality across connections",
            f"""
SELECT {_BUCKET} AS time, avg(mos_audio) AS "audio MOS", avg(video_score) AS "video score",
    min(score) AS "worst score"
FROM connection_quality WHERE $__timeFilter(time)
GROUP BY 1 ORDER BY 1
""",
            minimum=1,
            maximum=5,
            thresholds=SCORE_THRESHOLDS,
            interval="1m",
        ),
        timeseries(
            "Round-trip time across connections",
            f"""
SELECT {_BUCKET} AS time, quantile_cont(rtt_ms, 0.5) AS median,
    quantile_cont(rtt_ms, 0.95) AS "95th percentile", max(rtt_ms) AS worst
FROM connection_quality WHERE $__timeFilter(time)
GROUP BY 1 ORDER BY 1
""",
            unit="ms",
            interval="1m",
            description="Each report's largest round-trip time (remote-inbound-rtp, candidate"
            " pair).",
        ),
        table(
            "Worst connections",
            """
SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
    avg(score) AS score, avg(mos_audio) AS mos_audio, avg(video_score) AS video_score,
    max(rtt_ms) AS worst_rtt_ms, max(audio_loss_pct) AS worst_audio_loss_pct,
    max(video_loss_pct) AS worst_video_loss_pct, max(time) AS last_report
FROM connection_quality WHERE $__timeFilter(time)
GROUP BY connection_id
ORDER BY score NULLS LAST LIMIT 20
""",
            links={"connection_id": _TO_CONNECTION, "session_id": _TO_SESSION},
            units={
                "worst_rtt_ms": "ms",
                "worst_audio_loss_pct": "percent",
                "worst_video_loss_pct": "percent",
            },
            description="The 20 connections with the lowest average score in the time range.",
            width=14,
        ),
        table(
            "Top channels",
            f"""
-- each connection's first and last report in the range, then its channel and session
-- from the spans (a few rows a connection) instead of every report's
SELECT channel_id, count(DISTINCT session_id) AS sessions,
    count(DISTINCT connection_id) AS connections, min(first_report) AS first_report,
    max(last_report) AS last_report
FROM (
    SELECT connection_id, min(time) AS first_report, max(time) AS last_report
    FROM connection_reports WHERE $__timeFilter(time)
    GROUP BY connection_id
) JOIN (
    SELECT DISTINCT connection_id, channel_id, session_id FROM connection_spans
    WHERE {_OVERLAPS}
) USING (connection_id)
GROUP BY channel_id
ORDER BY connections DESC LIMIT 20
""",
            links={"channel_id": _TO_CHANNEL},
            width=10,
        ),
        row("Sora nodes (the sora_api source)"),
        timeseries(
            "Ongoing connections per node",
            """
SELECT time, node, total_ongoing_connections AS ongoing
FROM sora_stats_report WHERE $__timeFilter(time)
ORDER BY time
""",
            legend="${__field.labels.node}",
            width=6,
        ),
        timeseries(
            "Connections created and failed per minute",
            _sora_counter_rates(),
            legend=_BY_NODE,
            width=6,
            description="From the counters of GetStatsReport (total_connection_created,"
            " total_failed_connections).",
        ),
        timeseries(
            "Erlang VM memory",
            """
SELECT time, node, memory_total AS total, memory_processes AS processes,
    memory_binary AS binary, memory_ets AS ets
FROM sora_stats_report WHERE $__timeFilter(time)
ORDER BY time
""",
            unit="bytes",
            legend=_BY_NODE,
            width=6,
        ),
        timeseries(
            "Erlang VM run queues",
            """
SELECT time, node, total_run_queue_lengths_all AS total,
    run_queue_lengths_all_max AS "longest queue"
FROM sora_stats_report WHERE $__timeFilter(time)
ORDER BY time
""",
            legend=_BY_NODE,
            width=6,
            description="Processes waiting for a scheduler, in all queues and in the longest"
            " (Sorabeat's derived field).",
        ),
    ]
    return dashboard(
        OVERVIEW,
        "rtclake overview",
        panels,
        description="Sora service-wide: sessions, connections, quality, paths, nodes.",
        tags=("rtclake", "sora"),
    )


# -- session --------------------------------------------------------------------------------


def _per_connection(column: str, alias: str) -> str:
    return f"""
SELECT time, connection_id, {column} AS "{alias}"
FROM connection_quality
WHERE session_id = {_SESSION} AND $__timeFilter(time)
ORDER BY time
"""


def _bitrate_per_connection(stats_type: str, alias: str) -> str:
    return f"""
SELECT time, connection_id, sum(bitrate_bps) AS "{alias}"
FROM rtc_rates
WHERE session_id = {_SESSION} AND $__timeFilter(time) AND stats_type = '{stats_type}'
GROUP BY time, connection_id
ORDER BY time
"""


def session() -> dict[str, Any]:
    """One session: its participants, their scores and their media."""
    panels = [
        stat(
            "Connections",
            f"SELECT connections FROM session_quality WHERE session_id = {_SESSION}",
            description="Connections of the session with a score.",
        ),
        stat(
            "Worst score",
            f"SELECT worst_score FROM session_quality WHERE session_id = {_SESSION}",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
            description="The lowest of the connections' average scores.",
        ),
        stat(
            "Median score",
            f"SELECT median_score FROM session_quality WHERE session_id = {_SESSION}",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
        ),
        stat(
            "Worst audio MOS",
            f"SELECT worst_mos_audio FROM session_quality WHERE session_id = {_SESSION}",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
        ),
        stat(
            "Worst video score",
            f"SELECT worst_video_score FROM session_quality WHERE session_id = {_SESSION}",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
        ),
        stat(
            "Duration",
            f"""
SELECT epoch(coalesce(max(destroyed_at), max(time))) - epoch(coalesce(min(created_at), min(time)))
    AS duration
FROM sessions WHERE session_id = {_SESSION}
""",
            unit="s",
            description="From session.created to session.destroyed (Sora's session"
            " webhooks), or to the last one received.",
        ),
        table(
            "Session",
            f"""
SELECT w.session_id, w.channel_id, w.created_at, w.destroyed_at, w.max_connections,
    w.total_connections, w.node_name, q.worst_connection_id
FROM (
    SELECT session_id, any_value(channel_id) AS channel_id, min(created_at) AS created_at,
        max(destroyed_at) AS destroyed_at, max(max_connections) AS max_connections,
        max(total_connections) AS total_connections, any_value(node_name) AS node_name
    FROM sessions WHERE session_id = {_SESSION}
    GROUP BY session_id
) w
LEFT JOIN session_quality q USING (session_id)
""",
            links={"worst_connection_id": _TO_CONNECTION},
            description="From Sora's session webhooks (session_webhook.jsonl).",
            height=4,
        ),
        table(
            "Participants",
            f"""
WITH reports AS (
    SELECT connection_id, any_value(channel_id) AS channel_id,
        any_value(session_id) AS session_id, any_value(client_id) AS client_id,
        any_value(role) AS role, min(time) AS first_report,
        max(time) AS last_report
    FROM connection_reports WHERE session_id = {_SESSION}
    GROUP BY connection_id
), scores AS (
    SELECT connection_id, avg(score) AS score, avg(mos_audio) AS mos_audio,
        avg(video_score) AS video_score, max(rtt_ms) AS worst_rtt_ms,
        max(audio_loss_pct) AS worst_audio_loss_pct
    FROM connection_quality WHERE session_id = {_SESSION}
    GROUP BY connection_id
), ended AS (
    SELECT connection_id, any_value(created_at) AS created_at,
        any_value(destroyed_at) AS destroyed_at, any_value(reason) AS reason
    FROM connections WHERE session_id = {_SESSION}
    GROUP BY connection_id
)
SELECT r.connection_id, r.client_id, r.role, coalesce(e.created_at, r.first_report) AS joined,
    coalesce(e.destroyed_at, r.last_report) AS left_at,
    e.reason AS left_reason, s.score, s.mos_audio, s.video_score, s.worst_rtt_ms,
    s.worst_audio_loss_pct, r.channel_id, r.session_id
FROM reports r LEFT JOIN scores s USING (connection_id) LEFT JOIN ended e USING (connection_id)
ORDER BY joined
""",
            links={"connection_id": _TO_CONNECTION},
            units={"worst_rtt_ms": "ms", "worst_audio_loss_pct": "percent"},
            description="Joined and left: Sora's connection log when it has the connection,"
            " else its first and last client report.",
        ),
        timeseries(
            "Score per participant",
            _per_connection("score", "score"),
            legend=_BY_CONNECTION,
            minimum=1,
            maximum=5,
            thresholds=SCORE_THRESHOLDS,
        ),
        timeseries(
            "Audio MOS per participant",
            _per_connection("mos_audio", "audio MOS"),
            legend=_BY_CONNECTION,
            minimum=1,
            maximum=5,
            thresholds=SCORE_THRESHOLDS,
        ),
        timeseries(
            "Video score per participant",
            _per_connection("video_score", "video score"),
            legend=_BY_CONNECTION,
            minimum=1,
            maximum=5,
            thresholds=SCORE_THRESHOLDS,
        ),
        timeseries(
            "Round-trip time per participant",
            _per_connection("rtt_ms", "RTT"),
            unit="ms",
            legend=_BY_CONNECTION,
        ),
        timeseries(
            "Audio loss per participant",
            _per_connection("audio_loss_pct", "audio loss"),
            unit="percent",
            legend=_BY_CONNECTION,
            description="The larger of the loss received and the loss the other end reports.",
        ),
        timeseries(
            "Video loss per participant",
            _per_connection("video_loss_pct", "video loss"),
            unit="percent",
            legend=_BY_CONNECTION,
        ),
        timeseries(
            "Bitrate sent per participant",
            _bitrate_per_connection("outbound-rtp", "sent"),
            unit="bps",
            legend=_BY_CONNECTION,
        ),
        timeseries(
            "Bitrate received per participant",
            _bitrate_per_connection("inbound-rtp", "received"),
            unit="bps",
            legend=_BY_CONNECTION,
        ),
    ]
    return dashboard(
        SESSION,
        "session",
        panels,
        description="One Sora session: participants, their scores and their media.",
        variables=[_CHANNELS, _SESSIONS],
        tags=("rtclake", "sora"),
    )


# -- connection -----------------------------------------------------------------------------


def _rates(values: str, where: str) -> str:
    """Rows of rtc_rates of the chosen connection, one series per stream."""
    return f"""
SELECT time, {_STREAM},
    {values}
FROM rtc_rates
WHERE connection_id = {_CONNECTION} AND $__timeFilter(time)
    AND {where}
ORDER BY time
"""


def _quality(values: str) -> str:
    return f"""
SELECT time, {values}
FROM connection_quality
WHERE connection_id = {_CONNECTION} AND $__timeFilter(time)
ORDER BY time
"""


def _transport(values: str) -> str:
    return f"""
SELECT time, {values}
FROM connection_transport
WHERE connection_id = {_CONNECTION} AND $__timeFilter(time)
ORDER BY time
"""


_MEDIA = "stats_type IN ('inbound-rtp', 'outbound-rtp')"
_VIDEO = f"media_kind = 'video' AND {_MEDIA}"


def connection() -> dict[str, Any]:
    """One connection: every rate of rtc_rates per stream, its scores, its transport."""
    panels = [
        stat(
            "Score",
            _quality("score"),
            fmt="time_series",
            calc="mean",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
            description="The average, over the time range, of each report's score.",
        ),
        stat(
            "Audio MOS",
            _quality("mos_audio"),
            fmt="time_series",
            calc="mean",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
        ),
        stat(
            "Video score",
            _quality("video_score"),
            fmt="time_series",
            calc="mean",
            decimals=2,
            thresholds=SCORE_THRESHOLDS,
        ),
        stat(
            "Path",
            f"""
SELECT local_candidate_type AS local, local_protocol AS protocol, relay_protocol AS "to TURN",
    remote_candidate_type AS remote
FROM connection_transport
WHERE connection_id = {_CONNECTION} AND $__timeFilter(time)
ORDER BY time DESC LIMIT 1
""",
            text=True,
            description="The selected candidate pair's local candidate (relay: through"
            " TURN, and the protocol to the TURN server) and remote candidate.",
            width=12,
        ),
        table(
            "Connection",
            f"""
SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
    any_value(client_id) AS client_id, any_value(role) AS role,
    any_value(node_name) AS node_name, min(time) AS first_report,
    max(time) AS last_report, count(DISTINCT time) AS reports
FROM connection_reports WHERE connection_id = {_CONNECTION}
GROUP BY connection_id
""",
            links={"session_id": _TO_SESSION},
            height=4,
        ),
        timeseries(
            "Quality scores",
            _quality('mos_audio AS "audio MOS", video_score AS "video score", score'),
            minimum=1,
            maximum=5,
            thresholds=SCORE_THRESHOLDS,
            description="Audio: the E-model's MOS; video: a 1-5 score from resolution, frame"
            " rate, freezes and loss; score: the lower (docs/QUALITY.md).",
        ),
        timeseries(
            "Audio delay",
            _quality(
                'rtt_ms AS "round trip", audio_jitter_buffer_ms AS "jitter buffer",'
                ' audio_delay_ms AS "one way (estimate)"'
            ),
            unit="ms",
            description="What the audio MOS's delay impairment reads: the one-way delay is"
            " half the round trip, the jitter buffer and one Opus frame.",
        ),
        row("Media (rtc_rates, one series per stream)"),
        timeseries(
            "Bitrate",
            _rates("bitrate_bps AS bitrate", _MEDIA),
            unit="bps",
            legend=_BY_STREAM,
        ),
        timeseries(
            "Packets per second",
            _rates("packets_per_s AS packets", _MEDIA),
            unit="pps",
            legend=_BY_STREAM,
        ),
        timeseries(
            "Packet loss",
            _rates("loss_pct AS loss", "stats_type IN ('inbound-rtp', 'remote-inbound-rtp')"),
            unit="percent",
            legend=_BY_STREAM,
            description="Received (in) and, as the other end reports it, sent (out (remote)).",
        ),
        timeseries(
            "Jitter",
            _rates("jitter_ms AS jitter", "stats_type IN ('inbound-rtp', 'remote-inbound-rtp')"),
            unit="ms",
            legend=_BY_STREAM,
        ),
        timeseries(
            "Round-trip time",
            _rates("rtt_ms AS rtt", "stats_type IN ('remote-inbound-rtp', 'candidate-pair')"),
            unit="ms",
            legend=_BY_STREAM,
            description="From the other end's reports (remote-inbound-rtp) and from ICE"
            " (the candidate pair's current round-trip time).",
        ),
        timeseries(
            "Jitter buffer delay",
            _rates("jitter_buffer_ms AS delay", "stats_type = 'inbound-rtp'"),
            unit="ms",
            legend=_BY_STREAM,
        ),
        timeseries("Frame rate", _rates("fps", _VIDEO), legend=_BY_STREAM),
        timeseries(
            "Resolution",
            _rates("frame_width AS width, frame_height AS height", _VIDEO),
            legend=_BY_NAME_AND_STREAM,
            description="Pixels.",
        ),
        timeseries(
            "Freezes per minute",
            _rates(
                "freezes_per_min AS freezes", "media_kind = 'video' AND stats_type = 'inbound-rtp'"
            ),
            legend=_BY_STREAM,
        ),
        timeseries(
            "Audio concealment",
            _rates(
                "concealment_pct AS concealed",
                "media_kind = 'audio' AND stats_type = 'inbound-rtp'",
            ),
            unit="percent",
            legend=_BY_STREAM,
            description="The share of audio samples the receiver made up for lost ones.",
        ),
        timeseries(
            "NACK, PLI and FIR per minute",
            _rates("nack_per_min AS nack, pli_per_min AS pli, fir_per_min AS fir", _VIDEO),
            legend=_BY_NAME_AND_STREAM,
        ),
        timeseries(
            "Quality limitation",
            _rates(
                "quality_limitation_none_share AS none, quality_limitation_cpu_share AS cpu,"
                " quality_limitation_bandwidth_share AS bandwidth,"
                " quality_limitation_other_share AS other",
                "media_kind = 'video' AND stats_type = 'outbound-rtp'",
            ),
            unit="percentunit",
            legend=_BY_NAME_AND_STREAM,
            stack="normal",
            description="The share of each interval the encoder spent limited by nothing, the"
            " CPU, the bandwidth or another reason (qualityLimitationDurations).",
        ),
        row("Transport (the selected candidate pair)"),
        timeseries(
            "Candidate pair round-trip time",
            _transport("rtt_ms AS rtt"),
            unit="ms",
            width=8,
        ),
        timeseries(
            "Available outgoing bitrate",
            _transport("available_outgoing_bitrate_bps AS available"),
            unit="bps",
            width=8,
            description="The sender's bandwidth estimate for the selected pair.",
        ),
        timeseries(
            "Selected pair changes",
            _transport("selected_candidate_pair_changes AS changes"),
            width=8,
            description="How often the selected pair has changed (an ICE restart or a"
            " network change moves it).",
        ),
        state_timeline(
            "ICE, DTLS and pair state",
            _transport("ice_state AS ice, dtls_state AS dtls, pair_state AS pair"),
        ),
        table(
            "Candidate pair history",
            f"""
SELECT time, pair_id, pair_state, ice_state, dtls_state, local_candidate_type,
    local_protocol, relay_protocol, network_type, remote_candidate_type,
    selected_candidate_pair_changes
FROM connection_transport
WHERE connection_id = {_CONNECTION} AND $__timeFilter(time)
WINDOW w AS (ORDER BY time)
-- the first report, and every report where the pair or a state changed
QUALIFY row_number() OVER w = 1
    OR (pair_id, pair_state, ice_state, dtls_state)
        IS DISTINCT FROM lag((pair_id, pair_state, ice_state, dtls_state)) OVER w
ORDER BY time DESC
""",
            description="The selected candidate pair at the first report and whenever it or"
            " a state changed, the latest first.",
        ),
    ]
    return dashboard(
        CONNECTION,
        "connection",
        panels,
        description="One Sora connection: rates per stream, scores, candidate pair.",
        variables=[_CHANNELS, _SESSIONS, _CONNECTIONS],
        tags=("rtclake", "sora"),
    )


DASHBOARDS = {OVERVIEW: overview, SESSION: session, CONNECTION: connection}
