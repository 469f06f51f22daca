"""``connection_spans``: per connection, its stretches of reports without a silence of
more than two minutes, derived batch by batch and folded per closed day by maintenance."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from rtclake import grafana
from rtclake.catalog import default_registry
from rtclake.derive import concat
from rtclake.grafana import interpolate
from rtclake.integrations.sora import dashboards as sora_dashboards
from rtclake.integrations.sora.spans import GAP_SECONDS
from rtclake.integrations.sora.views import SpansDerivation
from rtclake.lake import dashboard
from rtclake.lake.maintenance import Maintenance, MaintenanceConfig
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch
from tests.test_influxdb_sink import convert

START = dt.datetime(2026, 11, 1, 8, tzinfo=dt.UTC)
COLUMNS = ["connection_id", "time", "last_time", "reports", "opens", "starts"]


def reports(rows: list[tuple[str, float, int]]) -> pa.Table:
    """``connection_reports`` rows (stored columns): (connection, seconds after START, part)."""
    schema = default_registry()["connection_reports"].stored_schema
    n = len(rows)
    times = [START + dt.timedelta(seconds=s) for _, s, _ in rows]
    ids = [c for c, _, _ in rows]
    columns: dict[str, Any] = {
        "time": times,
        "received_at": [t + dt.timedelta(seconds=1) for t in times],
        "source": ["sora_logs"] * n,
        "stream": ["rtc_stats.jsonl"] * n,
        "kind": ["connection_reports"] * n,
        "connection_id": ids,
        "session_id": [f"S-{c[:1]}" for c in ids],
        "channel_id": [f"room-{c[:1]}" for c in ids],
        "client_id": [f"client-{c}" for c in ids],
        "role": ["sendrecv"] * n,
        "node_name": ["sora1"] * n,
        "part": [p for _, _, p in rows],
    }
    return pa.table(
        {f.name: pa.array(columns.get(f.name, [None] * n), f.type) for f in schema},
        schema=schema,
    )


def spans_of(table: pa.Table) -> list[tuple[str, float, float, int, bool, bool]]:
    """Rows as (connection, first and last report in seconds after START, reports, opens,
    starts)."""
    return sorted(
        (r["connection_id"], (r["time"] - START).total_seconds(),
         (r["last_time"] - START).total_seconds(), r["reports"], r["opens"], r["starts"])
        for r in table.select(COLUMNS).to_pylist()
    )  # fmt: skip


def test_a_silence_of_more_than_two_minutes_opens_a_new_span() -> None:
    derivation = SpansDerivation()
    out, state = derivation.derive(
        {"connection_reports": reports([
            ("A1", 0, 0), ("A1", 10, 0), ("A1", 20, 0), ("A1", 20, 1),  # a continuation
            ("A1", 20 + GAP_SECONDS + 1, 0), ("A1", 150, 0), ("B1", 5, 0),
        ])},
        None,
    )  # fmt: skip
    got = out["connection_spans"]
    # a silence opens a span; only the connection's first report starts it
    assert spans_of(got) == [
        ("A1", 0, 20, 3, True, True),
        ("A1", 141, 150, 2, True, False),
        ("B1", 5, 5, 1, True, True),
    ]
    # the stretch's last report gives the envelope; the schema is the table's
    assert got.schema == default_registry()["connection_spans"].stored_schema
    assert set(got["client_id"].to_pylist()) == {"client-A1", "client-B1"}
    assert state is not None and state.num_rows == 2

    # the next batch continues A1 (a report 30 s after its last), repeats a report already
    # counted (part 1, and a late one), and B1 comes back after a long silence
    out, state = derivation.derive(
        {"connection_reports": reports([
            ("A1", 150, 1), ("A1", 140, 0), ("A1", 180, 0), ("B1", 5 + GAP_SECONDS + 0.5, 0),
            ("C1", 7, 0),
        ])},
        state,
    )  # fmt: skip
    assert spans_of(out["connection_spans"]) == [
        ("A1", 180, 180, 1, False, False),
        ("B1", 125.5, 125.5, 1, True, False),
        ("C1", 7, 7, 1, True, True),
    ]
    # a batch of reports already counted makes no rows and keeps the state
    out, again = derivation.derive({"connection_reports": reports([("A1", 180, 1)])}, state)
    assert out == {} and again is not None
    assert sorted(again.to_pylist(), key=str) == sorted(state.to_pylist(), key=str)


def _random_reports(rng: np.random.Generator) -> list[tuple[str, float, int]]:
    """30 connections, each reporting every 5-60 s with a few silences of 2-10 minutes,
    over the first hours of a day, in time order."""
    rows = []
    for c in range(30):
        t = float(rng.integers(0, 3600))
        for _ in range(int(rng.integers(5, 80))):
            rows.append((f"{'AB'[c % 2]}{c:02d}", t, 0))
            if rng.random() < 0.04:
                rows.append((f"{'AB'[c % 2]}{c:02d}", t, 1))  # a report split across batches
            t += float(rng.integers(GAP_SECONDS + 1, 600) if rng.random() < 0.08
                       else rng.integers(5, 61))  # fmt: skip
    return sorted(rows, key=lambda r: (r[1], r[2]))


def _write(root: Path, batches: list[pa.Table]) -> list[pa.Table]:
    """The spans of each batch of reports, each stored on its own but the last five,
    stored as one group (one file, folded)."""
    sink = LakeSink(root, default_registry())
    derivation = SpansDerivation()
    state = None
    written = []
    for rows in batches:
        out, state = derivation.derive({"connection_reports": rows}, state)
        written.append(out["connection_spans"])
    stored = [Batch("node", "derived", n, {"connection_spans": t})
              for n, t in enumerate(written, 1)]  # fmt: skip
    for batch in stored[:-5]:
        sink.write(batch)
    sink.write_group(stored[-5:])
    sink.close()
    return written


def _store_reports(root: Path, batches: list[pa.Table]) -> None:
    """The reports themselves, one stored batch each (beside their spans)."""
    sink = LakeSink(root, default_registry())
    for n, table in enumerate(batches, 1):
        sink.write(Batch("node", "reports", n, {"connection_reports": table}))
    sink.close()


def _maintenance(sink: LakeSink) -> Maintenance:
    return Maintenance(
        sink.catalog, MaintenanceConfig(), node="n", metrics=Metrics(CollectorRegistry())
    )


def test_maintenance_folds_a_closed_day_into_one_row_per_span(tmp_path: Path) -> None:
    """Written batch by batch (one row per connection and batch), then folded: the same
    spans as one batch of the whole day gives, and a window of two minutes or more finds
    exactly the connections that reported in it."""
    rng = np.random.default_rng(7)
    rows = _random_reports(rng)
    whole, _ = SpansDerivation().derive({"connection_reports": reports(rows)}, None)
    cuts = sorted(rng.choice(np.arange(1, len(rows)), 40, replace=False))
    pieces = [reports(rows[a:b]) for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    written = _write(tmp_path, pieces)
    # consecutive batches stored together (an import's or a writer's group) are folded
    # the same way
    rollup = default_registry()["connection_spans"].rollup
    assert rollup is not None and rollup.fold is not None
    assert spans_of(rollup.fold(concat(written))) == spans_of(whole["connection_spans"])

    engine = QueryEngine(tmp_path, default_registry())
    before = engine.run("SELECT count(*), sum(reports) FROM connection_spans").rows()[0]
    engine.close()
    expected = spans_of(whole["connection_spans"])
    assert before[0] > len(expected)  # rows per batch: more than the spans
    # the group of the last five batches stored fewer rows than they derived
    unfolded = sum(t.num_rows for t in written)
    assert unfolded - sum(t.num_rows for t in written[-5:]) < before[0] < unfolded
    assert before[1] == sum(s[3] for s in expected) == len({(c, t) for c, t, _ in rows})

    maintenance = _maintenance(LakeSink(tmp_path, default_registry()))
    # the day is not over: its spans are folded all the same (the table is small)
    report = maintenance.run(now=START + dt.timedelta(hours=12))
    assert report is not None and report.ok, report
    assert report.steps[1].changes["days sorted"] == 1, report.steps[1]
    # the day over, nothing came since: nothing to do
    report = maintenance.run(now=START + dt.timedelta(days=1))
    assert report is not None and report.ok, report
    assert "days sorted" not in report.steps[1].changes, report.steps[1]

    engine = QueryEngine(tmp_path, default_registry())
    folded = engine.run(f"SELECT {', '.join(COLUMNS)} FROM connection_spans").rows()
    as_dicts = [dict(zip(COLUMNS, r, strict=True)) for r in folded]
    assert spans_of(pa.Table.from_pylist(as_dicts)) == expected
    assert len(engine.snapshot()["connection_spans"]) == 1

    # a window of at least the gap: a row overlaps it exactly when a report lies in it
    busy = 0
    for _ in range(25):
        start = float(rng.integers(0, 5 * 3600))
        width = float(rng.integers(GAP_SECONDS, 900))
        truth = {c for c, t, _ in rows if start <= t <= start + width}
        lo, hi = (dashboard.timestamp(START + dt.timedelta(seconds=s))
                  for s in (start, start + width))  # fmt: skip
        found = engine.run(
            f"SELECT DISTINCT connection_id FROM connection_spans"
            f" WHERE time <= {hi} AND last_time >= {lo}"
        ).rows()
        assert {r[0] for r in found} == truth, (start, width)
        busy += len(truth) > 1
    assert busy > 10
    engine.close()


def _lines(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records)


def test_active_now_and_the_flow_read_the_webhooks_with_the_spans(tmp_path: Path) -> None:
    """A connection is active when its connection.created came in the last day or a span
    reaches into the last two minutes, unless a connection.destroyed says it ended; a
    session when its session.created came and no session.destroyed, or a connection of
    it is active."""
    now = START + dt.timedelta(hours=1)
    at = {m: (now - dt.timedelta(minutes=m)).isoformat() for m in (1, 10, 20, 50, 55, 59)}

    def event(minutes: int, what: str, connection: str, session: str) -> dict[str, Any]:
        return {"timestamp": at[minutes], "operation": what, "connection_id": connection,
                "session_id": session, "channel_id": "room"}  # fmt: skip

    def session(minutes: int, what: str, session_id: str) -> dict[str, Any]:
        return {"timestamp": at[minutes], "req": {"type": what, "session_id": session_id,
                "channel_id": "room", "created_timestamp": at[59]}}  # fmt: skip

    sink = LakeSink(tmp_path, default_registry())
    sink.write(convert("sora_events", _lines([
        event(10, "connection.created", "A", "S-A"),  # live, no stats: logged
        event(20, "connection.created", "B", "S-B"),
        event(1, "connection.destroyed", "B", "S-B"),  # ended
        event(1, "connection.destroyed", "D1", "S-D"),  # stats until now, but ended
    ]), 1))  # fmt: skip
    sink.write(convert("sessions", _lines([
        session(59, "session.created", "S1"),  # live without connections
        session(55, "session.created", "S2"),
        session(1, "session.destroyed", "S2"),
    ]), 2))  # fmt: skip
    minutes = 3600 - 30  # C and D report until 30 s before now, E stopped 5 minutes before
    spans, _ = SpansDerivation().derive({"connection_reports": reports(
        [(c, s, 0) for s in range(600, minutes, 10) for c in ("C1", "D1")]
        + [("E1", s, 0) for s in range(600, 3600 - 300, 10)]
    )}, None)  # fmt: skip
    sink.write(Batch("node", "derived", 3, spans))
    sink.close()

    engine = QueryEngine(tmp_path, default_registry())
    (active,) = engine.run(dashboard.active_now_sql(now)).rows()
    # A (logged) and C1 (from stats); sessions S1, S-A and C1's S-C
    assert active == [2, 1, 3]
    flow = dashboard.connection_flow_sql(dashboard.TimeRange(START, now + dt.timedelta(1)), 60)
    (totals,) = engine.run(f"SELECT sum(created), sum(destroyed), sum(failed) FROM ({flow})").rows()
    # created: A and B (events), C1, D1 and E1 (first reports); destroyed: B and D
    assert [int(v) for v in totals] == [5, 2, 0]
    engine.close()


def test_folding_today_beside_a_writer_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Maintenance folds today's spans while a writer keeps adding to that day: every
    report is counted once in the end, whichever of the two commits first."""
    rng = np.random.default_rng(11)
    rows = _random_reports(rng)
    cuts = sorted(rng.choice(np.arange(1, len(rows)), 60, replace=False))
    pieces = [reports(rows[a:b]) for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    derivation, state = SpansDerivation(), None
    batches = []
    for n, piece in enumerate(pieces, 1):
        out, state = derivation.derive({"connection_reports": piece}, state)
        batches.append(Batch("node", "derived", n, out))
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batches[0])
    maintenance = _maintenance(sink)
    done = threading.Event()
    errors: list[BaseException] = []

    folded = threading.Event()

    def write() -> None:
        try:
            for n, batch in enumerate(batches[1:]):
                if n == len(batches) // 2:  # half-way: once a fold of the day came between
                    folded.wait(60)
                sink.write(batch)
                time.sleep(0.02)  # a writer's flush interval, shortened
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    folds = 0
    while True:
        finished = done.is_set()  # one more run after the last write
        report = maintenance.run(now=START + dt.timedelta(hours=12))
        assert report is not None and report.ok, report
        folds += report.steps[1].changes.get("days sorted", 0)
        if folds:
            folded.set()
        if finished:
            break
    writer.join()
    sink.close()
    assert not errors, errors
    assert folds >= 2
    engine = QueryEngine(tmp_path, default_registry())
    (counted,) = engine.run("SELECT sum(reports) FROM connection_spans").rows()
    assert counted[0] == len({(c, t) for c, t, _ in rows})
    engine.close()


def _grafana_panel(title: str) -> str:
    (sql,) = [q.sql for q in grafana.queries(sora_dashboards.overview()) if q.what == title]
    return sql


def _whole_buckets(
    found: list[tuple[Any, ...]], since: dt.datetime, until: dt.datetime, width: dt.timedelta
) -> list[tuple[Any, ...]]:
    """The rows of the buckets that lie whole in the range."""
    return [r for r in found if r[0] >= since and r[0] + width <= until]


def test_grafana_counts_active_sessions_and_connections_from_the_spans_as_reports_would(
    tmp_path: Path,
) -> None:
    """The overview's Active sessions and connections panels read the spans (a few rows a
    connection), not the reports: for buckets of two minutes or more, a bucket that a span
    overlaps holds one of its reports (they are at most two minutes apart), so the counts
    per bucket are those of the reports, silences and splits across batches included. A
    bucket the range cuts (at its ends) counts what was live in its part, where the reports
    count only what reported in that part."""
    rows = _random_reports(np.random.default_rng(5))
    batches = [reports(rows[i : i + 40]) for i in range(0, len(rows), 40)]
    _write(tmp_path, batches)
    _store_reports(tmp_path, batches)
    engine = QueryEngine(tmp_path, default_registry())
    (stored,) = engine.run("SELECT count(*) FROM connection_reports").rows()[0]
    assert stored == len(rows)
    counted = 0
    for minutes in (2, 5, 10):
        width = dt.timedelta(minutes=minutes)
        for start, hours in ((0, 3), (30, 1), (31, 1)):
            since = START + dt.timedelta(minutes=start)
            until = since + dt.timedelta(hours=hours)
            sent = {
                "time_from": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "time_to": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "interval_ms": minutes * 60_000,
            }
            for title, columns in (
                ("Active sessions", ["session_id"]),
                ("Active connections", ["connection_id"]),
                ("Active sessions and connections", ["session_id", "connection_id"]),
            ):
                got = engine.run(interpolate(_grafana_panel(title), {}, **sent)).rows()
                counts = ", ".join(f"count(DISTINCT {c})" for c in columns)
                expected = engine.run(interpolate(f"""
                    SELECT time_bucket(to_milliseconds(${{__interval_ms:raw}}), time) AS time,
                        {counts} FROM connection_reports WHERE $__timeFilter(time)
                    GROUP BY 1 ORDER BY 1""", {}, **sent)).rows()  # fmt: skip
                whole = _whole_buckets(got, since, until, width)
                assert whole == _whole_buckets(expected, since, until, width), (title, sent)
                assert len(got) - len(whole) <= 2, (title, sent)  # the cut buckets
                counted += len(whole)
    assert counted > 100
    engine.close()


def _ended(connections: dict[str, tuple[float, float]]) -> bytes:
    """Sora's connection.jsonl lines: each connection created and destroyed at its seconds
    after START."""

    def at(seconds: float) -> str:
        return (START + dt.timedelta(seconds=seconds)).isoformat()

    return _lines([
        {"id": f"log-{c}", "timestamp": at(end), "channel_id": f"room-{c[:1]}",
         "session_id": f"S-{c[:1]}", "connection_id": c, "client_id": f"client-{c}",
         "role": "sendrecv", "created_timestamp": at(begin), "destroyed_timestamp": at(end),
         "disconnect_reason": "normal"}
        for c, (begin, end) in connections.items()
    ])  # fmt: skip


def test_started_is_each_connections_first_report_in_grafana_and_the_overview(
    tmp_path: Path,
) -> None:
    """Grafana's "Connections started and ended" and the overview's flow count a connection
    once, in the minute of its first report (connection_spans' starts), not again when it
    reports after a silence; ended comes from Sora's connection log. Top channels, which
    takes each connection's channel and session from the spans, gives what the reports
    alone give. The same once maintenance has folded the day into spans the range cuts."""
    rows = _random_reports(np.random.default_rng(3))
    pieces = [reports(rows[i : i + 37]) for i in range(0, len(rows), 37)]
    written = _write(tmp_path, pieces)
    _store_reports(tmp_path, pieces)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for c, t, _ in rows:
        first[c], last[c] = min(t, first.get(c, t)), max(t, last.get(c, t))
    logged = {c: (first[c], last[c] + 30) for c in sorted(first)[::3]}
    sink = LakeSink(tmp_path, default_registry())
    sink.write(convert("connections", _ended(logged), 1))
    sink.close()
    since, until = START + dt.timedelta(minutes=20), START + dt.timedelta(hours=4)

    def per_minute(at: dict[str, float]) -> dict[dt.datetime, int]:
        counts: dict[dt.datetime, int] = {}
        for s in at.values():
            if since <= START + dt.timedelta(seconds=s) < until:
                t = START + dt.timedelta(minutes=s // 60)
                counts[t] = counts.get(t, 0) + 1
        return counts

    started = per_minute(first)
    destroyed = per_minute({c: end for c, (_, end) in logged.items()})
    assert len(started) > 5 and len(destroyed) > 3
    # connections come back after silences in the range: spans that open but do not start
    resumed = [s for s in spans_of(concat(written)) if s[4] and not s[5]]
    assert sum(1 for s in resumed if since <= START + dt.timedelta(seconds=s[1]) < until) > 3
    sent = {"time_from": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "time_to": (until - dt.timedelta(microseconds=1)).isoformat(),
            "interval_ms": 60_000}  # fmt: skip
    panel = interpolate(_grafana_panel("Connections started and ended per minute"), {}, **sent)
    flow = dashboard.connection_flow_sql(dashboard.TimeRange(since, until), 60)

    def check() -> None:
        engine = QueryEngine(tmp_path, default_registry())
        got = engine.run(panel).rows()
        assert {t: int(n) for t, n, _ in got if n} == started
        assert {t: int(n) for t, _, n in got if n} == destroyed
        got = engine.run(f"SELECT time, created, destroyed FROM ({flow})").rows()
        assert {t: n for t, n, _ in got if n} == started
        assert {t: n for t, _, n in got if n} == destroyed
        # Top channels takes each connection's channel and session from the spans (which
        # the range cuts): the same rows as the question over the reports alone
        top = engine.run(interpolate(_grafana_panel("Top channels"), {}, **sent)).rows()
        plain = engine.run(
            interpolate(
                """
            SELECT channel_id, count(DISTINCT session_id), count(DISTINCT connection_id),
                min(time), max(time)
            FROM connection_reports WHERE $__timeFilter(time) GROUP BY ALL""",
                {},
                **sent,
            )
        )
        assert sorted(top) == sorted(plain.rows()) and len(top) == 2
        engine.close()

    check()
    maintenance = _maintenance(LakeSink(tmp_path, default_registry()))
    report = maintenance.run(now=START + dt.timedelta(days=1))
    assert report is not None and report.ok, report
    assert report.steps[1].changes["days sorted"] >= 1, report.steps[1]
    check()
