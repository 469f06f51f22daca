"""The dashboard's questions as SQL: named, parameterised queries over the lake's tables
and the integrations' views (``rtc_rates``, ``connection_quality``, ...).

The web dashboard (``web/dashboard.py``) runs them; so can a benchmark or a Grafana panel.
Each function returns one ``SELECT`` for :meth:`rtclake.lake.query.QueryEngine.run`, and
binds its values here, never by pasting a caller's text into SQL: ids become escaped
string literals (:func:`quote`), times are parsed by Python (:func:`parse_time`) and
written as ISO literals, and bucket widths are chosen here (:meth:`TimeRange.bucket`), so
a chart has at most :data:`MAX_POINTS` points per series.

Rates are never recomputed from buckets: a bucket's value is the time-weighted mean of
the true rates of the intervals ending in it (``rtc_rates``, one row per pair of
consecutive samples of a stream), or, for Sora's node counters, of the rates between
consecutive polls, computed here the way ``rtc_rates`` computes them (a counter that
went down was reset, and the interval takes its new value).

Long results (one row per series and time) suit Grafana; :func:`series_lists` folds
them into one row per series with a list per column, the shape a chart wants and one
that stays within a query's row limit however many buckets it has.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

RANGES = {"15m": 900, "1h": 3_600, "6h": 21_600, "24h": 86_400, "7d": 604_800}
"""The preset ranges of the time-range picker, in seconds, ending now."""

DEFAULT_RANGE = "1h"
MAX_POINTS = 600
"""At most this many points per series in a chart."""

BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1_800, 3_600, 7_200, 10_800,
           21_600, 43_200, 86_400)  # fmt: skip
"""Bucket widths in seconds, each a divisor of a day, so buckets start at round times."""

ACTIVE_STATS_SECONDS = 120
"""A connection that sent stats this recently counts as active when no log says it ended;
Sora's ``connection_spans`` break at silences longer than this, so a span that overlaps
the last this many seconds holds a report in them."""

SPAN_STARTS = "coalesce(starts, opens)"
"""The ``connection_spans`` row of a connection's first report. Rows stored before the
``starts`` column existed have it NULL: their ``opens`` (a first report, or the first after
a silence) stands in."""

LOOKBACK_SECONDS = 86_400
"""How far back a created event (or a first report) still makes something active now."""

NEEDS = frozenset(
    ("rtc_stats", "sessions", "connections", "sora_events", "sora_stats_report",
     "sora_connection_counters", "rtc_rates", "connection_reports", "connection_spans",
     "connection_quality",
     "livekit_rates", "livekit_events", "livekit_analytics_events")
)  # fmt: skip
"""The tables and views these queries read: an integration (Sora's) provides them."""

# The metrics of rtc_rates that a connection's charts show (docs/METRICS.md).
RATE_METRICS = (
    "bitrate_bps", "packets_per_s", "loss_pct", "jitter_ms", "rtt_ms", "jitter_buffer_ms",
    "fps", "frame_width", "frame_height", "freezes_per_min", "concealment_pct",
    "nack_per_min", "pli_per_min", "fir_per_min", "quality_limitation_none_share",
    "quality_limitation_cpu_share", "quality_limitation_bandwidth_share",
    "quality_limitation_other_share",
)  # fmt: skip
SCORES = ("score", "mos_audio", "video_score")
"""The scores of ``connection_quality`` (docs/QUALITY.md)."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# A stream's rates: Sora's (rtc_rates) and LiveKit's (livekit_rates, a LiveKit room as a
# session, a participant as a connection), so either SFU's connection gets its page.
STREAM_RATES = (
    "(SELECT * FROM rtc_rates UNION ALL BY NAME SELECT * EXCLUDE (score) FROM livekit_rates)"
)
_RATES = STREAM_RATES
# Who reported when, as stretches from a first (time) to a last report (last_time): Sora's
# (connection_spans, consecutive reports at most ACTIVE_STATS_SECONDS apart), and LiveKit's
# stats, one row each.
_REPORTED = (
    "SELECT connection_id, channel_id, session_id, client_id, role, time, last_time"
    " FROM connection_spans UNION ALL SELECT connection_id, channel_id, session_id, NULL, NULL,"
    " time, time FROM livekit_rates"
)

# A LiveKit room's life as rows of Sora's ``sessions`` (a room as a session, as above):
# room_started / ROOM_CREATED and room_finished / ROOM_ENDED, from the webhooks and the
# analytics events. A room_finished webhook carries the room's creationTime (seconds).
_LIVEKIT_ROOMS = """SELECT room_sid AS session_id, room_name AS channel_id,
        CASE WHEN event = 'room_started' THEN time
            ELSE to_timestamp(TRY_CAST(json_extract_string(extra, '$.room.creationTime')
                AS BIGINT)) END AS created_at,
        CASE WHEN event = 'room_finished' THEN time END AS destroyed_at,
        NULL::BIGINT AS total_connections, NULL::BIGINT AS max_connections, time
    FROM livekit_events
    WHERE event IN ('room_started', 'room_finished') AND room_sid IS NOT NULL
    UNION ALL
    SELECT room_id, room_name, CASE WHEN event_type = 'ROOM_CREATED' THEN time END,
        CASE WHEN event_type = 'ROOM_ENDED' THEN time END, NULL, NULL, time
    FROM livekit_analytics_events
    WHERE event_type IN ('ROOM_CREATED', 'ROOM_ENDED') AND room_id IS NOT NULL"""
_SESSION_LIFE = (
    "SELECT session_id, channel_id, created_at, destroyed_at, total_connections,"
    f" max_connections, time FROM sessions UNION ALL SELECT * FROM ({_LIVEKIT_ROOMS})"
)
# A LiveKit participant's joins and leaves as a connection's created and destroyed (a
# participant as a connection), with LiveKit's disconnectReason as the reason.
_LIVEKIT_PARTICIPANTS = """SELECT participant_sid AS connection_id, room_name AS channel_id,
        room_sid AS session_id, participant_identity AS client_id,
        CASE WHEN event = 'participant_joined' THEN time END AS created_at,
        CASE WHEN event <> 'participant_joined' THEN time END AS destroyed_at,
        CASE WHEN event = 'participant_connection_aborted' THEN 'CONNECTION_ABORTED'
            WHEN event = 'participant_left'
            THEN json_extract_string(extra, '$.participant.disconnectReason') END AS reason
    FROM livekit_events WHERE participant_sid IS NOT NULL
        AND event IN ('participant_joined', 'participant_left', 'participant_connection_aborted')
    UNION ALL
    SELECT participant_id, room_name, room_id, participant_identity,
        CASE WHEN event_type = 'PARTICIPANT_JOINED' THEN time END,
        CASE WHEN event_type = 'PARTICIPANT_LEFT' THEN time END, NULL
    FROM livekit_analytics_events WHERE participant_id IS NOT NULL
        AND event_type IN ('PARTICIPANT_JOINED', 'PARTICIPANT_LEFT')"""


# -- binding values -------------------------------------------------------------------------


def quote(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled; NUL refused, DuckDB cuts at it)."""
    if "\x00" in text:
        raise ValueError("a value holds a NUL character")
    return "'" + text.replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A table, view or column name as a quoted SQL identifier; only plain names pass."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a table or column name")
    return f'"{name}"'


def timestamp(t: datetime) -> str:
    """A time as a ``TIMESTAMPTZ`` literal (UTC)."""
    return f"TIMESTAMPTZ '{t.astimezone(UTC).isoformat()}'"


def _back(t: datetime, seconds: float) -> datetime:
    """``seconds`` before ``t``, or the first time there is (a range from year 1: a look
    back before it had raised OverflowError, a 500)."""
    first = datetime(1, 1, 1, tzinfo=UTC)
    return first if t - first <= timedelta(seconds=seconds) else t - timedelta(seconds=seconds)


def parse_time(text: str) -> datetime:
    """A time from a URL: ISO 8601 (``2026-12-01T10:00:00Z``, an offset, or none: UTC) or
    milliseconds since the epoch. Raises ValueError with the reason."""
    text = text.strip()
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        t = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(
            f"{text!r} is not a time: give ISO 8601 (2026-12-01T10:00:00Z) or epoch milliseconds"
        ) from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class TimeRange:
    """From ``start`` (included) to ``end`` (excluded), UTC; ``name`` is the preset
    (``1h``, ...) it came from, None for times given."""

    start: datetime
    end: datetime
    name: str | None = None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def bucket(self, max_points: int = MAX_POINTS, *, at_least: int = 1) -> int:
        """The narrowest bucket width (seconds) that gives at most ``max_points`` buckets."""
        for width in BUCKETS:
            if width >= at_least and self.seconds / width <= max_points:
                return width
        return 86_400 * math.ceil(self.seconds / 86_400 / max_points)

    def where(self, column: str = "time") -> str:
        return f"{column} >= {timestamp(self.start)} AND {column} < {timestamp(self.end)}"

    def as_json(self) -> dict[str, object]:
        return {"from": _iso(self.start), "to": _iso(self.end), "range": self.name}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def time_range(
    range_: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    *,
    now: datetime,
) -> TimeRange:
    """The range of a page's URL: ``from`` (and ``to``, default now) when given, else the
    preset ``range`` (default :data:`DEFAULT_RANGE`) ending ``now``."""
    if from_:
        start = parse_time(from_)
        end = parse_time(to) if to else now
        if end <= start:
            raise ValueError(f"the range ends ({_iso(end)}) before it starts ({_iso(start)})")
        return TimeRange(start, end)
    if to:
        raise ValueError("give from with to")
    name = range_ or DEFAULT_RANGE
    if name not in RANGES:
        raise ValueError(f"range {name!r}: use one of {', '.join(RANGES)}, or from and to")
    return TimeRange(now - timedelta(seconds=RANGES[name]), now, name)


def _bucket(width: int, column: str = "time") -> str:
    return f"time_bucket(INTERVAL '{width} seconds', {column})"


def _delta(column: str) -> str:
    """A counter's increase since the previous sample; on a reset, its new value."""
    prev = f"prev_{column}"
    return (
        f"(CASE WHEN {prev} IS NULL THEN NULL WHEN {column} >= {prev} THEN {column} - {prev}"
        f" ELSE {column} END)"
    )


def _weighted(metric: str) -> str:
    """The time-weighted mean of a rate over the intervals of a bucket."""
    return f"(sum({metric} * interval_s) / sum(CASE WHEN {metric} IS NOT NULL THEN interval_s END))"


def series_lists(sql: str, keys: Sequence[str], values: Sequence[str], order: str = "time") -> str:
    """One row per series (the ``keys``) of a long result, each of ``order`` and the
    ``values`` a list in ``order``'s order: the shape of a chart's traces."""
    key_list = ", ".join(keys)
    lists = ", ".join(f"list({c} ORDER BY {order}) AS {c}" for c in (order, *values))
    grouped = f" GROUP BY {key_list} ORDER BY {key_list}" if keys else ""
    select = f"{key_list}, {lists}" if keys else lists
    return f"SELECT {select} FROM ({sql}){grouped}"


# -- the overview ---------------------------------------------------------------------------


def active_now_sql(now: datetime, empty: Collection[str] = ()) -> str:
    """Active sessions and connections at ``now``, one row.

    A connection is active when Sora's event webhook told of its ``connection.created``
    (in the last day) or it reported stats in the last :data:`ACTIVE_STATS_SECONDS`, and
    neither the connection log nor a ``connection.destroyed`` says it ended. A session is
    active when it was created or updated in the last day and not destroyed, or when one
    of its connections is active. Also: how many connections came from stats alone.

    ``empty``: tables without files in the snapshot the query reads
    (:data:`rtclake.lake.query.Query`), left out of the question, which they cannot
    change: a lake fed by Sora's logs alone has no webhook tables, and each table left
    out is a branch DuckDB does not bind, plan and run (~1 ms each).
    """
    day = timestamp(now - timedelta(seconds=LOOKBACK_SECONDS))
    recent = timestamp(now - timedelta(seconds=ACTIVE_STATS_SECONDS))
    # each table read once (an overview refreshes every few seconds): what each says of
    # a connection, then per connection
    facts = [
        f"""SELECT connection_id, session_id, false AS logged, false AS ended, true AS reported
    FROM connection_spans WHERE last_time >= {recent} AND time <= {timestamp(now)}"""
    ]
    if "sora_events" not in empty:
        facts.append(f"""SELECT connection_id, session_id,
        event = 'connection.created' AND time >= {day}, event = 'connection.destroyed', false
    FROM sora_events WHERE event IN ('connection.created', 'connection.destroyed')""")
    if "connections" not in empty:
        facts.append("""SELECT connection_id, session_id, false, true, false FROM connections
    WHERE destroyed_at IS NOT NULL""")
    if len(facts) == 1 and "sessions" in empty:
        # the stats alone: each connection that reported counts, with its session
        return f"""
SELECT count(DISTINCT connection_id) AS connections,
    count(DISTINCT connection_id) AS connections_from_stats,
    count(DISTINCT session_id) AS sessions
FROM connection_spans
WHERE last_time >= {recent} AND time <= {timestamp(now)} AND connection_id IS NOT NULL
"""
    ended = (
        ""
        if len(facts) == 1
        else "\n    HAVING (bool_or(logged) OR bool_or(reported)) AND NOT bool_or(ended)"
    )
    union = "\n    UNION ALL\n    ".join(facts)
    sessions = of_sessions = ""
    if "sessions" not in empty:
        of_sessions = "\n    UNION ALL SELECT false, session_id, NULL FROM live_sessions"
        sessions = f""",
live_sessions AS (
    SELECT session_id FROM sessions
    WHERE session_id IS NOT NULL AND (time >= {day} OR event = 'session.destroyed')
    GROUP BY session_id
    HAVING bool_or(event IN ('session.created', 'session.updated') AND time >= {day})
        AND NOT bool_or(event = 'session.destroyed')
)"""
    return f"""
WITH facts AS (
    {union}
),
live AS (
    SELECT connection_id, any_value(session_id) AS session_id, bool_or(logged) AS logged
    FROM facts WHERE connection_id IS NOT NULL GROUP BY connection_id{ended}
){sessions}
SELECT count(*) FILTER (WHERE is_connection) AS connections,
    count(*) FILTER (WHERE is_connection AND NOT logged) AS connections_from_stats,
    count(DISTINCT session_id) AS sessions
FROM (
    SELECT true AS is_connection, session_id, logged FROM live{of_sessions}
)
"""


def connection_flow_sql(r: TimeRange, bucket: int, empty: Collection[str] = ()) -> str:
    """Connections created, destroyed and destroyed abnormally, per minute, per bucket
    (``bucket`` seconds, at least 60).

    Created: the connection log's ``created_at``, else the event webhook's
    ``connection.created``, else the connection's first stats report (the
    ``connection_spans`` row that starts it, :data:`SPAN_STARTS`, looking back a day
    before the range). Destroyed: the log's ``destroyed_at``, else ``connection.destroyed``;
    abnormally: the log's reason is not ``normal``.

    ``empty``: tables without files in the snapshot the query reads, left out as in
    :func:`active_now_sql`.
    """
    since = timestamp(_back(r.start, LOOKBACK_SECONDS))
    # each table read once: what each says of a connection, then per connection, then
    # each connection's events (created, destroyed, failed) side by side
    facts = []
    if "connections" not in empty:
        facts.append("""SELECT connection_id, created_at AS created, destroyed_at AS destroyed,
        destroyed_at IS NOT NULL AND coalesce(reason, 'normal') <> 'normal' AS failed
    FROM connections WHERE created_at IS NOT NULL OR destroyed_at IS NOT NULL""")
    if "sora_events" not in empty:
        facts.append("""SELECT connection_id,
        CASE WHEN event = 'connection.created' THEN time END AS created,
        CASE WHEN event = 'connection.destroyed' THEN time END AS destroyed, false AS failed
    FROM sora_events WHERE event IN ('connection.created', 'connection.destroyed')""")
    if not facts:
        # the stats alone: a connection was created at its first report, and nothing
        # says when one ended (the question below, without its union and its unnest)
        return f"""
SELECT {_bucket(bucket, "time")} AS time,
    60.0 * count(*) / {bucket} AS created_per_min,
    0.0::DOUBLE AS destroyed_per_min, 0.0::DOUBLE AS failed_per_min,
    count(*) AS created, 0::BIGINT AS destroyed, 0::BIGINT AS failed
FROM connection_spans
WHERE {SPAN_STARTS} AND {r.where("time")} AND connection_id IS NOT NULL
GROUP BY 1 ORDER BY 1
"""
    # every branch names its columns: the first one kept names the union's
    facts.append(f"""SELECT connection_id, time AS created, NULL::TIMESTAMPTZ AS destroyed,
        false AS failed
    FROM connection_spans
    WHERE {SPAN_STARTS} AND time >= {since} AND time < {timestamp(r.end)}""")
    union = "\n    UNION ALL\n    ".join(facts)
    return f"""
WITH facts AS (
    {union}
),
events AS (
    SELECT unnest([min(created), min(destroyed), CASE WHEN bool_or(failed) THEN min(destroyed) END])
        AS t,
        unnest(['created', 'destroyed', 'failed']) AS what
    FROM facts WHERE connection_id IS NOT NULL GROUP BY connection_id
)
SELECT {_bucket(bucket, "t")} AS time,
    60.0 * count(*) FILTER (WHERE what = 'created') / {bucket} AS created_per_min,
    60.0 * count(*) FILTER (WHERE what = 'destroyed') / {bucket} AS destroyed_per_min,
    60.0 * count(*) FILTER (WHERE what = 'failed') / {bucket} AS failed_per_min,
    count(*) FILTER (WHERE what = 'created') AS created,
    count(*) FILTER (WHERE what = 'destroyed') AS destroyed,
    count(*) FILTER (WHERE what = 'failed') AS failed
FROM events WHERE {r.where("t")}
GROUP BY 1 ORDER BY 1
"""


FLOW_COLUMNS = ("created_per_min", "destroyed_per_min", "failed_per_min")
"""The columns of :func:`connection_flow_sql` that the overview charts."""


def connection_flow_series_sql(r: TimeRange, bucket: int, empty: Collection[str] = ()) -> str:
    """:func:`connection_flow_sql` as one row of lists (:func:`series_lists`), the shape
    the overview's chart takes; for :meth:`rtclake.lake.query.QueryEngine.run_many` as
    ``functools.partial(connection_flow_series_sql, r, bucket)``."""
    return series_lists(connection_flow_sql(r, bucket, empty), [], FLOW_COLUMNS, order="time")


def _per_connection_quality(r: TimeRange, where: str = "") -> str:
    return f"""
SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
    round(avg(score), 3) AS score, min(score) AS worst_score, round(avg(mos_audio), 3) AS mos_audio,
    round(avg(video_score), 3) AS video_score, count(*) AS reports, min(time) AS first_seen,
    max(time) AS last_seen
FROM connection_quality WHERE {r.where()}{where}
GROUP BY connection_id
"""


def worst_connections_sql(r: TimeRange, limit: int = 10, channel: str | None = None) -> str:
    """The connections with the lowest average score over the range (``connection_quality``),
    worst first."""
    where = f" AND channel_id = {quote(channel)}" if channel else ""
    return (
        f"SELECT * FROM ({_per_connection_quality(r, where)}) WHERE score IS NOT NULL"
        f" ORDER BY score, worst_score, connection_id LIMIT {int(limit)}"
    )


def top_channels_sql(r: TimeRange, limit: int = 10) -> str:
    """The channels with the most connections reporting stats in the range, with their
    scores (the average and the worst of their connections' averages)."""
    return f"""
SELECT channel_id, count(*) AS connections, count(DISTINCT session_id) AS sessions,
    round(avg(score), 3) AS score, min(score) AS worst_score, max(last_seen) AS last_seen
FROM ({_per_connection_quality(r)})
GROUP BY channel_id ORDER BY connections DESC, channel_id LIMIT {int(limit)}
"""


def sessions_sql(
    r: TimeRange, *, limit: int = 100, channel: str | None = None, now: datetime
) -> str:
    """The sessions that lived during the range, newest first: from the session webhooks
    (created, destroyed) and the scores of their connections in the range."""
    channel_where = f" AND channel_id = {quote(channel)}" if channel else ""
    return f"""
WITH q AS ({_per_connection_quality(r, channel_where)}),
qs AS (
    SELECT session_id, any_value(channel_id) AS channel_id, count(*) AS connections,
        min(score) AS worst_score, round(median(score), 3) AS median_score,
        arg_min(connection_id, score) AS worst_connection_id, min(first_seen) AS first_seen,
        max(last_seen) AS last_seen
    FROM q GROUP BY session_id
),
h AS (
    SELECT session_id, any_value(channel_id) AS channel_id,
        min(coalesce(created_at, time)) AS created_at, max(destroyed_at) AS destroyed_at,
        max(total_connections) AS total_connections, max(time) AS last_event
    FROM ({_SESSION_LIFE}) WHERE session_id IS NOT NULL{channel_where} GROUP BY session_id
)
SELECT coalesce(h.session_id, qs.session_id) AS session_id,
    coalesce(h.channel_id, qs.channel_id) AS channel_id,
    coalesce(h.created_at, qs.first_seen) AS started, h.destroyed_at AS ended,
    greatest(h.last_event, qs.last_seen) AS last_seen,
    coalesce(qs.connections, 0) AS connections, h.total_connections,
    qs.worst_score, qs.median_score, qs.worst_connection_id
FROM h FULL JOIN qs ON h.session_id = qs.session_id
WHERE qs.session_id IS NOT NULL
    OR (h.created_at < {timestamp(r.end)}
        AND coalesce(h.destroyed_at, {timestamp(now)}) >= {timestamp(r.start)})
ORDER BY started DESC NULLS LAST, session_id LIMIT {int(limit)}
"""


def _counter_rates(
    table: str, keys: Sequence[str], counters: Sequence[str], gauges: Sequence[str],
    r: TimeRange, lookback: int,
) -> str:  # fmt: skip
    """Per series (``keys``) and poll: each counter's rate per second since the previous
    poll (a reset takes the new value), and the gauges as they are."""
    partition = ", ".join(keys)
    lagged = ", ".join(f"lag({c}) OVER w AS prev_{c}" for c in counters)
    rates = ", ".join(f"{_delta(c)} / interval_s AS {c}_per_s" for c in counters)
    since = timestamp(_back(r.start, lookback))
    gauge_list = "".join(f", {g}" for g in gauges)
    return f"""
SELECT {partition}, time, interval_s{gauge_list}, {rates} FROM (
    SELECT *, epoch(time) - epoch(prev_time) AS interval_s FROM (
        SELECT {partition}, time{gauge_list}, {", ".join(counters)},
            lag(time) OVER w AS prev_time, {lagged}
        FROM {table} WHERE time >= {since} AND time < {timestamp(r.end)}
        WINDOW w AS (PARTITION BY {partition} ORDER BY time)
    )
) WHERE {r.where()} AND prev_time IS NOT NULL AND interval_s > 0
"""


def sora_nodes_sql(r: TimeRange, bucket: int) -> str:
    """Sora's own counters per node and bucket (``sora_stats_report``, what the API poller
    stores): ongoing connections, connections created, destroyed and failed per minute
    (from the counters' increases between polls), the Erlang VM's memory (MiB) and its
    run queues."""
    rates = _counter_rates(
        "sora_stats_report", ["node"],
        ["total_connection_created", "total_connection_destroyed", "total_failed_connections"],
        ["total_ongoing_connections", "memory_total", "total_run_queue_lengths"],
        r, lookback=3_600,
    )  # fmt: skip
    return f"""
SELECT node, {_bucket(bucket)} AS time,
    avg(total_ongoing_connections) AS ongoing_connections,
    60 * {_weighted("total_connection_created_per_s")} AS created_per_min,
    60 * {_weighted("total_connection_destroyed_per_s")} AS destroyed_per_min,
    60 * {_weighted("total_failed_connections_per_s")} AS failed_per_min,
    avg(memory_total) / 1048576 AS memory_mib,
    avg(total_run_queue_lengths) AS run_queue
FROM ({rates})
GROUP BY ALL ORDER BY node, time
"""


def sora_traffic_sql(r: TimeRange, bucket: int) -> str:
    """Media through each Sora node per bucket (``sora_connection_counters``): the bits
    per second its connections received and sent (each connection's mean rate between
    polls in the bucket, summed over connections), and how many connections reported."""
    rates = _counter_rates(
        "sora_connection_counters", ["node", "connection_id"],
        ["received_bytes", "sent_bytes"], [], r, lookback=600,
    )  # fmt: skip
    return f"""
SELECT node, time, sum(received_bps) AS received_bps, sum(sent_bps) AS sent_bps,
    count(*) AS connections
FROM (
    SELECT node, connection_id, {_bucket(bucket)} AS time,
        8 * {_weighted("received_bytes_per_s")} AS received_bps,
        8 * {_weighted("sent_bytes_per_s")} AS sent_bps
    FROM ({rates}) GROUP BY ALL
)
GROUP BY ALL ORDER BY node, time
"""


# -- a session ------------------------------------------------------------------------------


def session_sql(session_id: str) -> str:
    """One row: the session's channel, when it was created and destroyed (webhooks), and
    when its connections first and last reported."""
    key = quote(session_id)
    return f"""
WITH h AS (
    SELECT any_value(channel_id) AS channel_id, min(coalesce(created_at, time)) AS created_at,
        max(destroyed_at) AS destroyed_at, max(total_connections) AS total_connections,
        max(max_connections) AS max_connections, max(time) AS last_event
    FROM ({_SESSION_LIFE}) WHERE session_id = {key}
), s AS (
    SELECT any_value(channel_id) AS channel_id, min(time) AS first_seen,
        max(last_time) AS last_seen, count(DISTINCT connection_id) AS connections
    FROM ({_REPORTED}) WHERE session_id = {key}
)
SELECT {key} AS session_id, coalesce(h.channel_id, s.channel_id) AS channel_id,
    h.created_at, h.destroyed_at, h.total_connections, h.max_connections, h.last_event,
    s.first_seen, s.last_seen, s.connections
FROM h, s
"""


def _participants(where: str) -> str:
    """Per connection matching ``where``: who, when it joined and left, and why."""
    return f"""
WITH st AS (
    SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
        any_value(client_id) AS client_id, any_value(role) AS role, min(time) AS first_seen,
        max(last_time) AS last_seen
    FROM ({_REPORTED}) WHERE {where} GROUP BY connection_id
), log AS (
    SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
        any_value(client_id) AS client_id, any_value(role) AS role,
        min(created_at) AS created_at, max(destroyed_at) AS destroyed_at,
        any_value(reason) AS reason
    FROM (SELECT connection_id, channel_id, session_id, client_id, role, created_at,
            destroyed_at, reason FROM connections
        UNION ALL BY NAME SELECT * FROM ({_LIVEKIT_PARTICIPANTS}))
    WHERE {where} GROUP BY connection_id
), ev AS (
    SELECT connection_id, any_value(channel_id) AS channel_id, any_value(session_id) AS session_id,
        any_value(client_id) AS client_id,
        min(time) FILTER (WHERE event = 'connection.created') AS created_at,
        max(time) FILTER (WHERE event = 'connection.destroyed') AS destroyed_at
    FROM sora_events WHERE {where} AND connection_id IS NOT NULL
        AND event IN ('connection.created', 'connection.destroyed')
    GROUP BY connection_id
)
SELECT coalesce(st.connection_id, log.connection_id, ev.connection_id) AS connection_id,
    coalesce(st.channel_id, log.channel_id, ev.channel_id) AS channel_id,
    coalesce(st.session_id, log.session_id, ev.session_id) AS session_id,
    coalesce(log.client_id, ev.client_id, st.client_id) AS client_id,
    coalesce(log.role, st.role) AS role,
    coalesce(log.created_at, ev.created_at, st.first_seen) AS joined,
    coalesce(log.destroyed_at, ev.destroyed_at) AS left_at,
    log.reason, st.first_seen, st.last_seen
FROM st
FULL JOIN log ON log.connection_id = st.connection_id
FULL JOIN ev ON ev.connection_id = coalesce(st.connection_id, log.connection_id)
"""


def session_participants_sql(session_id: str) -> str:
    """The session's connections in the order they joined: client, role, joined (the
    connection log, else the event webhook, else the first report), left (the log or
    ``connection.destroyed``; NULL while connected), reason, first and last report, and
    their average scores over the whole session."""
    key = quote(session_id)
    return f"""
WITH p AS ({_participants(f"session_id = {key}")}),
q AS (
    SELECT connection_id, round(avg(score), 3) AS score, min(score) AS worst_score,
        round(avg(mos_audio), 3) AS mos_audio, round(avg(video_score), 3) AS video_score
    FROM connection_quality WHERE session_id = {key} GROUP BY connection_id
)
SELECT p.*, q.score, q.worst_score, q.mos_audio, q.video_score
FROM p LEFT JOIN q ON q.connection_id = p.connection_id
ORDER BY p.joined NULLS LAST, p.connection_id
"""


def scores_sql(r: TimeRange, bucket: int, *, session_id: str | None = None,
               connection_id: str | None = None) -> str:  # fmt: skip
    """Per connection and bucket: the time-weighted mean of each score of
    ``connection_quality``, and the lowest score, for one session or one connection."""
    where = r.where()
    if session_id is not None:
        where += f" AND session_id = {quote(session_id)}"
    if connection_id is not None:
        where += f" AND connection_id = {quote(connection_id)}"
    means = ", ".join(f"{_weighted(s)} AS {s}" for s in SCORES)
    return f"""
SELECT connection_id, {_bucket(bucket)} AS time, {means}, min(score) AS min_score
FROM connection_quality WHERE {where}
GROUP BY ALL ORDER BY connection_id, time
"""


# -- a connection ---------------------------------------------------------------------------


def connection_sql(connection_id: str) -> str:
    """One row (empty if nothing is known of it): the connection's channel, session,
    client, role, joined and left times, reason, first and last report, the Sora node,
    its reports and the transport of its last one."""
    key = quote(connection_id)
    return f"""
WITH p AS ({_participants(f"connection_id = {key}")}),
extra AS (
    SELECT any_value(node_name) AS node_name, sum(reports)::BIGINT AS reports
    FROM connection_spans WHERE connection_id = {key}
),
q AS (
    SELECT round(avg(score), 3) AS score, min(score) AS worst_score,
        round(avg(mos_audio), 3) AS mos_audio, round(avg(video_score), 3) AS video_score
    FROM connection_quality WHERE connection_id = {key}
)
SELECT p.*, extra.node_name, extra.reports, q.score, q.worst_score, q.mos_audio,
    q.video_score
FROM p, extra, q
"""


def connection_streams_sql(connection_id: str) -> str:
    """The connection's streams and candidate pairs (``rtc_rates``'s, so seen from their
    second sample): type, media kind, and for a received stream the sending connection
    (from ``trackIdentifier``, ``<connection_id>-audio``) and its client when a log
    names it."""
    key = quote(connection_id)
    return f"""
WITH streams AS (
    SELECT stats_id, any_value(stats_type) AS stats_type, any_value(media_kind) AS media_kind,
        any_value(track_identifier) AS track_identifier, min(time) AS first_seen,
        max(time) AS last_seen
    FROM {_RATES}
    WHERE connection_id = {key}
        AND stats_type IN ('inbound-rtp', 'outbound-rtp', 'remote-inbound-rtp', 'candidate-pair')
    GROUP BY stats_id
), clients AS (
    SELECT connection_id, any_value(client_id) AS client_id FROM (
        SELECT connection_id, client_id FROM connections
        UNION ALL SELECT connection_id, client_id FROM sora_events
    ) WHERE client_id IS NOT NULL GROUP BY connection_id
)
SELECT s.stats_id, s.stats_type, s.media_kind, s.first_seen, s.last_seen,
    CASE WHEN s.stats_type = 'inbound-rtp' AND s.track_identifier LIKE '%-%'
        THEN regexp_replace(s.track_identifier, '-[^-]*$', '') END AS peer_connection_id,
    c.client_id AS peer_client_id
FROM streams s LEFT JOIN clients c ON s.stats_type = 'inbound-rtp'
    AND c.connection_id = regexp_replace(s.track_identifier, '-[^-]*$', '')
ORDER BY s.stats_type, s.media_kind, s.stats_id
"""


def connection_rates_sql(connection_id: str, r: TimeRange, bucket: int) -> str:
    """Per stream (``stats_type``, ``stats_id``, ``media_kind``) and bucket: the
    time-weighted mean of each of :data:`RATE_METRICS` over the ``rtc_rates`` intervals
    ending in the bucket, and the last quality-limitation reason. Long format; wrap in
    :func:`series_lists` for one row per stream."""
    means = ",\n    ".join(f"{_weighted(m)} AS {m}" for m in RATE_METRICS)
    return f"""
SELECT stats_type, stats_id, media_kind, {_bucket(bucket)} AS time,
    {means},
    arg_max(quality_limitation_reason, time) AS quality_limitation_reason
FROM {_RATES}
WHERE connection_id = {quote(connection_id)} AND {r.where()}
GROUP BY ALL
"""


# -- tables ---------------------------------------------------------------------------------


def table_counts_sql(tables: Sequence[str], r: TimeRange) -> str:
    """Per table: its rows whose ``time`` is in the range, and its latest ``time``."""
    parts = [
        f"SELECT {quote(name)} AS name, count(*) FILTER (WHERE {r.where()}) AS rows,"
        f" max(time) AS latest FROM {identifier(name)}"
        for name in tables
    ]
    return " UNION ALL ".join(parts) + " ORDER BY name"


def table_rows_sql(name: str, r: TimeRange | None, limit: int = 100) -> str:
    """The latest ``limit`` rows of a table or view in the range (``r`` None: a view
    without a ``time`` column, any rows)."""
    if r is None:
        return f"SELECT * FROM {identifier(name)} LIMIT {int(limit)}"
    return (
        f"SELECT * FROM {identifier(name)} WHERE {r.where()} ORDER BY time DESC LIMIT {int(limit)}"
    )
