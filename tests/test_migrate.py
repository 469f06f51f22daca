"""``rtclake migrate``: a lake of the old Hive layout (ROOT/TABLE/date=D/*.parquet, no
catalog) moved into the catalog once: repeated records stored once, by the key the old
query views hid them by; a run stopped half-way and run again neither repeats nor misses
a partition; rows the catalog already holds are not stored again; the old files are
removed only when asked, and only once committed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rtclake.lake.migrate as migration
from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.lake.catalog import Catalog
from rtclake.lake.migrate import MigrationError, migrate
from rtclake.lake.sink import LakeSink
from rtclake.lake.storage import LocalStorage
from rtclake.tables import Table, TableRegistry
from tests.test_query import telemetry_batches

REGISTRY = default_registry()
DAYS = (date(2026, 7, 24), date(2026, 7, 25))
NODE = "n1"


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def rows_of(table: Table, day: date, ids: list[int], *, received: int = 0) -> pa.Table:
    """Rows of ``table`` in the shape its old files held (its stored schema): record ``i``
    of a day always has the same key and values, so writing it twice repeats it."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    n = len(ids)
    values: dict[str, Any] = {
        "time": [start + timedelta(seconds=i) for i in ids],
        # a repeat arrived later: the copy that arrived first is the one kept
        "received_at": [start + timedelta(seconds=i, milliseconds=1 + received) for i in ids],
        "source": ["sora"] * n,
        "stream": ["s"] * n,
        "kind": [table.kind] * n,
        "type": ["t"] * n,
        "extra": [f'{{"i":{i}}}' for i in ids],
    }
    if "record_id" in table.stored_schema.names:
        values["record_id"] = [f"{day}-{i}" for i in ids]
    if table.name == "rtc_stats":
        values |= {
            "connection_id": [f"c{i % 3}" for i in ids],
            "stats_id": [f"RTCOutboundRTPVideoStream_{i}" for i in ids],
            "rtc_timestamp": [start + timedelta(seconds=i) for i in ids],
            "channel_id": ["ch"] * n,
            "bytes_sent": [1000 * i + day.day for i in ids],
        }
    if table.name == "events":
        values |= {"id": [f"e{i}" for i in ids], "channel_id": ["ch"] * n}
    schema = table.stored_schema
    columns = [pa.array(values.get(f.name, [None] * n), f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def write_old(root: Path, rows: pa.Table, table: str, day: date, seq: int) -> Path:
    """One file of the old layout, as the lake sink of earlier versions named it."""
    path = root / table / f"date={day}" / f"n1-run-{seq:012d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, path)
    return path


def old_lake(root: Path) -> dict[str, set[tuple[date, int]]]:
    """Two tables over two dates, each date in two files that share some records (a
    client's retry); returns the distinct records of each table."""
    expected: dict[str, set[tuple[date, int]]] = {}
    for name in ("events", "rtc_stats"):
        table = REGISTRY[name]
        for day in DAYS:
            write_old(root, rows_of(table, day, list(range(0, 60))), name, day, 1)
            write_old(root, rows_of(table, day, list(range(40, 100)), received=5), name, day, 2)
            expected.setdefault(name, set()).update((day, i) for i in range(100))
    return expected


def catalog_at(root: Path, registry: TableRegistry = REGISTRY) -> Catalog:
    return Catalog(f"sqlite:{root / 'catalog.sqlite'}", LocalStorage(root), registry)


def stored(catalog: Catalog, *sqls: str) -> Any:
    """The rows of each query (of the one query), on one connection: each connection
    loads DuckLake and SQLite, ~0.5 s."""
    con = catalog.connect(read_only=True)
    try:
        results = [[tuple(row) for row in con.execute(sql).fetchall()] for sql in sqls]
    finally:
        con.close()
    return results[0] if len(sqls) == 1 else results


def bytes_sent(expected: set[tuple[date, int]]) -> int:
    return sum(1000 * i + day.day for day, i in expected)


def assert_exactly_once(
    catalog: Catalog, expected: dict[str, set[tuple[date, int]]], *more: str
) -> list[list[tuple[Any, ...]]]:
    """Each expected record stored once; the rows of the ``more`` queries."""
    events, stats, *rest = stored(
        catalog,
        'SELECT date, record_id, count(*) FROM lake."events" GROUP BY ALL',
        "SELECT count(*), count(DISTINCT (connection_id, stats_id, rtc_timestamp)),"
        ' sum(bytes_sent) FROM lake."rtc_stats"',
        *more,
    )
    assert {(d, r) for d, r, _ in events} == {(d, f"{d}-{i}") for d, i in expected["events"]}
    assert {n for _, _, n in events} == {1}
    n = len(expected["rtc_stats"])
    assert stats == [(n, n, bytes_sent(expected["rtc_stats"]))]
    return rest


def test_each_record_is_stored_once_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    expected = old_lake(root)
    catalog = catalog_at(root)
    seen: list[migration.PartitionResult] = []

    report = migrate(root, catalog, node=NODE, progress=seen.append)

    dates, repeated, ledger = assert_exactly_once(
        catalog,
        expected,
        'SELECT DISTINCT date FROM lake."rtc_stats" ORDER BY 1',
        'SELECT received_at - time, count(*) FROM lake."events"'
        " WHERE time - date::TIMESTAMPTZ BETWEEN INTERVAL 40 SECOND AND INTERVAL 59 SECOND"
        " GROUP BY ALL",
        "SELECT node, run, seq, file, file_offset, rows FROM lake.rtclake_ledger ORDER BY 2, 3",
    )
    assert dates == [(d,) for d in DAYS]  # the date is the folder's
    # of a repeated record, the copy received first is kept
    assert repeated == [(timedelta(milliseconds=1), 40)]
    assert ledger == [
        (NODE, f"migrate:{t}", int(d.strftime("%Y%m%d")), str(root / t / f"date={d}"), 2, 100)
        for t in ("events", "rtc_stats")
        for d in DAYS
    ]
    assert (report.partitions_migrated, report.partitions_skipped) == (4, 0)
    assert (report.rows, report.source_rows) == (400, 480)
    assert report.tables["rtc_stats"].left_out == 40
    assert [(r.table, r.day, r.rows, r.migrated) for r in seen] == [
        (t, d, 100, True) for t in ("events", "rtc_stats") for d in DAYS
    ]
    assert report.files_removable == 8 and "can be removed" in report.next_step()
    assert f"rtclake migrate --from {report.source} --delete" in report.next_step()
    assert len(list(root.glob("*/date=*/n1-run-*.parquet"))) == 8  # left in place

    again = migrate(root, catalog, node=NODE)

    assert (again.partitions_migrated, again.partitions_skipped, again.rows) == (0, 4, 0)
    assert assert_exactly_once(catalog, expected, "SELECT count(*) FROM lake.rtclake_ledger") == [
        [(4,)]
    ]


def test_a_migration_beside_a_writer_on_the_same_sqlite_catalog_is_not_refused(
    tmp_path: Path,
) -> None:
    """``rtclake run`` writing the lake while ``rtclake migrate`` copies an old lake into
    it. A SQLite catalog refuses a commit when another connection committed since the
    transaction began: without the catalog's write lock the first partition's copy (20,000
    rows) was refused ("Failed to commit DuckLake transaction"). In turn, every partition
    is copied, each record once, and every batch of the writer's is stored."""
    root = tmp_path / "lake"
    expected: dict[str, set[tuple[date, int]]] = {}
    for name in ("events", "rtc_stats"):
        for day in DAYS:
            write_old(root, rows_of(REGISTRY[name], day, list(range(20_000))), name, day, 1)
            expected.setdefault(name, set()).update((day, i) for i in range(20_000))
    catalog = catalog_at(root)
    sink = LakeSink(root, REGISTRY, catalog=str(catalog.url))
    sink.start()
    batches = telemetry_batches(600, "2026-07-24")
    stop, commits, failure = threading.Event(), [0.0], list[BaseException]()

    def writer() -> None:
        try:
            for made in batches:
                if stop.is_set():
                    break
                sink.write(made)
                commits.append(time.monotonic())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while len(commits) < 4:  # committing back to back by now
            time.sleep(0.01)
        began = time.monotonic()
        report = migrate(root, catalog, node=NODE)
        ended = time.monotonic()
    finally:
        stop.set()
        thread.join(60)
        sink.close()
    assert not failure, failure
    assert (report.partitions_migrated, report.rows) == (4, 80_000)
    assert any(began <= t <= ended for t in commits[1:])  # the writer wrote meanwhile
    assert_exactly_once(catalog, expected)
    written = 20 * (len(commits) - 1)
    assert stored(catalog, 'SELECT count(*), count(DISTINCT device_id) FROM lake."telemetry"') == [
        (written, written)
    ]


def test_the_old_listing_does_not_see_the_catalogs_files(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    old_lake(root)
    catalog = catalog_at(root)
    migrate(root, catalog, node=NODE)

    con = catalog.connect(read_only=True)
    try:
        new = catalog.live_files(con, "rtc_stats")
    finally:
        con.close()
    assert new and all(f.startswith(str(root / "main" / "rtc_stats" / "date=")) for f in new)
    old = LocalStorage(root).files("rtc_stats")
    assert old == sorted(str(p) for p in root.glob("rtc_stats/date=*/*.parquet"))
    assert len(old) == 4 and not set(old) & set(new)
    # no table of the old layout shares the catalog's folder (S3 lists a table's prefix
    # recursively: a table called main would take in every catalog file)
    assert migration.DUCKLAKE_FOLDER not in REGISTRY.names()


def test_a_run_stopped_between_partitions_is_resumed_exactly_once(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    expected = old_lake(root)
    catalog = catalog_at(root)
    # the second partition fails after its rows were inserted, before its commit
    faults.arm("migrate.before_commit", "eio", times=1, skip=1)

    with pytest.raises(MigrationError, match=r"events/date=2026-07-25: .*injected"):
        migrate(root, catalog, node=NODE, delete=True)

    assert stored(
        catalog,
        'SELECT DISTINCT date FROM lake."events"',
        'SELECT count(*) FROM lake."rtc_stats"',
        "SELECT run, seq FROM lake.rtclake_ledger",
    ) == [[(DAYS[0],)], [(0,)], [("migrate:events", 20260724)]]
    assert len(list(root.glob("*/date=*/*.parquet"))) == 8  # nothing removed on a failure

    report = migrate(root, catalog, node=NODE)

    assert (report.partitions_migrated, report.partitions_skipped) == (3, 1)
    assert_exactly_once(catalog, expected)


def test_a_run_killed_mid_partition_is_resumed_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data" / "lake"
    expected = old_lake(root)
    env = {"RTCLAKE_DATA_DIR": str(tmp_path / "data")}
    # killed (kill -9) in the transaction of the third partition, after its rows were written
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    killed = subprocess.run(
        [sys.executable, "-m", "rtclake", "migrate"], cwd=tmp_path, capture_output=True,
        env={**base, **env, "RTCLAKE_FAULTS": "migrate.before_commit=kill@2"}, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9
    catalog = catalog_at(root)
    assert stored(catalog, "SELECT count(*) FROM lake.rtclake_ledger") == [(2,)]

    out = cli(monkeypatch, "migrate", **env)

    assert out.exit_code == 0, out.output
    assert_exactly_once(catalog, expected)
    shown = {cells[0]: cells[1:] for cells in table_rows(out.output)}
    # migrated, skipped, rows stored, left out (repeats)
    assert shown["events"] == ["0", "2", "0", "0"]
    assert shown["rtc_stats"] == ["2", "0", "200", "40"]
    assert shown["total"] == ["2", "2", "200", "40"]
    assert "the 8 old files" in out.output and "can be removed" in out.output


def table_rows(output: str) -> list[list[str]]:
    """The cells of each row of a table rich printed."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def cli(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> Any:
    """``rtclake ARGS`` in this process, with only ``env`` of rtclake's variables."""
    from typer.testing import CliRunner

    from rtclake.cli import app

    for name in [k for k in os.environ if k.startswith("RTCLAKE_")]:
        monkeypatch.delenv(name)
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120", **env})


def test_rows_the_catalog_already_holds_are_not_stored_again(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    expected = old_lake(root)
    catalog = catalog_at(root)
    # the new writer stored some of the same records before the migration ran
    con = catalog.connect()
    try:
        catalog.ensure_tables(con)
        early = rows_of(REGISTRY["rtc_stats"], DAYS[1], list(range(90, 120)))
        con.register("early", early)
        con.execute(f"INSERT INTO lake.\"rtc_stats\" BY NAME SELECT *, DATE '{DAYS[1]}' AS date"
                    " FROM early")  # fmt: skip
    finally:
        con.close()
    expected["rtc_stats"] |= {(DAYS[1], i) for i in range(100, 120)}

    report = migrate(root, catalog, node=NODE)

    assert report.tables["rtc_stats"].rows == 100 + 90
    assert_exactly_once(catalog, expected)
    # another node's name (the ledger does not know it): the rows are still not repeated
    assert migrate(root, catalog, node="other").rows == 0
    assert_exactly_once(catalog, expected)


def test_a_partition_that_grew_after_its_copy_is_copied_again_without_repeats(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lake"
    expected = old_lake(root)
    catalog = catalog_at(root)
    migrate(root, catalog, node=NODE)
    # an old node still wrote the old layout: records 95-129, of which 95-99 are copied
    write_old(root, rows_of(REGISTRY["rtc_stats"], DAYS[0], list(range(95, 130))), "rtc_stats",
              DAYS[0], 3)  # fmt: skip
    expected["rtc_stats"] |= {(DAYS[0], i) for i in range(100, 130)}

    report = migrate(root, catalog, node=NODE)

    assert (report.partitions_migrated, report.rows) == (1, 30)
    assert_exactly_once(catalog, expected)


def test_delete_removes_the_old_files_once_committed_and_not_the_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "lake"
    expected = old_lake(root)
    (root / "events" / "date=2026-07-24" / ".n1-run-000000000009.parquet.tmp").write_bytes(b"x")
    catalog = catalog_at(root)
    removing = migration._remove
    committed: list[set[tuple[str, int]]] = []
    checked: list[str] = []

    def remove(source: Any, part: migration.Partition) -> int:
        # what is removed is committed: another connection sees its ledger row
        if not committed:  # one connection (~0.5 s each): every commit came before
            committed.append(set(stored(catalog, "SELECT run, seq FROM lake.rtclake_ledger")))
        assert (f"migrate:{part.table}", part.seq) in committed[0]
        assert all(Path(f).exists() for f in part.files)
        checked.append(part.folder)
        return removing(source, part)

    monkeypatch.setattr(migration, "_remove", remove)

    report = migrate(root, catalog, node=NODE, delete=True)

    assert len(checked) == 4 and report.files_deleted == 8
    assert "removed 8 old files" in report.next_step()
    assert not list(root.glob("*/date=*/*.parquet"))
    assert not (root / "rtc_stats").exists()  # empty folders go too
    assert (root / "events" / "date=2026-07-24").is_dir()  # not empty: a temporary file
    assert_exactly_once(catalog, expected)  # the catalog's files are untouched
    again = migrate(root, catalog, node=NODE, delete=True)
    assert again.files_deleted == 0
    assert again.next_step() == (
        f"no files of the old layout (TABLE/date=YYYY-MM-DD/*.parquet) under {root}:"
        " nothing (left) to migrate"
    )


def test_folders_that_are_not_partitions_or_tables_are_left_with_a_warning(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lake"
    old_lake(root)
    write_old(root, rows_of(REGISTRY["events"], DAYS[0], [1]), "no_such_table", DAYS[0], 1)
    bad = root / "events" / "date=yesterday" / "x.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet")

    report = migrate(root, catalog_at(root), node=NODE)

    assert report.partitions_migrated == 4
    assert sorted(report.warnings) == [
        f"{root / 'events' / 'date=yesterday'}: not a date=YYYY-MM-DD folder, not migrated",
        f"{root / 'no_such_table'}: no table no_such_table here, not migrated",
    ]


def test_columns_of_earlier_versions_are_dropped_and_missing_ones_left_empty(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lake"
    table = REGISTRY["rtc_stats"]
    day = DAYS[0]
    # a version that stored the record id and a column since retired ...
    older = rows_of(table, day, list(range(10)))
    older = older.append_column("record_id", pa.array([f"r{i}" for i in range(10)]))
    write_old(root, older.append_column("retired", pa.array(range(10))), "rtc_stats", day, 1)
    # ... and one before bytes_sent was a column
    write_old(root, rows_of(table, day, list(range(5, 15))).drop_columns(["bytes_sent"]),
              "rtc_stats", day, 2)  # fmt: skip

    report = migrate(root, catalog_at(root), node=NODE)

    assert report.rows == 15
    assert stored(
        catalog_at(root),
        'SELECT count(*), count(bytes_sent), sum(bytes_sent) FROM lake."rtc_stats"',
    ) == [(15, 10, sum(1000 * i + day.day for i in range(10)))]


def test_an_unreadable_file_stops_the_migration_naming_its_partition(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    old_lake(root)
    (root / "rtc_stats" / "date=2026-07-25" / "n1-run-000000000003.parquet").write_bytes(b"PAR1")
    catalog = catalog_at(root)

    with pytest.raises(MigrationError, match=r"rtc_stats/date=2026-07-25: "):
        migrate(root, catalog, node=NODE)

    assert stored(catalog, "SELECT count(*) FROM lake.rtclake_ledger") == [(3,)]


def test_the_command_migrates_from_a_folder_and_deletes_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old"
    expected = old_lake(old)
    env = {"RTCLAKE_DATA_DIR": str(tmp_path / "data")}

    refused = cli(monkeypatch, "migrate", "--from", str(old), RTCLAKE_LAKE__CATALOG="hive", **env)
    assert refused.exit_code == 2
    assert "error: lake.catalog is hive" in refused.output
    missing = cli(monkeypatch, "migrate", "--from", str(tmp_path / "nothing"), **env)
    assert missing.exit_code == 1
    assert f"error: no lake at {tmp_path / 'nothing'}" in missing.output

    out = cli(monkeypatch, "migrate", "--from", str(old), "--delete", **env)

    assert out.exit_code == 0, out.output
    assert f"removed 8 old files from {old}" in out.output
    assert not list(old.glob("*/date=*/*.parquet"))
    # into the configured lake (its default catalog), not the old root
    assert_exactly_once(catalog_at(tmp_path / "data" / "lake"), expected)
    assert not (old / "main").exists()


def test_a_lake_on_s3_migrates_in_place_and_deletes(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    import pyarrow.fs as pafs

    from rtclake.lake.storage import S3Options, S3Storage

    bucket = f"lake-{abs(hash(tmp_path)) % 10**8}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket=bucket)  # fmt: skip
    storage = S3Storage(f"s3://{bucket}/lake", S3Options(s3_endpoint, "k", "s", "us-east-1"))
    local = tmp_path / "old"
    expected = old_lake(local)
    for path in local.rglob("*.parquet"):
        key = f"{bucket}/lake/{path.relative_to(local)}"
        pafs.copy_files(str(path), key, destination_filesystem=storage.fs)
    catalog = Catalog(f"sqlite:{tmp_path / 'catalog.sqlite'}", storage, REGISTRY)

    report = migrate(storage, catalog, node=NODE, delete=True)

    assert (report.partitions_migrated, report.rows, report.files_deleted) == (4, 400, 8)
    assert_exactly_once(catalog, expected)
    assert storage.files("rtc_stats") == []
    con = catalog.connect(read_only=True)
    try:
        assert all(f.startswith(f"s3://{bucket}/lake/main/rtc_stats/date=")
                   for f in catalog.live_files(con, "rtc_stats"))  # fmt: skip
    finally:
        con.close()


def test_a_migration_keeps_to_its_memory_limit_and_spills_into_a_folder_of_its_own(
    tmp_path: Path,
) -> None:
    # Without a limit DuckDB takes up to 80 % of the host's memory for a migrated day (its
    # repeats are found by grouping it): 2.7 GB of RSS for a day of 2,000,000 rtc_stats
    # rows, measured; 1.5 GB within 1 GiB.
    root = tmp_path / "lake"
    rows = rows_of(REGISTRY["rtc_stats"], DAYS[0], list(range(100_000)))
    write_old(root, rows, "rtc_stats", DAYS[0], 1)
    catalog = catalog_at(root)
    spill = tmp_path / "spill"
    mib = 1024 * 1024

    # a limit too small for the day: refused, saying which setting gives the memory
    with pytest.raises(MigrationError, match=r"Out of Memory.*lake\.maintenance\.memory_limit"):
        migrate(root, catalog, node=NODE, memory_limit=64 * mib, threads=1,
                temp_directory=spill)  # fmt: skip
    assert list(spill.iterdir()) == []  # the run's folder goes with it
    assert stored(catalog, 'SELECT count(*) FROM lake."rtc_stats"') == [(0,)]

    during: list[list[str]] = []
    limit = 1024 * mib
    report = migrate(
        root, catalog, node=NODE, memory_limit=limit, threads=migration.threads_within(limit),
        temp_directory=spill, progress=lambda _: during.append([p.name for p in spill.iterdir()]),
    )  # fmt: skip

    assert report.rows == 100_000
    assert len(during) == 1 and len(during[0]) == 1 and during[0][0].startswith("migrate-")
    assert list(spill.iterdir()) == []
    assert stored(catalog, 'SELECT count(DISTINCT stats_id) FROM lake."rtc_stats"') == [(100_000,)]


def test_a_migration_takes_a_thread_per_half_gib_of_its_limit() -> None:
    gib = 1024 * 1024 * 1024
    cores = os.cpu_count() or 1
    assert migration.threads_within(64 * 1024 * 1024) == 1
    assert migration.threads_within(gib) == min(cores, 2)
    assert migration.threads_within(64 * gib) == cores
