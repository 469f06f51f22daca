"""``connection_reports`` computed from a batch of ``rtc_stats`` and its ``rtc_rates``: one
row per connection and getStats report, with the report's quality inputs, its scores
(docs/QUALITY.md) and its selected candidate pair.

A dashboard asks per connection and report far more often than per stream: how many
connections are active, when each started, its score, whether it goes through TURN. At
17 RTCStats objects a report, answering from ``rtc_stats`` reads 17 rows (and hides
repeated ones with a window over the whole table) for each answer row; this table holds
the answer row itself.

A report's objects are written together, but a batch can end between two of them. The
state keeps the objects (as :data:`ITEM_COLUMNS`) of every connection's latest report, and
of the report of its last object in the batch when that is older (the batch's lines came
out of order); when a later batch brings more objects of such a report, the report is
computed again from all of them and stored with ``part`` one higher. The views read a
report's highest part only (``LATEST_REPORTS_SQL``): a continuation is rare (at most one
report per connection and batch boundary), so the anti-join that hides the lower parts
reads almost nothing.

Objects the state holds already (lines read twice: overlapping rotated copies, an upload
repeated) are left out, so they add no part. A report older than the ones the state keeps
is stored as it comes, part 0: the state cannot tell a report never seen (a rotated copy
or an upload read after newer lines) from one stored before, and the record id of a
report is its connection, time and part, so the lake's repeat check stores a report
read again once.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from rtclake.integrations.sora.rates import aligned, rows_at, rows_where

Floats = npt.NDArray[np.float64]

# docs/QUALITY.md gives each formula, its constants and their sources.
R_DEFAULT = 93.2  # G.107's R0 - Is with every default parameter
OPUS_FRAME_MS = 20.0  # packetisation: WebRTC's Opus frames
OPUS_BPL = 20.0  # loss robustness with in-band FEC (WebRTC's default useinbandfec=1)
OPUS_DTX_IE = 8.0  # Ie while DTX sends almost nothing (silence)
FULL_PIXELS, LOW_PIXELS = 1280 * 720, 320 * 180  # video: full marks, the floor
FULL_FPS, LOW_FPS = 24.0, 5.0

KEYS = ("connection_id", "time")
# what a report is made of: one row per RTCStats object, its envelope, the fields that
# pick the selected candidate pair, and the object's rates (rtc_rates) when it has some
_STATS_FIELDS = (
    "channel_id", "session_id", "connection_id", "client_id", "role", "node_name",
    "stats_type", "stats_id", "media_kind", "selected_candidate_pair_id",
    "selected_candidate_pair_changes", "ice_state", "dtls_state", "local_candidate_id",
    "remote_candidate_id", "state", "nominated", "current_round_trip_time",
    "available_outgoing_bitrate", "candidate_type", "protocol", "relay_protocol",
    "network_type", "received_at", "source", "stream",
)  # fmt: skip
_RATE_FIELDS = (
    "interval_s", "rtt_ms", "jitter_ms", "jitter_buffer_ms", "loss_pct", "bitrate_bps",
    "fps", "frame_width", "frame_height", "freezes_per_min",
)  # fmt: skip
ITEM_COLUMNS = ("time", *_STATS_FIELDS, *_RATE_FIELDS, "is_rate", "part")
# a connection silent this long before the newest report is dropped from the state
HORIZON_US = 6 * 3600 * 1_000_000
_MEDIA = ("inbound-rtp", "outbound-rtp")
# the objects a report's row reads besides its rates: the selected pair's, and the
# peer-connection object every report has, for the envelope (client, role, node)
_OBJECT_TYPES = ("transport", "candidate-pair", "local-candidate", "remote-candidate",
                 "peer-connection")  # fmt: skip
_SHARED = ("channel_id", "session_id", "connection_id", "stats_type", "stats_id", "media_kind",
           "received_at", "source", "stream")  # fmt: skip


def items(stats: pa.Table, rates: pa.Table | None) -> pa.Table:
    """A batch's report items: its ``rtc_stats`` objects (their envelope and the fields
    that pick the selected pair), then its ``rtc_rates`` rows (``is_rate``), each with
    NULL in the other's columns. Concatenated, not joined: a report's aggregates read
    the rates from the one and the transport from the other."""
    stats = stats.select(["rtc_timestamp", *_STATS_FIELDS])
    stats = rows_where(stats, pc.is_in(stats["stats_type"], pa.array(_OBJECT_TYPES)))
    n = stats.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {"time": stats["rtc_timestamp"]}
    columns |= {name: stats[name] for name in _STATS_FIELDS}
    columns |= {name: pa.nulls(n, _rate_type(name)) for name in _RATE_FIELDS}
    columns |= {"is_rate": pa.array(np.zeros(n, dtype=bool)), "part": pa.nulls(n, pa.int64())}
    table = pa.table(columns)
    if rates is not None and rates.num_rows:
        m = rates.num_rows
        more: dict[str, pa.Array | pa.ChunkedArray] = {"time": rates["time"]}
        for name in _STATS_FIELDS:
            more[name] = rates[name] if name in _SHARED else pa.nulls(m, table[name].type)
        more |= {name: pc.cast(rates[name], _rate_type(name)) for name in _RATE_FIELDS}
        more |= {"is_rate": pa.array(np.ones(m, dtype=bool)), "part": pa.nulls(m, pa.int64())}
        table = pa.concat_tables([table, pa.table(more).cast(table.schema)])
    if table["connection_id"].null_count or table["time"].null_count:
        table = rows_where(
            table, pc.and_(pc.is_valid(table["connection_id"]), pc.is_valid(table["time"]))
        )
    return table


def _rate_type(name: str) -> pa.DataType:
    return pa.int64() if name.startswith("frame_") else pa.float64()


def _keys(
    table: pa.Table,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each row's connection as an integer, its time in microseconds, and its report
    (connection and time) as an integer."""
    conn = pc.dictionary_encode(table["connection_id"].combine_chunks())
    codes = np.asarray(conn.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    ts = np.asarray(pc.cast(table["time"], pa.int64()).to_numpy(zero_copy_only=False), np.int64)
    times, ts_codes = np.unique(ts, return_inverse=True)
    return codes, ts, codes * (len(times) + 1) + ts_codes.astype(np.int64)


def last_reports(stats: pa.Table) -> pa.Table:
    """Each connection's report (``connection_id``, ``time``) of its last object in a batch
    of ``rtc_stats`` rows: the report the next batch may continue."""
    rows = stats.select(["connection_id", "rtc_timestamp"])
    if rows["connection_id"].null_count or rows["rtc_timestamp"].null_count:
        rows = rows.drop_null()  # (rows without them make no report)
    # without threads, the groups keep the rows' order: "last" is the batch's last row
    last = rows.group_by("connection_id", use_threads=False).aggregate([("rtc_timestamp", "last")])
    return last.select(["connection_id", "rtc_timestamp_last"]).rename_columns(list(KEYS))


def derive(
    fresh: pa.Table, state: pa.Table | None, last: pa.Table | None = None
) -> tuple[pa.Table, pa.Table]:
    """The reports of ``fresh`` items (:func:`items`), with the objects of the same
    reports kept in ``state``, and the new state: every connection's latest report, and
    the report of its last object in the batch (``last``: :func:`last_reports`) when that
    is older."""
    old = fresh.slice(0, 0)
    if state is not None and state.num_rows:
        old = aligned(state, fresh.schema, fresh.schema.names)
    if fresh.num_rows == 0:
        return pa.table({}), old
    both = pa.concat_tables([fresh, old])
    n, m = fresh.num_rows, both.num_rows
    keys = both.select(list(KEYS))
    if last is not None:
        keys = pa.concat_tables([keys, last.select(list(KEYS)).cast(keys.schema)])
    codes, ts, report = _keys(keys)
    _, slot = np.unique(report, return_inverse=True)  # each row's report, numbered
    size = int(slot.max()) + 1
    continued = _marks(size, slot[m:])[slot[:m]]  # the reports of the batch's last objects
    codes, ts, slot = codes[:m], ts[:m], slot[:m]
    seen = _seen(both, n, slot, size)
    if seen.any():  # lines read again: the state's objects are those
        both, n = rows_where(both, ~seen), n - int(seen.sum())
        if n == 0:
            return pa.table({}), old
        codes, ts, slot, continued = codes[~seen], ts[~seen], slot[~seen], continued[~seen]
    # the reports this batch touches: its own objects, and the kept ones of the same reports
    chosen = np.concatenate([np.ones(n, dtype=bool), _marks(size, slot[:n])[slot[n:]]])
    # a report's part: 0, or one more than the part stored from the state's objects
    kept_part = np.full(size, -1, dtype=np.int64)
    part_values = pc.fill_null(both["part"], -1).to_numpy(zero_copy_only=False)
    np.maximum.at(kept_part, slot, np.asarray(part_values, dtype=np.int64))
    part = kept_part[slot] + 1  # -1 (no stored part) gives 0
    old_part = np.asarray(part_values, dtype=np.int64)
    both = both.set_column(both.schema.get_field_index("part"), "part",
                           pa.array(np.where(chosen, part, old_part), pa.int64()))  # fmt: skip
    tail = rows_where(both.slice(n), chosen[n:])  # the batch's items are taken as they are
    reports = _reports(pa.concat_tables([both.slice(0, n), tail]))

    # the new state: each connection's latest report, and the report of its last object
    # in the batch (the one the next batch may continue: older when the lines came out of
    # order), their objects marked with the part stored for them
    latest = np.full(int(codes.max(initial=0)) + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, codes, ts)
    keep = ((ts == latest[codes]) | continued) & (ts >= ts.max() - HORIZON_US)
    return reports, rows_where(both, keep)


def _marks(size: int, at: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """``size`` flags, set at ``at``."""
    marks = np.zeros(size, dtype=bool)
    marks[at] = True
    return marks


def _seen(both: pa.Table, n: int, slot: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.bool_]:
    """Which of ``both``'s rows are fresh items (the first ``n``) that the state's (the
    rest) holds already: the same report (``slot``, of ``size``), stats id and kind."""
    seen = np.zeros(len(slot), dtype=bool)
    known = np.flatnonzero(_marks(size, slot[n:])[slot[:n]])
    if not len(known):  # (usually only a report continued from the state has any)
        return seen
    rows = np.concatenate([known, n + np.flatnonzero(_marks(size, slot[known])[slot[n:]])])
    taken = rows_at(both.select(["stats_id", "is_rate"]), rows)
    ids = pc.dictionary_encode(taken["stats_id"].combine_chunks())
    id_codes = np.asarray(pc.fill_null(ids.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    is_rate = np.asarray(pc.fill_null(taken["is_rate"], False).to_numpy(zero_copy_only=False))
    item = (slot[rows] * (len(ids.dictionary) + 1) + id_codes + 1) * 2 + is_rate
    seen[known] = np.isin(item[: len(known)], item[len(known) :])
    return seen


def _masked(table: pa.Table, name: str, mask: pa.Array) -> pa.Array:
    return pc.if_else(mask, table[name], pa.scalar(None, table.schema.field(name).type))


def _reports(objects: pa.Table) -> pa.Table:
    """One row per report (connection and time) of ``objects``, all of whose objects are
    there."""
    kind, media = objects["stats_type"], objects["media_kind"]
    audio = pc.fill_null(pc.equal(media, "audio"), False)
    video = pc.fill_null(pc.equal(media, "video"), False)
    rtp = pc.is_in(kind, pa.array(_MEDIA))
    pixels = pc.multiply(
        pc.cast(objects["frame_width"], pa.float64()),
        pc.cast(objects["frame_height"], pa.float64()),
    )
    sized = pc.and_(video, pc.greater(pixels, 0.0))
    work = pa.table({
        "connection_id": objects["connection_id"],
        "time": objects["time"],
        "channel_id": objects["channel_id"],
        "session_id": objects["session_id"],
        "client_id": objects["client_id"],
        "role": objects["role"],
        "node_name": objects["node_name"],
        "stats_id": objects["stats_id"],
        "received_at": objects["received_at"],
        "source": objects["source"],
        "stream": objects["stream"],
        "part": objects["part"],
        "interval_s": objects["interval_s"],
        "rtt_ms": objects["rtt_ms"],
        "audio_jitter_ms": _masked(objects, "jitter_ms", audio),
        "audio_jitter_buffer_ms": _masked(objects, "jitter_buffer_ms", audio),
        "audio_loss_pct": _masked(objects, "loss_pct", audio),
        "audio_bitrate_bps": _masked(objects, "bitrate_bps", pc.and_(audio, rtp)),
        "has_video": pc.and_(video, rtp),
        "video_loss_pct": _masked(objects, "loss_pct", video),
        "video_pixels": pc.if_else(sized, pixels, pa.scalar(None, pa.float64())),
        "video_fps": _masked(objects, "fps", video),
        "video_freezes_per_min": _masked(objects, "freezes_per_min", video),
    })  # fmt: skip
    first = ("channel_id", "session_id", "client_id", "role", "node_name", "source", "stream")
    maxed = ("interval_s", "rtt_ms", "audio_jitter_ms", "audio_jitter_buffer_ms",
             "audio_loss_pct", "audio_bitrate_bps", "video_loss_pct", "video_freezes_per_min",
             "part", "received_at")  # fmt: skip
    minned = ("video_pixels", "video_fps")
    grouped = work.group_by(list(KEYS), use_threads=False).aggregate(
        [(name, "first") for name in first]
        + [(name, "max") for name in maxed]
        + [(name, "min") for name in minned]
        + [("has_video", "any")]
    )
    renamed = {f"{name}_{how}": name for how, names in
               (("first", first), ("max", maxed), ("min", minned)) for name in names}  # fmt: skip
    renamed |= {"has_video_any": "has_video"}
    grouped = grouped.rename_columns([renamed.get(n, n) for n in grouped.column_names])
    grouped = _scores(grouped)
    return _with_transport(grouped, objects)


def _floats(column: pa.ChunkedArray | pa.Array) -> Floats:
    values = pc.cast(column, pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _first(*arrays: Floats) -> Floats:
    out = arrays[0].copy()
    for more in arrays[1:]:
        out = np.where(np.isnan(out), more, out)
    return out


def _clip01(values: Floats) -> Floats:
    """``greatest(0, least(1, v))`` as SQL computes it: a NULL operand is ignored, so a
    missing value gives 1."""
    return np.where(np.isnan(values), 1.0, np.clip(values, 0.0, 1.0))


def _arrow(values: Floats) -> pa.Array:
    return pa.array(values, pa.float64(), from_pandas=True)  # NaN -> NULL


def mos_audio(
    rtt_ms: Floats, jitter_buffer_ms: Floats, jitter_ms: Floats, loss_pct: Floats,
    bitrate_bps: Floats,
) -> tuple[Floats, Floats, Floats]:  # fmt: skip
    """The one-way delay (ms), R and the MOS of ITU-T G.107's E-model with Opus's figures
    (docs/QUALITY.md); NaN marks a missing input."""
    zero = np.zeros(len(rtt_ms))
    delay = _first(rtt_ms, zero) / 2 + _first(jitter_buffer_ms, 2 * jitter_ms, zero) + OPUS_FRAME_MS
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log2(delay / 100)
        idd = np.where(
            delay <= 100,
            0.0,
            25 * (np.power(1 + x**6, 1 / 6) - 3 * np.power(1 + (x / 3) ** 6, 1 / 6) + 2),
        )
        ie = np.where(
            np.isnan(bitrate_bps) | (bitrate_bps < 6000),
            OPUS_DTX_IE,
            np.clip(55 - 4.6 * np.log(bitrate_bps), 0, 30),
        )
    ppl = _first(loss_pct, zero)
    r = R_DEFAULT - idd - (ie + (95 - ie) * ppl / (ppl + OPUS_BPL))
    mos = np.where(
        r < 0, 1.0, np.where(r > 100, 4.5, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)
    )
    return delay, np.maximum(r, 0.0), mos


def video_score(pixels: Floats, fps: Floats, freezes_per_min: Floats, loss_pct: Floats) -> Floats:
    """The 1-5 video score of docs/QUALITY.md from resolution, frame rate, freezes and
    loss; NaN marks a missing input (a missing resolution or frame rate scores lowest)."""
    zero = np.zeros(len(pixels))
    with np.errstate(divide="ignore", invalid="ignore"):
        span = np.log2(FULL_PIXELS) - np.log2(LOW_PIXELS)
        resolution = _clip01((np.log2(FULL_PIXELS) - np.log2(pixels)) / span)
    rate = _clip01((FULL_FPS - fps) / (FULL_FPS - LOW_FPS))
    freezes = np.minimum(1.5, 0.5 * _first(freezes_per_min, zero))
    loss = np.minimum(1.5, 0.2 * _first(loss_pct, zero))
    return np.maximum(1.0, 5.0 - 1.5 * resolution - 1.5 * rate - freezes - loss)


def _scores(reports: pa.Table) -> pa.Table:
    """The audio MOS, the video score and the score of each report (NULL when the report
    has no audio, no video, or no rates)."""
    f = {name: _floats(reports[name]) for name in (
        "rtt_ms", "audio_jitter_buffer_ms", "audio_jitter_ms", "audio_loss_pct",
        "audio_bitrate_bps", "video_pixels", "video_fps", "video_freezes_per_min",
        "video_loss_pct")}  # fmt: skip
    delay, r, mos = mos_audio(f["rtt_ms"], f["audio_jitter_buffer_ms"], f["audio_jitter_ms"],
                              f["audio_loss_pct"], f["audio_bitrate_bps"])  # fmt: skip
    has_audio = ~(np.isnan(f["audio_bitrate_bps"]) & np.isnan(f["audio_loss_pct"]))
    has_video = np.asarray(pc.fill_null(reports["has_video"], False).to_numpy(zero_copy_only=False))
    video = video_score(f["video_pixels"], f["video_fps"], f["video_freezes_per_min"],
                        f["video_loss_pct"])  # fmt: skip
    nan = np.full(len(delay), np.nan)
    mos = np.where(has_audio, mos, nan)
    video = np.where(has_video, video, nan)
    score = np.fmin(mos, video)  # the lower; either alone when the other is missing
    for name, values in (("audio_delay_ms", np.where(has_audio, delay, nan)),
                         ("r_factor", np.where(has_audio, r, nan)), ("mos_audio", mos),
                         ("video_score", video), ("score", score)):  # fmt: skip
        reports = reports.append_column(name, _arrow(values))
    return reports


class _Lookup:
    """Rows found by an integer key (sorted once, searched with NumPy)."""

    def __init__(self, keys: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], rows[order]

    def find(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The row of each key (the first with it), -1 where there is none."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.rows[at], -1)


def _take(column: pa.ChunkedArray | pa.Array, rows: npt.NDArray[np.int64]) -> pa.Array:
    """``column``'s values at ``rows``, NULL where a row is -1."""
    if len(column) == 0:
        return pa.nulls(len(rows), column.type)
    return pc.take(column, pa.array(np.maximum(rows, 0), pa.int64(), mask=rows < 0))


def _with_transport(reports: pa.Table, objects: pa.Table) -> pa.Table:
    """Each report with its selected candidate pair: the transport's
    ``selectedCandidatePairId``, else a nominated succeeded pair, else the first pair by
    id; the pair's state and round trip, its candidates' types and protocols, and the
    transport's ICE and DTLS states. Rows are found by integer keys: a report (its
    connection and time) and, within it, an RTCStats id."""
    wanted = ("connection_id", "time", "stats_type", "stats_id", "selected_candidate_pair_id",
              "selected_candidate_pair_changes", "ice_state", "dtls_state", "local_candidate_id",
              "remote_candidate_id", "state", "nominated", "current_round_trip_time",
              "available_outgoing_bitrate", "candidate_type", "protocol", "relay_protocol",
              "network_type")  # fmt: skip
    objects = rows_where(objects.select(list(wanted)), pc.invert(objects["is_rate"]))
    objects = objects.combine_chunks()
    n, m = reports.num_rows, objects.num_rows
    keys = reports.select(list(KEYS))
    _, _, report = _keys(pa.concat_tables([keys, objects.select(list(KEYS)).cast(keys.schema)]))
    of_report, of_object = report[:n], report[n:]
    # one dictionary for the ids an object names: its own, its pair's, its candidates'
    named = ("stats_id", "selected_candidate_pair_id", "local_candidate_id", "remote_candidate_id")
    ids = pc.dictionary_encode(pa.concat_arrays([objects[c].combine_chunks() for c in named]))
    codes = np.asarray(pc.fill_null(ids.indices, -1).to_numpy(zero_copy_only=False), np.int64)
    own, selected_id, local_id, remote_id = (codes[i * m : (i + 1) * m] for i in range(4))
    kind = objects["stats_type"]

    def rows_of(*names: str) -> npt.NDArray[np.int64]:
        return np.flatnonzero(np.asarray(pc.fill_null(pc.is_in(kind, pa.array(names)), False)))

    transports = rows_of("transport")
    transport_of = _Lookup(of_object[transports], transports)
    # the pairs of each report, best first: the transport's choice, then a nominated
    # succeeded pair, then by id
    pairs = rows_of("candidate-pair")
    pair_transport = transport_of.find(of_object[pairs])
    chosen = (pair_transport >= 0) & (own[pairs] == selected_id[np.maximum(pair_transport, 0)])
    nominated = pc.equal(objects["nominated"], True)
    working = np.asarray(
        pc.fill_null(pc.and_(nominated, pc.equal(objects["state"], "succeeded")), False)
    )
    rank = np.where(chosen, 0, np.where(working[pairs], 1, 2))
    ranked = pairs[np.lexsort((own[pairs], rank, of_object[pairs]))]
    pair_row = _Lookup(of_object[ranked], ranked).find(of_report)  # stable: the best one
    # the pair's candidates, by report and id
    width = len(ids.dictionary) + 1
    candidates = rows_of("local-candidate", "remote-candidate")
    candidate_of = _Lookup(of_object[candidates] * width + own[candidates], candidates)

    def candidate(named_id: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if m == 0:
            return np.full(n, -1, dtype=np.int64)
        wanted = named_id[np.maximum(pair_row, 0)]
        found = candidate_of.find(of_report * width + wanted)
        return np.where((pair_row >= 0) & (wanted >= 0), found, -1)

    local, remote, transport = (
        candidate(local_id),
        candidate(remote_id),
        transport_of.find(of_report),
    )
    taken = {
        "selected_candidate_pair_changes": ("selected_candidate_pair_changes", transport),
        "ice_state": ("ice_state", transport),
        "dtls_state": ("dtls_state", transport),
        "pair_id": ("stats_id", pair_row),
        "pair_state": ("state", pair_row),
        "local_candidate_type": ("candidate_type", local),
        "local_protocol": ("protocol", local),
        "relay_protocol": ("relay_protocol", local),
        "network_type": ("network_type", local),
        "remote_candidate_type": ("candidate_type", remote),
        "pair_rtt_ms": ("current_round_trip_time", pair_row),
        "available_outgoing_bitrate_bps": ("available_outgoing_bitrate", pair_row),
    }
    out = reports
    for name, (column, rows) in taken.items():
        out = out.append_column(name, _take(objects[column], rows))
    rtt = pc.multiply(pc.cast(out["pair_rtt_ms"], pa.float64()), 1000.0)
    out = out.set_column(out.schema.get_field_index("pair_rtt_ms"), "pair_rtt_ms", rtt)
    return out
