"""What Sora's ``rtc_stats`` is turned into, as it is stored: ``rtc_rates``, rates from
the counters of consecutive samples (:class:`RatesDerivation`, formulas in :mod:`.rates`),
and ``connection_reports``, one row per connection and report with its quality scores and
selected candidate pair (:class:`ReportsDerivation`, :mod:`.reports`); and the views over
them: quality scores (``connection_quality``, ``session_quality``) and the selected
transport (``connection_transport``). Column by column in docs/METRICS.md; formulas,
constants and their sources in docs/QUALITY.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from rtclake.derive import Derivation
from rtclake.integrations.sora import rates, reports, spans
from rtclake.tables import Column, FieldKind, Rollup, Table, View

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
    (
        "track_identifier",
        "the stream's trackIdentifier (Sora's received streams: <sending connection>-<kind>)",
    ),
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


#: The derived tables' rows are sorted by connection within a file, in row groups of this
#: many rows, so a connection's page or diagnosis reads its own few groups of each file
#: (docs/BENCHMARKS.md, "The derived tables sorted by connection").
CLUSTERED_ROW_GROUP = 8192

_KINDS: dict[str, FieldKind] = {
    "channel_id": "id", "session_id": "id", "connection_id": "id", "stats_id": "id",
    "stats_type": "string", "media_kind": "string", "quality_limitation_reason": "string",
    "track_identifier": "string",
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
    # The same samples come twice (a re-upload, overlapping rotated copies, two imports,
    # a log tailed and imported from S3), and each derivation that reads them rates them
    # again: which samples were stored before, neither an import's state nor the writer's
    # knows. A rate's record id is its stream and time, so the lake's repeat check keeps
    # it once.
    derived_again=True,
    cluster_by=("connection_id", "time"),
    row_group_rows=CLUSTERED_ROW_GROUP,
)


class RatesDerivation(Derivation):
    """``rtc_rates`` from each batch of ``rtc_stats`` (:mod:`.rates`); the state is the
    last sample of every stream, so the first sample of a batch has its predecessor."""

    name = "rtc_rates"
    sources = ("rtc_stats",)
    outputs = (RTC_RATES,)

    def derive(
        self, tables: Mapping[str, pa.Table], state: pa.Table | None
    ) -> tuple[dict[str, pa.Table], pa.Table | None]:
        computed, kept = rates.derive(rates.samples(tables["rtc_stats"]), state)
        if computed.num_rows == 0:
            return {}, kept
        names = [name for name, _ in RATES_COLUMNS]
        return {
            RTC_RATES.name: rates.stored(computed, RTC_RATES.stored_schema, "rtc_rates", names)
        }, kept


# -- per connection and report: quality and transport -----------------------------------------
_QUALITY_COLUMNS: tuple[tuple[str, str], ...] = (
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
)
_TRANSPORT_COLUMNS: tuple[tuple[str, str], ...] = (
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
    ("pair_rtt_ms", "the selected pair's current_round_trip_time × 1000"),
    ("available_outgoing_bitrate_bps", "the selected pair's available_outgoing_bitrate"),
)
REPORTS_COLUMNS: tuple[tuple[str, str], ...] = (
    *_QUALITY_COLUMNS[:4],
    ("client_id", "Sora client id"),
    ("role", "sendrecv, sendonly or recvonly"),
    ("node_name", "the Sora node"),
    ("part", "0; n when the report's objects came in n + 1 batches (the highest is whole)"),
    ("has_video", "the report has a video inbound-rtp or outbound-rtp"),
    *_QUALITY_COLUMNS[4:],
    *_TRANSPORT_COLUMNS,
)
_REPORT_KINDS: dict[str, FieldKind] = {
    "channel_id": "id", "session_id": "id", "connection_id": "id", "client_id": "id",
    "role": "string", "node_name": "string", "part": "int",
    "has_video": "bool", "pair_id": "id", "pair_state": "string", "ice_state": "string",
    "dtls_state": "string", "selected_candidate_pair_changes": "int",
    "local_candidate_type": "string", "local_protocol": "string",
    "relay_protocol": "string", "network_type": "string", "remote_candidate_type": "string",
}  # fmt: skip

CONNECTION_REPORTS = Table(
    name="connection_reports",
    kind="connection_reports",
    description=(
        "One row per connection and getStats report of rtc_stats: its quality inputs and"
        " scores (docs/QUALITY.md) and its selected candidate pair. Derived as rtc_stats is"
        " stored, by the writer and by imports; read connection_quality and"
        " connection_transport, which keep the highest part of each report."
    ),
    columns=tuple(
        Column(name, _REPORT_KINDS.get(name, "float"), ()) for name, _ in REPORTS_COLUMNS[1:]
    ),
    identity=("connection_id", "time", "part"),
    unique_rows=True,
    # as rtc_rates: a report read again is derived again (part 0 when older than the
    # reports the state keeps), and the lake's repeat check keeps it once
    derived_again=True,
    statistics=("part",),
    cluster_by=("connection_id", "time", "part"),
    row_group_rows=CLUSTERED_ROW_GROUP,
)


class ReportsDerivation(Derivation):
    """``connection_reports`` from each batch of ``rtc_stats`` and the ``rtc_rates``
    derived from it (:mod:`.reports`); the state is each connection's latest report."""

    name = "connection_reports"
    sources = ("rtc_stats", "rtc_rates")
    outputs = (CONNECTION_REPORTS,)

    def derive(
        self, tables: Mapping[str, pa.Table], state: pa.Table | None
    ) -> tuple[dict[str, pa.Table], pa.Table | None]:
        stats = tables["rtc_stats"]
        fresh = reports.items(stats, tables.get("rtc_rates"))
        computed, kept = reports.derive(fresh, state, reports.last_reports(stats))
        if computed.num_rows == 0:
            return {}, kept
        names = [name for name, _ in REPORTS_COLUMNS]
        schema = CONNECTION_REPORTS.stored_schema
        return {
            CONNECTION_REPORTS.name: rates.stored(computed, schema, "connection_reports", names)
        }, kept


# -- per connection and stretch of reports: who was active when ------------------------------
SPANS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "the stretch's first report"),
    ("channel_id", "Sora channel"),
    ("session_id", "Sora session"),
    ("connection_id", "Sora connection"),
    ("client_id", "Sora client id"),
    ("role", "sendrecv, sendonly or recvonly"),
    ("node_name", "the Sora node"),
    ("last_time", "the stretch's last report"),
    ("reports", "its reports"),
    (
        "opens",
        "the first report of the connection, or its first after a silence of more than"
        f" {spans.GAP_SECONDS} s; false: the stretch continues the connection's previous row",
    ),
    (
        "starts",
        "the connection's first report (the row that opens its first span); NULL in rows"
        " stored before the column existed",
    ),
)
_SPAN_KINDS: dict[str, FieldKind] = {
    "channel_id": "id", "session_id": "id", "connection_id": "id", "client_id": "id",
    "role": "string", "node_name": "string", "last_time": "time", "reports": "int",
    "opens": "bool", "starts": "bool",
}  # fmt: skip

CONNECTION_SPANS = Table(
    name="connection_spans",
    kind="connection_spans",
    description=(
        "Per connection, a stretch of its reports (connection_reports) without a silence"
        f" of more than {spans.GAP_SECONDS} s: its first and last report. One row per"
        " connection and stored batch; maintenance folds a day that is over into one row"
        " per span. A connection reported in a window of at least"
        f" {spans.GAP_SECONDS} s when a row overlaps it (time <= end AND last_time >= start)."
    ),
    columns=tuple(Column(name, _SPAN_KINDS[name], ()) for name, _ in SPANS_COLUMNS[1:]),
    identity=("connection_id", "time"),
    unique_rows=True,
    # a stretch derived again from lines read twice (a second import, a log tailed and
    # imported) that begins at the same report is the row stored already
    derived_again=True,
    cluster_by=("time", "connection_id"),
    rollup=Rollup(spans.ROLLUP_SQL, keeps="reports", fold=spans.fold, continues=spans.continues),
)


class SpansDerivation(Derivation):
    """``connection_spans`` from each batch's ``connection_reports`` (:mod:`.spans`); the
    state is every connection's last report time."""

    name = "connection_spans"
    sources = ("connection_reports",)
    outputs = (CONNECTION_SPANS,)

    def derive(
        self, tables: Mapping[str, pa.Table], state: pa.Table | None
    ) -> tuple[dict[str, pa.Table], pa.Table | None]:
        computed, kept = spans.derive(tables["connection_reports"], state)
        if computed.num_rows == 0:
            return {}, kept
        names = [name for name, _ in SPANS_COLUMNS]
        schema = CONNECTION_SPANS.stored_schema
        return {
            CONNECTION_SPANS.name: rates.stored(computed, schema, "connection_spans", names)
        }, kept


# A report's highest part: the lower ones (the same report, fewer of its objects) hidden.
# Continuations are rare, and "part" has min/max statistics, so the right side reads
# almost nothing.
LATEST_REPORTS_SQL = """
SELECT r.* FROM connection_reports r
ANTI JOIN (SELECT connection_id, time, part FROM connection_reports WHERE part > 0) c
    ON c.connection_id = r.connection_id AND c.time = r.time AND c.part > r.part
"""

CONNECTION_QUALITY = View(
    name="connection_quality",
    sql=(
        f"SELECT {', '.join(name for name, _ in _QUALITY_COLUMNS)}"
        f" FROM ({LATEST_REPORTS_SQL}) WHERE interval_s IS NOT NULL"
    ),
    description=(
        "Per connection and getStats report with rates: the audio MOS of ITU-T G.107's"
        " E-model and a 1-5 video score, from rtc_rates (docs/QUALITY.md)."
    ),
    columns=_QUALITY_COLUMNS,
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
    sql=(
        "SELECT time, channel_id, session_id, connection_id, "
        + ", ".join(name for name, _ in _TRANSPORT_COLUMNS[:-2])
        + ", pair_rtt_ms AS rtt_ms, available_outgoing_bitrate_bps"
        + f" FROM ({LATEST_REPORTS_SQL}) WHERE pair_id IS NOT NULL"
    ),
    description=(
        "Per connection and report: the selected candidate pair (the transport's, else the"
        " nominated succeeded pair), its candidates' types and the ICE and DTLS states."
    ),
    columns=(
        *_QUALITY_COLUMNS[:4],
        *_TRANSPORT_COLUMNS[:-2],
        ("rtt_ms", "the pair's current_round_trip_time × 1000"),
        ("available_outgoing_bitrate_bps", "the pair's available_outgoing_bitrate"),
    ),
)

VIEWS = (CONNECTION_QUALITY, SESSION_QUALITY, CONNECTION_TRANSPORT)
