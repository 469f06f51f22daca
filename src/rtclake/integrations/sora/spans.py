"""``connection_spans`` computed from a batch of ``connection_reports``: per connection,
the stretch of its reports in the batch (first and last report, how many), and whether
that stretch opens a new span of activity (the connection's first report, or its first
after a silence of more than :data:`GAP_SECONDS`), and whether it starts the connection
(its first report).

The overview's questions are about time, not about one connection: which connections
were active in the last two minutes, which started in this minute, which channels and
sessions reported in the range. ``connection_reports`` holds one row per report, stored
sorted by connection (what a connection's page reads), so such a question reads a whole
day of reports. This table holds one row per connection and batch (batches stored
together, an import's group or a writer's, are folded: :func:`fold`); maintenance folds
a day's rows, today's too, into one row per span (:data:`ROLLUP_SQL`), a few thousand
rows a day.

Within one row, and within one span, consecutive reports are at most :data:`GAP_SECONDS`
apart. So a connection reported in a window of at least that length exactly when one of
its rows overlaps the window (``time <= end AND last_time >= start``); it became active in
the window when a row that opens lies in it, and it started in the window when the row
that starts it lies in it.

The state is every connection's last report time. A report not after it (a report's
continuation in a later batch, ``part`` > 0, or a late one) is not counted again. A
connection the state does not know starts: one silent for six hours (:data:`HORIZON_US`)
is forgotten, and starts again when it comes back. An import's state is its run's own:
the lake sink gives an import's rows to :func:`continues`, which reads what the lake
holds of their connections before them, so a day's uploads imported one by one start a
connection once (the writer keeps its state on disk).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rtclake.tables import LakeRows

GAP_SECONDS = 120
"""A silence longer than this ends a span (the dashboard's "active": a report in the last
two minutes)."""
GAP_US = GAP_SECONDS * 1_000_000
# a connection silent this long before the newest report is dropped from the state
HORIZON_US = 6 * 3600 * 1_000_000

_LAST = ("received_at", "source", "stream", "channel_id", "session_id", "client_id", "role",
         "node_name")  # fmt: skip
"""Columns taken from the stretch's last report (``received_at``: the latest)."""

STATE_SCHEMA = pa.schema(
    [pa.field("connection_id", pa.string()), pa.field("last_time", pa.timestamp("us", "UTC"))]
)


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(
        pc.cast(column, pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )


def derive(reports: pa.Table, state: pa.Table | None) -> tuple[pa.Table, pa.Table | None]:
    """The rows of ``connection_spans`` for a batch of ``connection_reports`` rows (their
    stored columns) and the new state."""
    reports = reports.filter(pc.is_valid(reports["connection_id"]))
    if reports.num_rows == 0:
        return pa.table({}), state
    order = pc.sort_indices(
        reports, sort_keys=[("connection_id", "ascending"), ("time", "ascending")]
    )
    reports = reports.take(order)
    # each row's connection's last report before the batch (the state's), if known
    found = np.zeros(reports.num_rows, dtype=bool)
    last = np.zeros(reports.num_rows, dtype=np.int64)
    if state is not None and state.num_rows:
        state = state.cast(STATE_SCHEMA)
        at = pc.index_in(reports["connection_id"], value_set=state["connection_id"])
        found = pc.is_valid(at).to_numpy(zero_copy_only=False)
        last[found] = _micros(state["last_time"])[
            np.asarray(pc.drop_null(at).to_numpy(zero_copy_only=False), dtype=np.int64)
        ]
    # a report not after the state's, or repeated (a report's continuation, part > 0, or a
    # late one), was counted already
    ts = _micros(reports["time"])
    new_id = _starts(reports["connection_id"])
    keep = ~found | (ts > last)
    keep[1:] &= new_id[1:] | (ts[1:] != ts[:-1])
    if not keep.all():
        reports = reports.filter(pa.array(keep))
        if reports.num_rows == 0:
            return pa.table({}), state
        ts, found, last = ts[keep], found[keep], last[keep]
        new_id = _starts(reports["connection_id"])
    ids = reports["connection_id"]
    n = len(ts)
    # the previous report of each row: the row before it, or the state's for a first row
    prev = np.where(new_id, last, np.append(ts[:1], ts[:-1]))
    known = ~new_id | found
    opens = ~known | (ts - prev > GAP_US)
    begins = np.flatnonzero(new_id | opens)
    ends = np.append(begins[1:], n) - 1
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "time": reports["time"].take(pa.array(begins)),
        "connection_id": ids.take(pa.array(begins)),
        "last_time": reports["time"].take(pa.array(ends)),
        "reports": pa.array(ends - begins + 1, pa.int64()),
        "opens": pa.array(opens[begins]),
        "starts": pa.array(~known[begins]),
    }
    for name in _LAST:
        columns[name] = reports[name].take(pa.array(ends))
    received = np.maximum.reduceat(_micros(reports["received_at"]), begins)
    columns["received_at"] = pa.array(received, pa.int64()).cast(pa.timestamp("us", "UTC"))
    spans = pa.table(columns)

    # the new state: each connection's last report, the batch's over the state's
    last_rows = pa.array(np.append(np.flatnonzero(new_id)[1:], n) - 1)
    fresh = pa.table(
        {"connection_id": ids.take(last_rows), "last_time": reports["time"].take(last_rows)}
    ).cast(STATE_SCHEMA)
    kept = fresh
    if state is not None and state.num_rows:
        others = state.filter(pc.invert(pc.is_in(state["connection_id"], value_set=fresh[0])))
        kept = pa.concat_tables([fresh, others.select(STATE_SCHEMA.names)])
    newest = int(_micros(kept["last_time"]).max())
    recent = _micros(kept["last_time"]) >= newest - HORIZON_US
    kept = kept.filter(pa.array(recent))
    return spans, kept


def continues(lake: LakeRows, rows: pa.Table) -> pa.Table:
    """``rows`` (an import's, stored columns) as they continue the lake's: a row whose
    connection has a row in the lake that began before it and reached within
    :data:`GAP_SECONDS` of it continues that span (``opens`` and ``starts`` off); one
    whose connection reported within :data:`HORIZON_US` before it does not start the
    connection. An import's state knows only what its run read, so a run that begins in
    the middle of a connection (a day's next upload, a second file) had started it again
    until maintenance folded the day. (A row stored before the run's rows that in fact
    begin earlier, read first, still starts the connection until then.)"""
    opening = np.asarray(pc.fill_null(rows["opens"], True).to_numpy(zero_copy_only=False))
    opening |= np.asarray(pc.fill_null(rows["starts"], False).to_numpy(zero_copy_only=False))
    at = np.flatnonzero(opening)
    if len(at) == 0:
        return rows
    times = _micros(rows["time"])[at]
    ids = rows["connection_id"].take(pa.array(at))
    first = dt.datetime.fromtimestamp((int(times.min()) - HORIZON_US) / 1e6, dt.UTC)
    last = dt.datetime.fromtimestamp(int(times.max()) / 1e6, dt.UTC)
    found = lake(
        "x.connection_id, x.time, x.last_time",
        # a row's partition is its first report's day: one that reaches ``first`` began
        # at most a batch before it (a day before, for any batch of up to a day)
        "x.date BETWEEN ?::DATE AND ?::DATE AND x.last_time >= ? AND x.time <= ?"
        " AND x.connection_id IN (SELECT unnest(?::VARCHAR[]))",
        [(first - dt.timedelta(days=1)).date(), last.date(), first, last,
         pc.unique(ids).to_pylist()],
    )  # fmt: skip
    if found.num_rows == 0:
        return rows
    batch = pa.table({"connection_id": ids, "_t": times, "_i": at})
    earlier = pa.table(
        {
            "connection_id": found["connection_id"],
            "_lt": _micros(found["time"]),
            "_le": _micros(found["last_time"]),
        }
    )
    pairs = batch.join(earlier, "connection_id", join_type="inner")
    t, began, reached, index = (pairs[n].to_numpy() for n in ("_t", "_lt", "_le", "_i"))
    before = began < t
    changes = {
        "opens": index[before & (reached >= t - GAP_US)],
        "starts": index[before & (reached >= t - HORIZON_US)],
    }
    if not any(len(v) for v in changes.values()):
        return rows
    for name, where in changes.items():
        off = np.zeros(rows.num_rows, dtype=bool)
        off[where] = True
        position = rows.schema.get_field_index(name)
        values = pc.if_else(pa.array(off), False, rows[name])
        rows = rows.set_column(position, rows.schema.field(position), values)
    return rows


def _starts(ids: pa.ChunkedArray) -> np.ndarray:
    """Where each connection's rows begin in rows sorted by connection."""
    n = len(ids)
    starts = np.ones(n, dtype=bool)
    if n > 1:
        same = pc.equal(ids.slice(1), ids.slice(0, n - 1))
        starts[1:] = ~np.asarray(pc.fill_null(same, False).to_numpy(zero_copy_only=False))
    return starts


ROLLUP_SQL = f"""
SELECT min(time) AS time, max(received_at) AS received_at, arg_max(source, last_time) AS source,
    arg_max(stream, last_time) AS stream, any_value(kind) AS kind, NULL AS type,
    arg_max(channel_id, last_time) AS channel_id, arg_max(session_id, last_time) AS session_id,
    connection_id, arg_max(client_id, last_time) AS client_id,
    arg_max(role, last_time) AS role, arg_max(node_name, last_time) AS node_name,
    max(last_time) AS last_time, sum(reports)::BIGINT AS reports, arg_min(opens, time) AS opens,
    CASE WHEN span > 1 THEN false ELSE arg_min_null(starts, time) END AS starts, NULL AS extra
FROM (
    SELECT *, sum(CASE WHEN gap THEN 1 ELSE 0 END)
        OVER (PARTITION BY connection_id ORDER BY time, last_time ROWS UNBOUNDED PRECEDING) AS span
    FROM (
        SELECT *, coalesce(time - max(last_time) OVER (
            PARTITION BY connection_id ORDER BY time, last_time
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
        ) > INTERVAL {GAP_SECONDS} SECOND, true) AS gap
        FROM {{rows}}
    )
)
GROUP BY connection_id, span
"""
"""A day's rows folded into one row per span: a row within :data:`GAP_SECONDS` of the
connection's rows before it (its last report, or an earlier row that overlaps it)
continues their span. Rows derived twice from lines read twice (a second import, a log
tailed and imported: each run's derivation has its own state) overlap, and fold into the
one span they share; only the connection's first span of the day keeps ``starts``. Their
``reports`` are summed as stored (a report read twice counts twice)."""


def fold(rows: pa.Table) -> pa.Table:
    """Rows of ``connection_spans`` (stored columns) with each row that continues the
    connection's previous one merged into it: :data:`ROLLUP_SQL` in Arrow, for the rows of
    consecutive batches stored together (``Rollup.fold``)."""
    if rows.num_rows < 2:
        return rows
    rows = rows.take(
        pc.sort_indices(rows, sort_keys=[("connection_id", "ascending"), ("time", "ascending")])
    )
    opens = np.asarray(pc.fill_null(rows["opens"], True).to_numpy(zero_copy_only=False))
    begins = np.flatnonzero(_starts(rows["connection_id"]) | opens)
    if len(begins) == rows.num_rows:
        return rows
    ends = pa.array(np.append(begins[1:], rows.num_rows) - 1)
    firsts = pa.array(begins)
    columns: dict[str, Any] = {}
    for field in rows.schema:
        name = field.name
        if name in ("time", "opens", "starts", "connection_id"):
            columns[name] = rows[name].take(firsts)
        elif name in ("last_time", "received_at"):
            most = np.maximum.reduceat(_micros(rows[name]), begins)
            columns[name] = pa.array(most, pa.int64()).cast(field.type)
        elif name == "reports":
            counts = pc.fill_null(rows[name], 0).to_numpy(zero_copy_only=False)
            columns[name] = pa.array(np.add.reduceat(counts, begins), field.type)
        else:  # the envelope of the last stretch
            columns[name] = rows[name].take(ends)
    return pa.table(columns, schema=rows.schema)
