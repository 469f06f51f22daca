"""The lake sinks. Through the catalog (the default): one transaction per batch with its
ledger row, files under main/TABLE/date=YYYY-MM-DD/, a replay skipped, a crash before the
commit leaving nothing visible. The Hive layout (``lake.catalog: hive``): Parquet files
under TABLE/date=YYYY-MM-DD/NODE-RUN-SEGMENT.parquet, written under a temporary name and
renamed; a replayed batch overwrites its own file."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.lake.catalog import LEDGER
from rtclake.lake.maintenance import Maintenance, MaintenanceConfig
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import MERGE_ROW_GROUP_ROWS, HiveLakeSink, LakeSink
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch
from tests.test_query import batch, telemetry_batches


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def lines(*days: int) -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-%02dT23:59:59Z", "device_id": "d%d"}' % (day, i)
        for i, day in enumerate(days)
    )


def files(lake: Path) -> list[str]:
    return sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*") if p.is_file())


def test_one_file_per_table_and_date_named_after_the_batch(tmp_path: Path) -> None:
    sink = HiveLakeSink(tmp_path, default_registry())
    sink.start()
    sink.write(batch(7, lines(1, 2, 2)))
    assert files(tmp_path) == [
        "telemetry/date=2026-11-01/node-sp-000000000007.parquet",
        "telemetry/date=2026-11-02/node-sp-000000000007.parquet",
    ]
    table = pq.read_table(tmp_path / "telemetry/date=2026-11-02/node-sp-000000000007.parquet")
    assert sorted(table["device_id"].to_pylist()) == ["d1", "d2"]


def test_a_replayed_batch_overwrites_its_own_file(tmp_path: Path) -> None:
    sink = HiveLakeSink(tmp_path, default_registry())
    sink.write(batch(7, lines(1, 1)))
    sink.write(batch(7, lines(1, 1)))
    (only,) = files(tmp_path)
    assert pq.read_table(tmp_path / only).num_rows == 2


def test_a_failed_write_leaves_no_half_file_and_no_final_file(tmp_path: Path) -> None:
    sink = HiveLakeSink(tmp_path, default_registry())
    faults.arm("lake.before_rename", "enospc", times=1)
    with pytest.raises(OSError, match="No space left"):
        sink.write(batch(7, lines(1)))
    assert files(tmp_path) == []  # the temporary file was removed: it held the space
    sink.write(batch(7, lines(1)))  # the retry
    assert files(tmp_path) == ["telemetry/date=2026-11-01/node-sp-000000000007.parquet"]


def test_files_prepared_off_the_writer_thread_are_the_files_it_writes(tmp_path: Path) -> None:
    """An import encodes a block's Parquet on its converting threads (``prepare``): the
    files written from that are byte for byte those ``write`` makes on its own, one per
    date."""
    made = batch(7, lines(1, 2, 2))
    plain = HiveLakeSink(tmp_path / "plain", default_registry())
    plain.write(made)
    early = HiveLakeSink(tmp_path / "early", default_registry())
    prepared = {("lake", name): early.prepare(name, rows) for name, rows in made.tables.items()}
    assert [date for date, _ in prepared[("lake", "telemetry")]] == ["2026-11-01", "2026-11-02"]
    early.write(Batch(made.node, made.run, made.segment, made.tables, prepared))
    assert files(tmp_path / "plain") == files(tmp_path / "early")
    for name in files(tmp_path / "plain"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "early" / name).read_bytes()


def test_the_catalogs_connections_give_the_memory_they_freed_back(tmp_path: Path) -> None:
    """DuckDB's default keeps up to 128 MiB (512 MiB after a bulk free) a thread freed for
    its next task, for the life of the process: ``rtclake run``'s writer and maintenance
    held it. The catalog's connections (the writer's, maintenance's, a reader's) give back
    all but 4 MB; other connections keep DuckDB's default."""
    sink = LakeSink(tmp_path, default_registry())
    sink.start()
    setting = "SELECT current_setting('allocator_flush_threshold'),"
    setting += " current_setting('allocator_bulk_deallocation_flush_threshold')"
    try:
        assert sink._connection().execute(setting).fetchone() == ("3.8 MiB", "3.8 MiB")
        reader = sink.catalog.connect(threads=1, read_only=True)
        assert reader.execute(setting).fetchone() == ("3.8 MiB", "3.8 MiB")
        reader.close()
        assert duckdb.connect().execute(setting).fetchone() == ("128.0 MiB", "512.0 MiB")
    finally:
        sink.close()


def count(lake: Path) -> list[list[object]]:
    engine = QueryEngine(lake, default_registry())
    try:
        return engine.run(
            "SELECT date::VARCHAR, count(*), count(DISTINCT device_id) FROM telemetry"
            " GROUP BY ALL ORDER BY 1"
        ).rows()
    finally:
        engine.close()


def test_through_the_catalog_files_are_partitioned_by_date(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.start()
    sink.write(batch(7, lines(1, 2, 2)))
    found = [f for f in files(tmp_path) if f.startswith("main/telemetry/")]
    assert [f.rsplit("/", 1)[0] for f in found] == [
        "main/telemetry/date=2026-11-01",
        "main/telemetry/date=2026-11-02",
    ]
    # named after the batch: a retry of a batch whose commit failed overwrites its upload
    assert {f.rsplit("/", 1)[1] for f in found} == {"node-sp-000000000007.parquet"}
    assert "catalog.sqlite" in files(tmp_path)
    table = pq.read_table(tmp_path / found[1])  # the date is the folder's, as in Hive
    assert sorted(table["device_id"].to_pylist()) == ["d1", "d2"]
    assert "date" not in table.column_names
    assert sink.live_files("telemetry") == [str(tmp_path.resolve() / f) for f in found]
    sink.close()


def test_a_replay_after_a_restart_is_skipped_by_the_ledger(tmp_path: Path) -> None:
    first = LakeSink(tmp_path, default_registry())
    first.write(batch(7, lines(1, 1)))
    first.close()
    again = LakeSink(tmp_path, default_registry())  # a new process: nothing in memory
    again.write(batch(7, lines(1, 1)))
    again.write(batch(8, lines(3)))
    again.close()
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-03", 1, 1]]


def test_a_failure_before_the_commit_leaves_nothing_visible_and_the_retry_commits_once(
    tmp_path: Path,
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(6, lines(2)))
    faults.arm("lake.before_commit", "eio", times=1)
    with pytest.raises(OSError):
        sink.write(batch(7, lines(1, 1)))
    assert count(tmp_path) == [["2026-11-02", 1, 1]]  # the uploaded files are not visible
    sink.write(batch(7, lines(1, 1)))  # the retry
    sink.write(batch(7, lines(1, 1)))  # and a replay
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-02", 1, 1]]
    sink.close()


def test_a_refusal_is_tried_again_on_a_fresh_connection_before_it_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(6, lines(2)))
    stale = sink._connection()
    real = LakeSink._add
    refusals = []

    def add(self: LakeSink, con: Any, *args: Any) -> int:
        if con is stale or len(refusals) >= 3:  # a connection gone stale / bad data
            refusals.append(con)
            raise duckdb.InvalidInputException("Unknown name map id 0 when trying to map file")
        return real(self, con, *args)

    monkeypatch.setattr(LakeSink, "_add", add)
    sink.write(batch(7, lines(1, 1)))  # refused on the stale connection, stored afresh
    assert len(refusals) == 1
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-02", 1, 1]]
    refusals.extend([None, None])  # from now on every connection refuses
    with pytest.raises(duckdb.InvalidInputException):  # the writer's to count and set aside
        sink.write(batch(8, lines(3)))
    assert len(refusals) == 5  # once, then once more afresh
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-02", 1, 1]]
    sink.close()


def test_a_commit_that_meets_maintenances_is_tried_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(6, lines(2)))
    other = sink.catalog.connect()  # maintenance's connection, committing meanwhile
    real = faults.check
    commits = []

    def meanwhile(point: str) -> None:
        if point == "lake.before_commit" and not commits:
            other.execute(f"INSERT INTO lake.{LEDGER} VALUES ('m', 'r', 1, NULL, NULL, 0, now())")
            commits.append(point)
        real(point)

    monkeypatch.setattr(faults, "check", meanwhile)
    sink.write(batch(7, lines(1, 1)))  # no SinkError for the delivery to log and retry
    assert commits
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-02", 1, 1]]
    other.close()
    sink.close()


def test_prepared_rows_are_the_rows_write_stores(tmp_path: Path) -> None:
    made = batch(7, lines(1, 2, 2))
    sink = LakeSink(tmp_path, default_registry())
    prepared = {("lake", name): sink.prepare(name, rows) for name, rows in made.tables.items()}
    sink.write(Batch(made.node, made.run, made.segment, made.tables, prepared))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 1, 1], ["2026-11-02", 2, 2]]


def _arrived(made: Batch, received: dt.datetime) -> Batch:
    """``made`` with every row timed at its arrival, ``received`` (a record without a time
    of its own)."""
    rows = made.tables["telemetry"]
    at = pa.array([received] * rows.num_rows, rows.schema.field("time").type)
    rows = rows.set_column(rows.schema.get_field_index("time"), "time", at)
    rows = rows.set_column(rows.schema.get_field_index("received_at"), "received_at", at)
    return Batch(made.node, made.run, made.segment, {"telemetry": rows})


def test_records_the_lake_or_the_batch_holds_already_are_not_stored_again(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    sink = LakeSink(tmp_path, default_registry(), dedupe_window=300, metrics=metrics)

    def repeats() -> float | None:
        return metrics.registry.get_sample_value(
            "rtclake_lake_repeats_total", {"table": "telemetry"}
        )

    timed = b'{"time": "2026-11-01T10:00:00Z", "device_id": "a"}'
    other = b'{"time": "2026-11-01T10:00:01Z", "device_id": "b"}'
    sink.write(batch(1, timed + b"\n" + other))
    assert repeats() is None
    # the same records again (a client's retry, a file uploaded twice), one twice in a batch
    sink.write(batch(2, b"\n".join([other, timed, other])))
    assert count(tmp_path) == [["2026-11-01", 2, 2]]
    assert repeats() == 3  # what the lake left out is counted (the batch had 3 rows)
    # a record timed at its arrival: a repeat within the window is one, after it is not
    noon = dt.datetime(2026, 11, 3, 12, tzinfo=dt.UTC)
    first = _arrived(batch(3, b'{"device_id": "c"}'), noon)
    sink.write(first)
    retry = first.tables["telemetry"]
    soon = noon + dt.timedelta(minutes=4)
    sink.write(_arrived(Batch("node", "sp", 4, {"telemetry": retry}), soon))
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-03", 1, 1]]
    later = noon + dt.timedelta(minutes=6)
    sink.write(_arrived(Batch("node", "sp", 5, {"telemetry": retry}), later))
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-03", 2, 1]]
    sink.close()


def test_a_lake_folder_moved_elsewhere_is_read_and_written_as_before(tmp_path: Path) -> None:
    first = LakeSink(tmp_path / "old", default_registry())
    first.write(batch(7, lines(1, 2)))
    first.close()
    (tmp_path / "old").rename(tmp_path / "new")  # a move, a rename, a restore elsewhere
    assert count(tmp_path / "new") == [["2026-11-01", 1, 1], ["2026-11-02", 1, 1]]
    again = LakeSink(tmp_path / "new", default_registry())
    again.write(batch(7, lines(1, 2)))  # the ledger came along: a replay is skipped
    again.write(batch(8, lines(3)))
    assert again.live_files("telemetry")[0].startswith(str((tmp_path / "new").resolve()))
    again.close()
    assert count(tmp_path / "new") == [
        ["2026-11-01", 1, 1], ["2026-11-02", 1, 1], ["2026-11-03", 1, 1]
    ]  # fmt: skip


def ledger(lake: Path) -> list[tuple[Any, ...]]:
    sink = LakeSink(lake, default_registry())
    try:
        con = sink._connection()
        return con.execute(f"SELECT seq, rows FROM lake.{LEDGER} ORDER BY seq").fetchall()
    finally:
        sink.close()


def test_a_group_of_batches_is_one_commit_and_one_file_per_table_and_date(
    tmp_path: Path,
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    repeated = b'{"time": "2026-11-01T10:00:00Z", "device_id": "again"}'
    group = [
        batch(3, lines(1, 2) + b"\n" + repeated),
        batch(4, lines(2) + b"\n" + repeated),  # a record of the batch before it
        batch(5, lines(1)),
    ]
    sink.write_group(group)
    sink.close()
    found = [f for f in files(tmp_path) if f.startswith("main/telemetry/")]
    assert found == [  # named after the first batch of the group
        "main/telemetry/date=2026-11-01/node-sp-000000000003.parquet",
        "main/telemetry/date=2026-11-02/node-sp-000000000003.parquet",
    ]
    # every record once (lines() numbers its devices from 0 in each batch: batch 5's
    # record is batch 3's first)
    assert count(tmp_path) == [["2026-11-01", 2, 2], ["2026-11-02", 2, 2]]
    assert ledger(tmp_path) == [(5, 4)]  # one row, the last batch's: 4 rows stored


def test_a_group_partly_committed_before_stores_only_the_rest(tmp_path: Path) -> None:
    """A group formed again after a commit whose outcome was unknown (or a restart) may
    begin with batches the ledger holds: those are skipped, the rest stored once."""
    first = LakeSink(tmp_path, default_registry())
    first.write_group([batch(1, lines(1)), batch(2, lines(2))])
    first.close()
    again = LakeSink(tmp_path, default_registry())  # a new process: nothing in memory
    again.write_group([batch(1, lines(1)), batch(2, lines(2)), batch(3, lines(3, 3))])
    again.write_group([batch(2, lines(2)), batch(3, lines(3, 3))])  # all held: nothing
    again.close()
    assert count(tmp_path) == [["2026-11-01", 1, 1], ["2026-11-02", 1, 1], ["2026-11-03", 2, 2]]
    assert ledger(tmp_path) == [(2, 2), (3, 2)]
    assert [f for f in files(tmp_path) if "2026-11-03" in f] == [
        "main/telemetry/date=2026-11-03/node-sp-000000000003.parquet"
    ]


def test_a_failed_group_commit_leaves_nothing_and_its_batches_then_commit_one_by_one(
    tmp_path: Path,
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    faults.arm("lake.before_commit", "eio", times=1)
    with pytest.raises(OSError):
        sink.write_group([batch(1, lines(1)), batch(2, lines(2))])
    assert count(tmp_path) == []
    sink.write(batch(1, lines(1)))  # what the writer does after a group fails
    sink.write(batch(2, lines(2)))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 1, 1], ["2026-11-02", 1, 1]]
    assert ledger(tmp_path) == [(1, 1), (2, 1)]


def _rates(first_segment: int, n: int, seed: int) -> Batch:
    """``rtc_rates`` rows of 40 connections in the order of their samples' times, each a
    rate of its own (its stream and time: the record id the lake's repeat check reads)."""
    schema = default_registry()["rtc_rates"].stored_schema
    rng = np.random.default_rng(seed)
    start = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)
    times = [
        start + dt.timedelta(milliseconds=int(ms))
        for ms in sorted(rng.choice(3_600_000, n, replace=False))
    ]
    connections = [f"C{int(c):03d}" for c in rng.integers(0, 40, n)]
    columns: dict[str, Any] = {
        "time": times,
        "received_at": times,
        "connection_id": connections,
        "session_id": [f"S{c[1:]}" for c in connections],
        "channel_id": ["room"] * n,
        "stats_id": [f"s{first_segment}-{int(s)}" for s in rng.integers(0, 6, n)],
        "bitrate_bps": rng.random(n) * 1e6,
        "kind": ["rtc_rates"] * n,
        "source": ["derived"] * n,
        "stream": ["rtc_stats"] * n,
    }
    rows = pa.table(
        {f.name: pa.array(columns.get(f.name, [None] * n), f.type) for f in schema},
        schema=schema,
    )
    return Batch("node", "derived", first_segment, {"rtc_rates": rows})


def _row_groups(path: Path) -> list[tuple[int, str, str]]:
    """Each row group's rows and its connection ids' min and max (DuckDB's reading: the
    files DuckLake's merge writes have statistics pyarrow does not show)."""
    return duckdb.execute(
        "SELECT row_group_num_rows, stats_min_value, stats_max_value FROM parquet_metadata(?)"
        " WHERE path_in_schema = 'connection_id' ORDER BY row_group_id",
        [str(path)],
    ).fetchall()


def test_a_table_clustered_by_connection_is_stored_sorted_in_small_row_groups_also_merged(
    tmp_path: Path,
) -> None:
    """rtc_rates is read one connection at a time: each file holds its rows sorted by
    connection in row groups of ``row_group_rows``, so most groups name the connection out
    by their statistics; DuckLake's merge keeps the row groups small."""
    table = default_registry()["rtc_rates"]
    assert table.cluster_by[0] == "connection_id" and table.row_group_rows
    size = table.row_group_rows
    sink = LakeSink(tmp_path, default_registry())
    sink.write(_rates(1, 3 * size + 100, seed=1))
    sink.write(_rates(2, 2 * size, seed=2))
    sink.close()
    written = sorted(tmp_path.glob("main/rtc_rates/date=*/*.parquet"))
    assert len(written) == 2
    for path in written:
        rows = pq.read_table(path, columns=["connection_id", "time"])
        assert rows.to_pylist() == sorted(
            rows.to_pylist(), key=lambda r: (r["connection_id"], r["time"])
        )
        groups = _row_groups(path)
        assert len(groups) >= 2 and all(n <= size for n, _, _ in groups)
        # 40 connections over the groups of a file: each group holds its share
        assert sum(int(hi[1:]) - int(lo[1:]) for _, lo, hi in groups) <= 40 + len(groups)

    # the day not over yet: DuckLake's merge joins the files end to end, each a sorted run
    catalog = sink.catalog
    report = Maintenance(catalog, MaintenanceConfig(), node="n").run(now=DAY_OF_RATES)
    assert report is not None and report.ok
    assert "days sorted" not in report.steps[1].changes
    engine = QueryEngine(tmp_path, default_registry())
    listed = engine.snapshot()["rtc_rates"]
    assert len(listed) == 1, listed  # the two files merged
    groups = _row_groups(Path(listed[0].removeprefix("file://")))
    assert sum(n for n, _, _ in groups) == 5 * size + 100
    # DuckDB's writer ends a group at the first chunk that fills it
    assert len(groups) >= 5 and all(n < 2 * size for n, _, _ in groups), groups
    holding = [g for g in groups if g[1] <= "C007" <= g[2]]
    assert 2 <= len(holding) <= 3, groups  # one or two in each input's sorted run
    engine.close()


DAY_OF_RATES = dt.datetime(2026, 11, 1, 18, tzinfo=dt.UTC)


def test_a_merge_writes_row_groups_of_at_most_merge_row_group_rows(tmp_path: Path) -> None:
    """DuckDB's writer holds a row group in memory until it is written: a merge of a table
    that sets no row group size of its own writes groups of MERGE_ROW_GROUP_ROWS rows,
    not DuckDB's 122,880 (a merge of rtc_stats took 700 MB at its peak)."""
    sink = LakeSink(tmp_path, default_registry())
    made = telemetry_batches(3, "2026-11-01", rows=MERGE_ROW_GROUP_ROWS // 2 + 1000)
    for made_batch in made:
        sink.write(made_batch)
    total = sum(b.tables["telemetry"].num_rows for b in made)
    assert total > MERGE_ROW_GROUP_ROWS + 2048
    report = Maintenance(sink.catalog, MaintenanceConfig(), node="n").run()
    sink.close()
    assert report is not None and report.ok
    engine = QueryEngine(tmp_path, default_registry())
    listed = engine.snapshot()["telemetry"]
    engine.close()
    assert len(listed) == 1, listed  # the three files merged
    groups = duckdb.execute(
        "SELECT row_group_id, any_value(row_group_num_rows) FROM parquet_metadata(?)"
        " GROUP BY row_group_id ORDER BY row_group_id",
        [listed[0].removeprefix("file://")],
    ).fetchall()
    assert sum(n for _, n in groups) == total
    # DuckDB's writer ends a group at the first chunk (2,048 rows) that fills it
    assert len(groups) >= 2 and all(n <= MERGE_ROW_GROUP_ROWS + 2048 for _, n in groups), groups


def _sums(engine: QueryEngine) -> list[Any]:
    # each value to a decimal first: the sum is then exact whatever the order of the rows
    # (a double's sum of 450,000 rates, rounded to cents, differed by 0.01 once the day
    # was sorted: 224931777841.07 against .08)
    return engine.run(
        "SELECT count(*), count(DISTINCT (connection_id, stats_id, time)),"
        " sum(bitrate_bps::DECIMAL(38, 6)),"
        " count(*) FILTER (WHERE connection_id = 'C007') FROM rtc_rates"
    ).rows()


def test_a_clustered_tables_day_once_over_is_sorted_again_as_one_run(tmp_path: Path) -> None:
    """Once its day is over, rtc_rates' day is written again sorted by connection: one
    connection's rows then lie in one or two row groups of the day, not one per file."""
    size = default_registry()["rtc_rates"].row_group_rows
    assert size
    sink = LakeSink(tmp_path, default_registry())
    for segment in range(1, 4):
        sink.write(_rates(segment, 2 * size, seed=segment))
    sink.close()
    engine = QueryEngine(tmp_path, default_registry())
    before = _sums(engine)
    assert len(engine.snapshot()["rtc_rates"]) == 3
    engine.close()
    metrics = Metrics(CollectorRegistry())
    maintenance = Maintenance(sink.catalog, MaintenanceConfig(), node="n", metrics=metrics)

    report = maintenance.run(now=DAY_OF_RATES + dt.timedelta(days=1))

    assert report is not None and report.ok, report
    assert report.steps[1].changes["days sorted"] == 1, report.steps[1]
    engine = QueryEngine(tmp_path, default_registry())
    assert _sums(engine) == before and before[0][3] > 0
    (path,) = engine.snapshot()["rtc_rates"]
    rows = pq.read_table(path.removeprefix("file://"), columns=["connection_id", "time"])
    assert rows.to_pylist() == sorted(
        rows.to_pylist(), key=lambda r: (r["connection_id"], r["time"])
    )
    groups = _row_groups(Path(path.removeprefix("file://")))
    assert len(groups) >= 5 and [g for g in groups if g[1] <= "C007" <= g[2]] in (
        groups[i : i + k] for k in (1, 2) for i in range(len(groups))
    )
    engine.close()
    # sorted once: the next run leaves the day alone, until a file comes to it
    again = maintenance.run(now=DAY_OF_RATES + dt.timedelta(days=1, hours=2))
    assert again is not None and "days sorted" not in again.steps[1].changes
    sink = LakeSink(tmp_path, default_registry())
    sink.write(_rates(9, 100, seed=9))  # late rows of that day
    sink.close()
    late = maintenance.run(now=DAY_OF_RATES + dt.timedelta(days=1, hours=4))
    assert late is not None and late.steps[1].changes["days sorted"] == 1
    engine = QueryEngine(tmp_path, default_registry())
    assert _sums(engine)[0][0] == before[0][0] + 100
    assert len(engine.snapshot()["rtc_rates"]) == 1
    engine.close()


def _sorted_watching(root: Path, config: MaintenanceConfig) -> tuple[list[Any], set[str]]:
    """A lake of 450,000 rtc_rates rows of one day in 3 files, its day sorted by a run
    with ``config`` and ``root / "tmp"`` as its temp folder: the sums before and after,
    and the names of the files that appeared in the temp folder meanwhile."""
    sink = LakeSink(root / "lake", default_registry())
    for segment in range(1, 4):
        sink.write(_rates(segment, 150_000, seed=segment))
    sink.close()
    engine = QueryEngine(root / "lake", default_registry())
    before = _sums(engine)
    engine.close()
    temp, seen, done = root / "tmp", set[str](), threading.Event()

    def watch() -> None:
        while not done.is_set():
            if temp.is_dir():
                # the run's folder may go while it is listed (the run is over): listed again
                with contextlib.suppress(FileNotFoundError):
                    seen.update(p.name for p in temp.rglob("*") if p.is_file())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        maintenance = Maintenance(sink.catalog, config, node="n", temp_directory=temp)
        report = maintenance.run(now=DAY_OF_RATES + dt.timedelta(days=1))
    finally:
        done.set()
        watcher.join()
    assert report is not None and report.ok, report
    assert report.steps[1].changes["days sorted"] == 1, report.steps[1]
    assert list(temp.iterdir()) == []  # the run's own folder removed after it
    engine = QueryEngine(root / "lake", default_registry())
    after = _sums(engine)
    (path,) = engine.snapshot()["rtc_rates"]
    engine.close()
    rows = pq.read_table(path.removeprefix("file://"), columns=["connection_id", "time"])
    keys = list(zip(rows["connection_id"].to_pylist(), rows["time"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    return [before, after], seen


def test_maintenance_keeps_to_its_memory_limit_and_spills_into_its_own_folder(
    tmp_path: Path,
) -> None:
    """Maintenance's DuckDB keeps to ``lake.maintenance.memory_limit`` (by default DuckDB
    would take up to 80 % of the host's memory beside the node's ingest): a closed day's
    sort larger than the limit spills into the folder it is given (DATA_DIR/maintenance-tmp
    in ``rtclake run`` and ``rtclake maintain``), not into ``.tmp`` of the working folder,
    and the day comes out whole and sorted. Under the default limit the same sort stays
    in memory."""
    (before, after), spilled = _sorted_watching(
        tmp_path / "small", MaintenanceConfig(memory_limit=64 * 1024 * 1024)
    )
    assert after == before and before[0][0] == 450_000
    assert any(name.startswith("duckdb_temp") for name in spilled), spilled
    (before, after), kept = _sorted_watching(tmp_path / "default", MaintenanceConfig())
    assert after == before and not kept, kept


def _wide_stats(segment: int, n: int) -> Batch:
    """``n`` rtc_stats rows with every one of its ~170 columns filled."""
    schema = default_registry()["rtc_stats"].stored_schema
    rng = np.random.default_rng(segment)
    start = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC)
    times = [
        start + dt.timedelta(milliseconds=int(ms)) for ms in range(segment * n, (segment + 1) * n)
    ]
    columns: dict[str, Any] = {}
    for f in schema:
        if pa.types.is_timestamp(f.type):
            columns[f.name] = pa.array(times, f.type)
        elif pa.types.is_string(f.type):
            columns[f.name] = pa.array([f"{f.name}-{int(v)}" for v in rng.integers(0, 10**9, n)])
        elif pa.types.is_boolean(f.type):
            columns[f.name] = pa.array(rng.integers(0, 2, n).astype(bool))
        else:
            columns[f.name] = pa.array(rng.integers(0, 10**9, n)).cast(f.type)
    return Batch("node", "wide", segment, {"rtc_stats": pa.table(columns, schema=schema)})


def test_a_merge_beyond_maintenances_memory_limit_fails_naming_the_setting(
    tmp_path: Path,
) -> None:
    """A wide table's merge needs memory whatever the limit (DuckDB's Parquet writer holds
    a row group of every column); under a limit too small for it the step fails, says
    which setting to raise, and leaves the lake as it was."""
    sink = LakeSink(tmp_path / "lake", default_registry())
    for segment in (1, 2):
        sink.write(_wide_stats(segment, 15_000))
    sink.close()
    config = MaintenanceConfig(memory_limit=64 * 1024 * 1024)
    maintenance = Maintenance(sink.catalog, config, node="n", temp_directory=tmp_path / "tmp")

    report = maintenance.run()

    assert report is not None and not report.ok
    error = report.steps[1].error or ""
    assert "Out of Memory" in error and error.endswith(
        "(lake.maintenance.memory_limit is 64.0 MiB)"
    )
    engine = QueryEngine(tmp_path / "lake", default_registry())
    assert engine.run("SELECT count(*) FROM rtc_stats").rows() == [[30_000]]
    assert len(engine.snapshot()["rtc_stats"]) == 2
    engine.close()


@pytest.fixture
def pg_catalog_url() -> Iterator[str]:
    """A PostgreSQL catalog in a database of the test's own, dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql

    from tests.test_maintenance import ADMIN

    name = f"rtclake_sink_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield ADMIN.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_one_record_committed_by_two_nodes_at_once_is_stored_once(
    tmp_path: Path, pg_catalog_url: str
) -> None:
    """Two nodes on one PostgreSQL catalog each hold the same record (a client's retry
    against another node, a report by webhook to one and by log to the other) and
    commit it at the same moment. Each transaction's repeat check had read the lake
    before the other's commit, and both had stored it."""
    registry = default_registry()
    sinks = [LakeSink(tmp_path / "lake", registry, catalog=pg_catalog_url) for _ in range(2)]
    for sink in sinks:
        sink.start()
    rounds = 12
    errors: list[BaseException] = []
    for n in range(rounds):
        record = b'{"time": "2026-11-01T10:00:%02dZ", "device_id": "race"}' % n
        made = batch(n + 1, record)
        gate = threading.Barrier(2)

        def commit(i: int, made: Batch = made, gate: threading.Barrier = gate) -> None:
            try:
                gate.wait()
                sinks[i].write(Batch(f"node{i}", "r", made.segment, made.tables))
            except BaseException as exc:  # pragma: no cover - shown by the assert
                errors.append(exc)

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    for sink in sinks:
        sink.close()
    engine = QueryEngine(tmp_path / "lake", registry, catalog=pg_catalog_url)
    rows = engine.run("SELECT count(*), count(DISTINCT time) FROM telemetry").rows()
    engine.close()
    assert rows == [[rounds, rounds]]


def test_a_read_before_an_imports_rows_that_fails_leaves_them_as_derived(tmp_path: Path) -> None:
    """``Rollup.continues`` only advises (maintenance folds the day regardless): a failed
    read of the lake leaves the rows as they were derived, and no transaction fails."""
    import dataclasses

    from rtclake.tables import LakeRows

    asked: list[str] = []

    def continues(read: LakeRows, rows: pa.Table) -> pa.Table:
        asked.append("read")
        read("no_such_column", "true", [])  # a binder error
        raise AssertionError("not reached")

    tables = default_registry()
    spans = tables["connection_spans"]
    assert spans.rollup is not None
    rollup = dataclasses.replace(spans.rollup, continues=continues)
    table = dataclasses.replace(spans, rollup=rollup)
    sink = LakeSink(tmp_path, tables)
    at = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    row = {"connection_id": "c", "time": at, "last_time": at, "received_at": at,
           "source": "import", "stream": "s", "kind": "connection_spans", "opens": True,
           "starts": True}  # fmt: skip
    (part,) = sink._parts(table, pa.Table.from_pylist([row], schema=table.stored_schema))
    (kept,) = sink._continued(sink._connection(), table, [part])
    assert asked == ["read"] and kept is part
    sink.write(batch(1, lines(1)))  # the connection still takes a transaction
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 1, 1]]
