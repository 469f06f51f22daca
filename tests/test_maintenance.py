"""The lake's maintenance on real catalogs (SQLite in the test's folder, PostgreSQL in a
database of the test's own): retention takes exactly the expired date partitions, a merge
keeps every row in fewer files, expiring and cleanup take replaced files off the disk and
leave what is not DuckLake's, all of it beside a writer that keeps committing; and one
node at a time leads, as ``rtclake maintain`` shows."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import psycopg
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql

from rtclake.catalog import default_registry
from rtclake.errors import ConfigError
from rtclake.lake.catalog import WRITE_LOCK_SUFFIX, Catalog, WriteLock, date_column
from rtclake.lake.maintenance import (
    LOCK_SUFFIX,
    FileLock,
    Maintenance,
    MaintenanceConfig,
    MaintenanceReport,
    cutoff_date,
)
from rtclake.lake.sink import LakeSink
from rtclake.lake.storage import LocalStorage, S3Options, storage_for
from rtclake.metrics import Metrics
from rtclake.tables import TableRegistry
from tests.test_query import telemetry_batches

ADMIN = os.environ.get(
    "RTCLAKE_TEST_POSTGRESQL_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DAY0 = dt.date(2026, 1, 1)
REGISTRY = default_registry()
TABLES = TableRegistry([REGISTRY["telemetry"], REGISTRY["events"]])


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def sqlite_catalog(tmp_path: Path) -> Catalog:
    root = tmp_path / "lake"
    return Catalog(f"sqlite:{root / 'catalog.sqlite'}", LocalStorage(root), TABLES)


@pytest.fixture
def pg_catalog(tmp_path: Path) -> Iterator[Catalog]:
    """A catalog in a PostgreSQL database of the test's own, dropped afterwards."""
    name = f"rtclake_maint_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    yield Catalog(url, LocalStorage(tmp_path / "lake"), TABLES)
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest) -> Catalog:
    fixture = "sqlite_catalog" if request.param == "sqlite" else "pg_catalog"
    result: Catalog = request.getfixturevalue(fixture)
    return result


def rows(table: str, day: int, n: int, first: int) -> pa.Table:
    """``n`` rows of ``table`` on the date DAY0 + ``day``, record ids ``first``.., one
    second apart; with the ``date`` column the lake is partitioned by."""
    schema = REGISTRY[table].stored_schema
    start = dt.datetime.combine(DAY0 + dt.timedelta(days=day), dt.time(), dt.UTC)
    columns = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["record_id"] = pa.array([f"{table}-{first + i}" for i in range(n)])
    times = pa.array([start + dt.timedelta(seconds=first % 80000 + i) for i in range(n)],
                     pa.timestamp("us", tz="UTC"))  # fmt: skip
    columns["time"] = columns["received_at"] = times
    for name in ("source", "stream", "kind"):
        columns[name] = pa.array(["test"] * n)
    stored = pa.table(columns, schema=schema)
    return stored.append_column("date", date_column(stored))


def insert(con: Any, table: str, batch: pa.Table) -> None:
    """One commit of ``batch``."""
    con.register("_batch", batch)
    try:
        con.execute(f'INSERT INTO lake."{table}" BY NAME SELECT * FROM _batch')
    finally:
        con.unregister("_batch")


def fill(con: Any, table: str, days: range, commits: int, size: int) -> int:
    """``commits`` commits of ``size`` rows per date; returns the rows written."""
    written = 0
    for day in days:
        for _ in range(commits):
            insert(con, table, rows(table, day, size, day * 100_000 + written))
            written += size
    return written


def per_date(con: Any, table: str) -> dict[dt.date, int]:
    found = con.execute(f'SELECT date, count(*) FROM lake."{table}" GROUP BY 1').fetchall()
    return dict(found)


def files(con: Any, table: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = con.execute(
        "SELECT data_file, delete_file FROM ducklake_list_files('lake', ?)", [table]
    ).fetchall()
    return found


def checksum(con: Any, table: str) -> tuple[int, int, int]:
    """Rows, distinct record ids, and the sum of the times in microseconds."""
    row = con.execute(
        f'SELECT count(*), count(DISTINCT record_id), sum(epoch_us(time)) FROM lake."{table}"'
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2] or 0)


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def changes(report: MaintenanceReport | None, step: str) -> dict[str, int]:
    """What one step of a run that led and succeeded changed."""
    assert report is not None and report.ok, report
    found = report.step(step)
    assert found is not None
    return found.changes


def open_lake(catalog: Catalog) -> Any:
    con = catalog.connect()
    catalog.ensure_tables(con)
    return con


class Writer(threading.Thread):
    """Commits a batch of ``table`` every ``pause`` seconds on a connection of its own, as
    the lake sink does; a commit the catalog refuses (busy, conflict) is tried again, as
    the delivery retries a batch.

    Not back to back: on a SQLite catalog a commit fails while another connection's
    commit holds the file, and DuckLake's merge, whose transaction lasts as long as
    writing the merged files, lost every attempt for a minute to a writer committing
    every 5 ms (the lake sink commits a segment at a time: seconds apart)."""

    def __init__(
        self, catalog: Catalog, table: str, day: int, size: int = 5, pause: float = 0.1
    ) -> None:
        super().__init__(daemon=True)
        self.catalog, self.table, self.day, self.size = catalog, table, day, size
        self.pause = pause
        self.committed = 0
        self.times: list[float] = []  # when each commit returned (time.monotonic)
        self.retries = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        con = self.catalog.connect()
        try:
            first = 9_000_000
            while not self.stop.is_set():
                batch = rows(self.table, self.day, self.size, first)
                for _attempt in range(500):
                    try:
                        insert(con, self.table, batch)
                        break
                    except duckdb.Error:
                        self.retries += 1
                        with contextlib.suppress(duckdb.Error):
                            con.execute("ROLLBACK")
                        time.sleep(0.005)
                else:
                    raise RuntimeError("the writer gave up")
                first += self.size
                self.committed += self.size
                self.times.append(time.monotonic())
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc
        finally:
            con.close()

    def wait_for(self, rows: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.committed < rows and self.error is None:
            assert time.monotonic() < deadline, "the writer is stuck"
            time.sleep(0.01)

    def committed_between(self, start: float, end: float) -> bool:
        return any(start <= t <= end for t in list(self.times))

    def finish(self) -> int:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error
        return self.committed


# -- the settings ---------------------------------------------------------------------------


def test_nodes_starting_together_on_a_new_postgresql_catalog_all_attach(
    pg_catalog: Catalog,
) -> None:
    """The first attach of a new PostgreSQL catalog creates DuckLake's tables; three
    nodes doing it at once all get a connection (before: two of three failed, every
    time, with "relation ducklake_metadata already exists")."""
    barrier = threading.Barrier(3)
    errors: list[str] = []
    made: list[set[str]] = []

    def start() -> None:
        node = Catalog(pg_catalog.url, pg_catalog.storage, TABLES)
        barrier.wait()
        try:
            con = node.connect(threads=1)
            try:
                node.ensure_tables(con)
                made.append(set(node.columns(con)))
            finally:
                con.close()
        except Exception as exc:  # collected: the assertion names it
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(made) == 3
    assert all({"telemetry", "events", "rtclake_ledger"} <= tables for tables in made)


def test_a_refused_catalog_connection_does_not_show_its_password(tmp_path: Path) -> None:
    """PostgreSQL's refusal quotes the URL whole: the password is masked in the error
    (and so in every log line and message made from it)."""
    secret = "s3cret-" + uuid.uuid4().hex[:6]
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgres://postgres:{secret}@127.0.0.1:{port}/nowhere"
    node = Catalog(url, LocalStorage(tmp_path / "lake"), TABLES)
    assert secret not in str(node.url)
    with pytest.raises(duckdb.Error) as caught:
        node.connect(threads=1)
    text = str(caught.value)
    assert "Connection refused" in text or "connection" in text.lower()
    assert secret not in text
    assert "postgres:***@127.0.0.1" in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_cutoff_keeps_a_partition_until_its_whole_day_is_past_the_ttl() -> None:
    at = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
    assert cutoff_date(at, 2) == dt.date(2026, 1, 3)  # 01-03 ends after 01-03T12: kept
    assert cutoff_date(at, 1.5) == dt.date(2026, 1, 4)  # 01-03 ended at 01-04T00 <= 01-04T00
    midnight = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    assert cutoff_date(midnight, 1) == dt.date(2026, 1, 4)  # 01-03 ended exactly at the TTL
    east = dt.datetime(2026, 1, 5, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert cutoff_date(east, 1) == dt.date(2026, 1, 3)  # counted in UTC (01-04T23)


def test_the_settings_refuse_bad_retention_and_unknown_tables(
    sqlite_catalog: Catalog,
) -> None:
    config = MaintenanceConfig.model_validate(
        {"retention": {"telemetry": 30, "*": 365}, "interval": "30m", "cleanup_after": "2h"}
    )
    assert (config.ttl("telemetry"), config.ttl("events")) == (30, 365)
    assert (config.interval, config.cleanup_after) == (1800, 7200)
    assert MaintenanceConfig().ttl("telemetry") is None  # no entry: kept forever
    for bad in ({"telemetry": 0}, {"telemetry": -1}, {"tele metry": 3}):
        with pytest.raises(ValueError):
            MaintenanceConfig.model_validate({"retention": bad})
    with pytest.raises(ValueError, match="extra"):
        MaintenanceConfig.model_validate({"ttl": 3})
    with pytest.raises(ConfigError, match="no table telemetri"):
        Maintenance(sqlite_catalog, MaintenanceConfig(retention={"telemetri": 3}), node="a")


# -- retention ----------------------------------------------------------------------------


def test_retention_deletes_exactly_the_expired_partitions(sqlite_catalog: Catalog) -> None:
    con = open_lake(sqlite_catalog)
    fill(con, "telemetry", range(5), commits=5, size=10)
    fill(con, "events", range(5), commits=2, size=7)
    before = per_date(con, "telemetry")
    events_before = per_date(con, "events")
    metrics = Metrics(CollectorRegistry())
    config = MaintenanceConfig(retention={"telemetry": 2, "*": 3}, merge=False)
    now = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)  # telemetry from 01-03, events 01-02

    report = Maintenance(sqlite_catalog, config, node="a", metrics=metrics).run(now)

    assert report is not None and report.ok
    con.close()
    con = sqlite_catalog.connect()  # what a new reader sees
    kept = {d: n for d, n in before.items() if d >= dt.date(2026, 1, 3)}
    assert per_date(con, "telemetry") == kept and len(kept) == 3
    events_kept = {d: n for d, n in events_before.items() if d >= dt.date(2026, 1, 2)}
    assert per_date(con, "events") == events_kept and len(events_kept) == 4
    listed = files(con, "telemetry")
    assert all(delete is None for _, delete in listed)  # whole files dropped, no deletes
    assert not [f for f, _ in listed if "date=2026-01-01" in f or "date=2026-01-02" in f]
    assert len(listed) == 3 * 5
    assert not [f for f, _ in files(con, "events") if "date=2026-01-01" in f]
    step = report.step("retention")
    assert step is not None
    assert step.changes == {"rows deleted": 2 * 50 + 14, "partitions deleted": 3,
                            "files removed": 2 * 5 + 2}  # fmt: skip
    assert counter(metrics, "rtclake_maintenance_rows_deleted_total", node="a",
                   table="telemetry") == 100  # fmt: skip
    assert counter(metrics, "rtclake_maintenance_files_removed_total", node="a",
                   step="retention") == 12  # fmt: skip
    assert counter(metrics, "rtclake_maintenance_runs_total", node="a", outcome="done") == 1
    assert counter(metrics, "rtclake_maintenance_last_run_timestamp_seconds", node="a") > 0

    again = Maintenance(sqlite_catalog, config, node="a").run(now)
    assert changes(again, "retention")["rows deleted"] == 0
    con.close()


def test_retention_leaves_no_delete_files_behind(sqlite_catalog: Catalog) -> None:
    """rtclake's readers take whole files: should a table have delete files (here from a
    row deleted by hand), retention writes those files again without them."""
    con = open_lake(sqlite_catalog)
    fill(con, "telemetry", range(3), commits=2, size=4)
    con.execute("DELETE FROM lake.telemetry WHERE record_id = 'telemetry-200017'")
    assert [d for _, d in files(con, "telemetry") if d is not None]
    before = per_date(con, "telemetry")
    con.close()
    config = MaintenanceConfig(retention={"telemetry": 1}, merge=False)

    report = Maintenance(sqlite_catalog, config, node="a").run(
        dt.datetime(2026, 1, 3, 1, 0, tzinfo=dt.UTC)  # 01-01 goes
    )

    assert changes(report, "retention") == {"rows deleted": 8, "partitions deleted": 1,
                                            "files removed": 2, "files rewritten": 1}  # fmt: skip
    con = sqlite_catalog.connect()
    assert all(d is None for _, d in files(con, "telemetry"))
    assert per_date(con, "telemetry") == {d: n for d, n in before.items() if d.day > 1}
    assert before[dt.date(2026, 1, 3)] == 7
    con.close()


# -- merge --------------------------------------------------------------------------------


def test_a_merge_keeps_every_row_in_fewer_files(catalog: Catalog) -> None:
    con = open_lake(catalog)
    fill(con, "telemetry", range(3), commits=12, size=4)
    before = checksum(con, "telemetry")
    assert len(files(con, "telemetry")) == 36
    metrics = Metrics(CollectorRegistry())

    report = Maintenance(catalog, MaintenanceConfig(), node="a", metrics=metrics).run()

    assert report is not None and report.ok
    con.close()
    con = catalog.connect()
    assert checksum(con, "telemetry") == before == (144, 144, before[2])
    listed = files(con, "telemetry")
    assert len(listed) == 3 and all(d is None for _, d in listed)  # one file per date
    step = report.step("merge")
    assert step is not None and step.changes["files before"] == 36
    assert step.changes["files after"] == 3
    assert counter(metrics, "rtclake_maintenance_files_removed_total", node="a",
                   step="merge") == 33  # fmt: skip
    assert (
        metrics.registry.get_sample_value(
            "rtclake_maintenance_step_seconds_count", {"node": "a", "step": "merge"}
        )
        == 1
    )
    con.close()


def test_retention_and_merge_beside_a_writer_lose_and_repeat_nothing(catalog: Catalog) -> None:
    con = open_lake(catalog)
    fill(con, "telemetry", range(4), commits=8, size=5)
    base = per_date(con, "telemetry")
    writer = Writer(catalog, "telemetry", day=4)
    writer.start()
    writer.wait_for(15)  # committing by now
    config = MaintenanceConfig(retention={"telemetry": 3})
    now = dt.datetime(2026, 1, 5, 6, 0, tzinfo=dt.UTC)  # keeps 01-02 on

    maintenance = Maintenance(catalog, config, node="a")
    try:
        reports = []
        for _ in range(30):  # until a commit of the writer fell inside a run
            began = time.monotonic()
            reports.append(maintenance.run(now))
            if writer.committed_between(began, time.monotonic()):
                break
        else:
            pytest.fail("the writer never committed while maintenance ran")
        writer.wait_for(writer.committed + 15)  # and it goes on after
    finally:
        written = writer.finish()

    assert all(r is not None and r.ok for r in reports), reports
    assert changes(reports[0], "retention") == {"rows deleted": 40, "partitions deleted": 1,
                                                "files removed": 8}  # fmt: skip
    con.close()
    con = catalog.connect()
    kept = {d: n for d, n in base.items() if d >= dt.date(2026, 1, 2)}
    assert per_date(con, "telemetry") == {**kept, dt.date(2026, 1, 5): written}
    total, distinct, _ = checksum(con, "telemetry")
    assert total == distinct == sum(kept.values()) + written  # none lost, none twice
    by_date: dict[str, int] = {}
    for path, delete in files(con, "telemetry"):
        assert delete is None
        date = path.split("date=")[1][:10]
        by_date[date] = by_date.get(date, 0) + 1
    assert "2026-01-01" not in by_date
    assert [by_date[d] for d in ("2026-01-02", "2026-01-03", "2026-01-04")] == [1, 1, 1]
    con.close()


def test_on_sqlite_a_merge_beside_a_writer_committing_back_to_back_gets_through_at_once(
    tmp_path: Path,
) -> None:
    """A SQLite catalog refuses a commit when another connection committed since the
    committing transaction began. The lake sink and maintenance take the catalog's write
    lock around each transaction, so neither is refused: here the sink commits batch after
    batch without a pause (rtclake run's writer under load), and each merge still gets
    through on its first try. Without the lock it was refused again and again (in the HTTP
    benchmark: 10 tries, 46 s); here nothing of the writer's is lost or stored twice."""
    registry = default_registry()
    sink = LakeSink(tmp_path / "lake", registry)
    sink.start()
    batches = telemetry_batches(400, "2026-11-24")
    for made in batches[:12]:  # files to merge
        sink.write(made)
    written = 12 * 20
    stop = threading.Event()
    during: list[float] = []  # when each of the writer's commits returned
    failure: list[BaseException] = []

    def writer() -> None:
        nonlocal written
        try:
            for made in batches[12:]:
                if stop.is_set():
                    break
                sink.write(made)
                written += 20
                during.append(time.monotonic())
        except BaseException as exc:
            failure.append(exc)

    maintenance = Maintenance(Catalog(sink.catalog.url, sink.storage, registry),
                              MaintenanceConfig(), node="a")  # fmt: skip
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    reports = []
    try:
        while len(during) < 3:  # committing back to back by now
            time.sleep(0.01)
        for _ in range(20):  # until a commit of the writer fell inside a run
            began = time.monotonic()
            reports.append(maintenance.run(dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)))
            ended = time.monotonic()
            if any(began <= t <= ended for t in list(during)):
                break
        else:
            pytest.fail("the writer never committed while maintenance ran")
        count = len(during)
        while len(during) < count + 3 and not failure and thread.is_alive():  # it goes on
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(60)
        sink.close()
    assert not failure, failure
    for report in reports:
        assert report is not None and report.ok, report
        merge = report.step("merge")
        assert merge is not None and merge.retries == 0, merge
    first = reports[0].step("merge") if reports[0] else None
    assert first is not None and first.changes["files after"] < first.changes["files before"]
    con = maintenance.catalog.connect()
    try:
        total, distinct, _ = checksum(con, "telemetry")
    finally:
        con.close()
    assert total == distinct == written


def test_the_catalogs_write_lock_takes_turns_across_instances_and_nests(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite.write.lock"
    first, second = WriteLock(path), WriteLock(path)
    order: list[str] = []
    with first.holding():
        with first.holding():  # nested: taken once, no deadlock
            order.append("first")

        def other() -> None:
            with second.holding():
                order.append("second")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        assert order == ["first"]  # the other instance waits
        order.append("first again")
    thread.join(10)
    assert order == ["first", "first again", "second"]
    impatient = WriteLock(path, wait=0.05)
    with first.holding(), impatient.holding():  # gives up waiting, goes ahead
        pass


# -- expire and cleanup -------------------------------------------------------------------


def test_expire_and_cleanup_delete_replaced_files_and_only_ducklakes_orphans(
    catalog: Catalog,
) -> None:
    con = open_lake(catalog)
    fill(con, "telemetry", range(2), commits=6, size=3)
    before = checksum(con, "telemetry")
    con.close()
    root = Path(catalog.storage.root)
    old = time.time() - 7200
    orphan = root / "main" / "telemetry" / "date=2026-01-01" / f"ducklake-{uuid.uuid4()}.parquet"
    orphan.write_bytes(b"PAR1 never committed")
    foreign = root / "notes.txt"  # not DuckLake's: left alone
    foreign.write_text("kept")
    for path in (orphan, foreign):
        os.utime(path, (old, old))
    config = MaintenanceConfig(expire_after=0, cleanup_after=0)
    maintenance = Maintenance(catalog, config, node="a")
    with maintenance.leader():  # the lock file beside a SQLite catalog exists now too
        pass
    # a day on: a SQLite catalog expires and cleans up by whole days (see _older_than)
    report = maintenance.run(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    assert report is not None and report.ok, report and report.steps
    on_disk = sorted(str(p) for p in (root / "main" / "telemetry").rglob("*.parquet"))
    con = catalog.connect()
    live = sorted(path for path, _ in files(con, "telemetry"))
    assert on_disk == live and len(live) == 2  # the 12 replaced files and the orphan gone
    assert not orphan.exists() and foreign.read_text() == "kept"
    if catalog.url.kind == "sqlite":  # the catalog and its lock beside it are not orphans
        assert Path(catalog.url.target).exists()
        assert Path(catalog.url.target + LOCK_SUFFIX).exists()
        assert Path(catalog.url.target + WRITE_LOCK_SUFFIX).exists()
    assert checksum(con, "telemetry") == before
    expire, cleanup = report.step("expire"), report.step("cleanup")
    assert expire is not None and expire.changes["snapshots expired"] > 12
    assert cleanup is not None and cleanup.changes["files deleted"] == 12
    assert cleanup.changes["orphans deleted"] == 1
    con.close()


def new_bucket(s3_endpoint: str) -> tuple[Any, str, S3Options]:
    """A bucket of the test's own on the S3 server: a client, its name, the lake's options."""
    creds = {"aws_access_key_id": "k", "aws_secret_access_key": "s"}
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **creds)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    raw.create_bucket(Bucket=bucket)
    options = S3Options(endpoint_url=s3_endpoint, access_key_id="k", secret_access_key="s",
                        region="us-east-1")  # fmt: skip
    return raw, bucket, options


def test_a_catalog_left_out_neither_takes_a_lakes_files_for_orphans_nor_writes_beside(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """A node or a host where lake.catalog was left out gets a SQLite catalog of its own
    over the lake's data path. Its cleanup had deleted every file of the lake as an
    orphan, and its node had stored batches no other node saw."""
    _, bucket, options = new_bucket(s3_endpoint)
    for root in (str(tmp_path / "lake"), f"s3://{bucket}/x"):
        theirs = Catalog(f"sqlite:{tmp_path / uuid.uuid4().hex}.sqlite",
                         storage_for(root, options), TABLES)  # fmt: skip
        con = open_lake(theirs)
        fill(con, "telemetry", range(2), commits=2, size=3)
        before = checksum(con, "telemetry")
        con.close()
        stray = Catalog(f"sqlite:{tmp_path / 'stray.sqlite'}", storage_for(root, options),
                        TABLES)  # fmt: skip
        Path(stray.url.target).unlink(missing_ok=True)

        config = MaintenanceConfig(expire_after=0, cleanup_after=0)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        report = Maintenance(stray, config, node="stray").run(later)

        assert report is not None and report.ok
        assert changes(report, "cleanup") == {"files deleted": 0, "orphans deleted": 0}
        cleanup = report.step("cleanup")
        assert cleanup is not None and "another catalog's" in " ".join(cleanup.details)
        con = theirs.connect()
        assert checksum(con, "telemetry") == before  # every file still there
        con.close()
        con = stray.connect()
        with pytest.raises(ConfigError, match=r"lake.catalog .* holds no table, but lake.root"):
            stray.ensure_tables(con)  # a node's lake sink: refused at its start
        con.close()


def test_nothing_is_deleted_before_cleanup_after(catalog: Catalog) -> None:
    con = open_lake(catalog)
    fill(con, "telemetry", range(1), commits=4, size=3)
    con.close()
    root = Path(catalog.storage.root)
    uploading = root / "main" / "telemetry" / "date=2026-01-01" / f"ducklake-{uuid.uuid4()}.parquet"
    uploading.write_bytes(b"PAR1 not committed yet")  # a writer's file before its commit
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
    config = MaintenanceConfig(expire_after=0, cleanup_after=3600)

    report = Maintenance(catalog, config, node="a").run(later)

    assert report is not None and report.ok
    on_disk = list((root / "main" / "telemetry").rglob("*.parquet"))
    assert len(on_disk) == 6  # 4 replaced, 1 merged, 1 uploading
    assert uploading.exists()
    cleanup = report.step("cleanup")
    assert cleanup is not None and cleanup.changes == {"files deleted": 0, "orphans deleted": 0}


def test_a_lake_on_s3_is_merged_and_cleaned_up_too(tmp_path: Path, s3_endpoint: str) -> None:
    raw, bucket, options = new_bucket(s3_endpoint)
    storage = storage_for(f"s3://{bucket}/x", options)
    lake = Catalog(f"sqlite:{tmp_path / 'catalog.sqlite'}", storage, TABLES)
    con = open_lake(lake)
    fill(con, "telemetry", range(2), commits=4, size=3)
    before = checksum(con, "telemetry")
    con.close()
    orphan = f"x/main/telemetry/date=2026-01-01/ducklake-{uuid.uuid4()}.parquet"
    raw.put_object(Bucket=bucket, Key=orphan, Body=b"never committed")
    raw.put_object(Bucket=bucket, Key="x/README", Body=b"not DuckLake's")
    config = MaintenanceConfig(expire_after=0, cleanup_after=0)

    report = Maintenance(lake, config, node="a").run(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))

    assert changes(report, "merge") == {"files before": 8, "files after": 2}
    assert changes(report, "cleanup") == {"files deleted": 8, "orphans deleted": 1}
    listed = raw.list_objects_v2(Bucket=bucket)["Contents"]
    table = "x/main/telemetry/"
    parquet = sorted(
        f"s3://{bucket}/{o['Key']}"
        for o in listed
        if o["Key"].startswith(table) and o["Key"].endswith(".parquet")
    )
    con = lake.connect()
    assert parquet == sorted(path for path, _ in files(con, "telemetry"))
    assert "x/README" in {o["Key"] for o in listed}
    assert checksum(con, "telemetry") == before
    con.close()


def test_a_sqlite_catalog_expires_snapshots_of_earlier_days_only(
    sqlite_catalog: Catalog,
) -> None:
    """DuckLake compares a SQLite catalog's times by date: asked for snapshots older than
    an hour ago it takes all of today's. Maintenance asks for the end of yesterday."""
    con = open_lake(sqlite_catalog)
    fill(con, "telemetry", range(1), commits=3, size=2)
    ids = "SELECT list(snapshot_id ORDER BY snapshot_id) FROM ducklake_snapshots('lake')"
    snapshots = set(con.execute(ids).fetchone()[0])
    con.close()
    config = MaintenanceConfig(expire_after=3600, merge=False)
    report = Maintenance(sqlite_catalog, config, node="a").run()
    assert changes(report, "expire") == {"snapshots expired": 0}
    con = sqlite_catalog.connect()
    assert snapshots <= set(con.execute(ids).fetchone()[0])  # every one still there
    an_hour_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    what_ducklake_would_take = con.execute(
        "SELECT count(*) FROM ducklake_expire_snapshots('lake', dry_run => true,"
        " older_than => ?::TIMESTAMPTZ)",
        [an_hour_ago],
    ).fetchone()
    con.close()
    if dt.datetime.now(dt.UTC).hour >= 1:  # an hour ago was today
        assert what_ducklake_would_take is not None and what_ducklake_would_take[0] > 0


# -- one leader ---------------------------------------------------------------------------


def test_one_node_leads_while_the_others_stand_aside(catalog: Catalog) -> None:
    open_lake(catalog).close()
    metrics = Metrics(CollectorRegistry())
    first = Maintenance(catalog, MaintenanceConfig(), node="a", metrics=metrics)
    second = Maintenance(catalog, MaintenanceConfig(), node="b", metrics=metrics)
    third = Maintenance(catalog, MaintenanceConfig(), node="c", metrics=metrics)

    with first.leader() as held:
        assert held
        assert second.run() is None and third.run() is None
        named = "a (pid" if catalog.url.kind == "sqlite" else "rtclake maintenance a"
        assert second.holder is not None and second.holder.startswith(named)
        with second.leader() as also:
            assert not also

    report = second.run()
    assert report is not None and report.ok
    assert [s.step for s in report.steps] == ["retention", "merge", "expire", "cleanup"]
    for node, done, refused in (("a", 0, 0), ("b", 1, 1), ("c", 0, 1)):
        assert counter(metrics, "rtclake_maintenance_runs_total", node=node,
                       outcome="done") == done  # fmt: skip
        assert counter(metrics, "rtclake_maintenance_runs_total", node=node,
                       outcome="not_leader") == refused  # fmt: skip


def test_of_nodes_on_one_schedule_one_maintains_the_lake_per_interval(
    pg_catalog: Catalog,
) -> None:
    con = open_lake(pg_catalog)
    fill(con, "telemetry", range(1), commits=3, size=2)
    con.close()
    metrics = Metrics(CollectorRegistry())
    config = MaintenanceConfig(interval=600)
    nodes = {n: Maintenance(pg_catalog, config, node=n, metrics=metrics) for n in "abc"}
    at = dt.datetime.now(dt.UTC)

    first = [nodes[n].run_if_due(at + dt.timedelta(seconds=i)) for i, n in enumerate("abc")]
    assert first[0] is not None and first[1:] == [None, None]
    assert changes(first[0], "merge") == {"files before": 3, "files after": 1}
    later = nodes["b"].run_if_due(at + dt.timedelta(seconds=600))  # a is gone, say
    assert later is not None and later.ok

    def runs(node: str, outcome: str) -> float:
        return counter(metrics, "rtclake_maintenance_runs_total", node=node, outcome=outcome)

    assert [runs(n, "done") for n in "abc"] == [1, 1, 0]
    assert [runs(n, "skipped") for n in "abc"] == [0, 1, 1]
    con = pg_catalog.connect()
    recorded = con.execute("SELECT node, ok FROM lake.rtclake_maintenance ORDER BY started")
    assert recorded.fetchall() == [("a", True), ("b", True)]
    con.close()


def test_the_file_lock_is_freed_when_its_holder_goes(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite.maintenance.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from rtclake.lake.maintenance import FileLock;"
         f" lock = FileLock({str(path)!r}, 'other'); assert lock.acquire();"
         " print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = FileLock(path, "me")
        assert not lock.acquire() and lock.holder is not None and "other" in lock.holder
    finally:
        holder.kill()
        holder.wait()
    assert lock.acquire()  # the kernel let go of the dead holder's lock
    lock.release()


# -- rtclake maintain ---------------------------------------------------------------------


def rtclake(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "rtclake", *args], cwd=cwd, env={**base, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_rtclake_maintain_merges_and_says_when_another_node_leads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = rtclake("maintain", cwd=tmp_path, RTCLAKE_DATA_DIR=str(data))
    assert out.returncode == 1 and "no lake at" in out.stderr
    root = data / "lake"
    lake = Catalog(f"sqlite:{root / 'catalog.sqlite'}", LocalStorage(root), REGISTRY)
    con = open_lake(lake)
    fill(con, "telemetry", range(2), commits=5, size=3)
    before = checksum(con, "telemetry")
    con.close()

    out = rtclake("maintain", cwd=tmp_path, RTCLAKE_DATA_DIR=str(data), RTCLAKE_NODE="n1")
    assert out.returncode == 0, out.stderr
    for step in ("retention", "merge", "expire", "cleanup"):
        assert step in out.stdout
    assert "by n1" in out.stdout
    assert "10 files before" in out.stdout and "2 files after" in out.stdout
    con = lake.connect()
    assert checksum(con, "telemetry") == before and len(files(con, "telemetry")) == 2
    con.close()

    with FileLock(str(root / "catalog.sqlite") + LOCK_SUFFIX, "n2") as held:
        assert held
        out = rtclake("maintain", cwd=tmp_path, RTCLAKE_DATA_DIR=str(data))
    assert out.returncode == 3
    assert "another node holds the maintenance lock (n2" in out.stderr
