"""The query engine: views over the lake, read-only, row and time limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.errors import LakeUnreadable, QueryError
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.sinks.base import Batch
from rtclake.spool import Entry, EntryHeader


def batch(segment: int, body: bytes) -> Batch:
    head = EntryHeader(
        table="telemetry",
        source="http",
        stream="s",
        kind="telemetry",
        received_us=1_763_899_200_000_000,
        records=body.count(b"\n") + 1,
    )
    converter = Converter(default_registry())
    try:
        tables = converter.convert("sp", segment, [Entry(head, body, 0)])
    finally:
        converter.close()
    return Batch("node", "sp", segment, tables)


def telemetry_batches(count: int, day: str, rows: int = 20) -> list[Batch]:
    """Batches 1 to ``count`` of ``rows`` telemetry records each, every record distinct,
    timed on ``day`` (``YYYY-MM-DD``): what a writer stores one after the other."""
    head = EntryHeader(table="telemetry", source="http", stream="s", kind="telemetry",
                       received_us=1_763_899_200_000_000, records=rows)  # fmt: skip
    converter = Converter(default_registry())
    try:
        made = []
        for seq in range(1, count + 1):
            body = b"\n".join(
                b'{"time": "%sT10:00:%02dZ", "device_id": "d%d-%d"}'
                % (day.encode(), i % 60, seq, i)
                for i in range(rows)
            )
            made.append(
                Batch("node", "sp", seq, converter.convert("sp", seq, [Entry(head, body, 0)]))
            )
        return made
    finally:
        converter.close()


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    sink = LakeSink(tmp_path / "lake", default_registry())
    sink.start()
    body = b"\n".join(
        b'{"time": "2026-11-%02dT10:00:00Z", "device_id": "d%d", "v": %d}' % (1 + i % 3, i, i)
        for i in range(30)
    )
    sink.write(batch(1, body))
    sink.close()  # as a writer that stopped: the server opens the catalog on its own
    return tmp_path / "lake"


def engine(root: Path, **kw: object) -> QueryEngine:
    return QueryEngine(root, default_registry(), **kw)  # type: ignore[arg-type]


def test_tables_are_views_partitioned_by_date(lake: Path) -> None:
    result = engine(lake).run("SELECT date::VARCHAR, count(*) FROM telemetry GROUP BY 1 ORDER BY 1")
    assert result.rows() == [["2026-11-01", 10], ["2026-11-02", 10], ["2026-11-03", 10]]
    files = sorted(p.relative_to(lake).parent.as_posix() for p in lake.rglob("*.parquet"))
    assert files == ["main/rtclake_ledger"] + [
        f"main/telemetry/date=2026-11-0{d}" for d in (1, 2, 3)
    ]


def test_a_replayed_batch_is_skipped_by_the_ledger(lake: Path) -> None:
    sink = LakeSink(lake, default_registry())
    body = b'{"time": "2026-11-01T10:00:00Z", "device_id": "x", "v": 0}'
    sink.write(batch(1, body))  # segment 1 again, e.g. after a crash before its ack
    assert engine(lake).run("SELECT count(*) FROM telemetry").rows() == [[30]]
    ledger = engine(lake).catalog
    assert ledger is not None
    con = ledger.connect()
    try:
        assert ledger.last_committed(con, "node", "sp") == 1
    finally:
        con.close()


def test_a_record_the_lake_holds_is_not_stored_again(lake: Path) -> None:
    sink = LakeSink(lake, default_registry())
    body = b'{"time": "2026-11-01T10:00:00Z", "device_id": "d0", "v": 0}'
    twice = body + b"\n" + b'{"time": "2026-11-01T10:00:01Z", "device_id": "new", "v": 1}'
    sink.write(batch(2, twice + b"\n" + twice))  # one known, one new, each twice
    result = engine(lake).run(
        "SELECT count(*), count(DISTINCT record_id), count(*) FILTER (device_id = 'new')"
        " FROM telemetry"
    )
    assert result.rows() == [[31, 31, 1]]


def test_a_table_listed_without_files_after_having_some_is_listed_again(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = engine(lake)
    assert query.run("SELECT count(*) FROM telemetry").rows() == [[30]]
    sink = LakeSink(lake, default_registry())
    sink.write(batch(2, b'{"time": "2026-11-01T10:00:00Z", "device_id": "new", "v": 1}'))
    sink.close()  # a new snapshot: the next query lists the files again
    catalog = query.catalog
    assert catalog is not None
    real = catalog.live_files
    amiss = iter([True])  # the first listing of telemetry reads none, then the truth

    def live_files(con: object, table: str) -> list[str]:
        return [] if table == "telemetry" and next(amiss, False) else real(con, table)

    monkeypatch.setattr(catalog, "live_files", live_files)
    assert query.run("SELECT count(*) FROM telemetry").rows() == [[31]]
    assert next(amiss, None) is None  # the amiss listing was made (and then not used)


def test_a_commit_during_the_listing_is_listed_again(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer commits while the engine reads the catalog: the query reads the files of
    the snapshot that is current once the listing is done, not of the one it began at."""
    query = engine(lake)
    assert query.run("SELECT count(*) FROM telemetry").rows() == [[30]]
    sink = LakeSink(lake, default_registry())
    sink.write(batch(2, b'{"time": "2026-11-01T10:00:00Z", "device_id": "new", "v": 1}'))
    catalog = query.catalog
    assert catalog is not None
    real = catalog.live_files
    commits = iter([3])

    def live_files(con: object, table: str) -> list[str]:
        found = real(con, table)
        segment = next(commits, None) if table == "telemetry" else None
        if segment is not None:  # the commit lands between this read and the next
            body = b'{"time": "2026-11-01T10:00:01Z", "device_id": "newer", "v": 2}'
            sink.write(batch(segment, body))
        return found

    monkeypatch.setattr(catalog, "live_files", live_files)
    assert query.run("SELECT count(*) FROM telemetry").rows() == [[32]]
    assert next(commits, None) is None
    sink.close()


def test_empty_lake_has_empty_typed_views(tmp_path: Path) -> None:
    result = engine(tmp_path / "nothing").run("SELECT count(*), max(time) FROM events")
    assert result.rows() == [[0, None]]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE x AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/rtclake-should-not-exist.csv'",
        "INSTALL httpfs",
        "SELECT 1; SELECT 2",
        "ATTACH '/tmp/other.db'",
        "SET enable_external_access = true",
    ],
)
def test_only_one_select_is_allowed(lake: Path, sql: str) -> None:
    with pytest.raises(QueryError) as info:
        engine(lake).run(sql)
    assert info.value.reason in ("read_only", "bad_sql")
    assert not Path("/tmp/rtclake-should-not-exist.csv").exists()


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSTALL httpfs", "INSTALL"),
        ("/* -- */ load httpfs", "LOAD"),
        ("USE memory", "USE"),
        ("SET threads = 1", "SET"),
        ("ATTACH '/tmp/other.db'", "ATTACH"),
    ],
)
def test_a_refused_statement_is_named_as_written(lake: Path, sql: str, kind: str) -> None:
    with pytest.raises(QueryError, match=rf"only SELECT queries are allowed \(got {kind}\)$"):
        engine(lake).run(sql)


def test_files_outside_the_lake_cannot_be_read(lake: Path) -> None:
    with pytest.raises(QueryError, match=r"(?i)permission|access|disabled"):
        engine(lake).run("SELECT * FROM read_csv('/etc/passwd')")


def test_row_limit_truncates(lake: Path) -> None:
    result = engine(lake, max_rows=7).run("SELECT * FROM telemetry")
    assert result.table.num_rows == 7
    assert result.truncated


def test_slow_query_is_interrupted(lake: Path) -> None:
    with pytest.raises(QueryError) as info:
        engine(lake, timeout=0.3).run("SELECT count(*) FROM range(100000000000) a")
    assert info.value.reason == "timeout"


def test_a_damaged_lake_file_is_a_503_naming_the_table_not_a_crash(lake: Path) -> None:
    (live,) = (lake / "main" / "telemetry" / "date=2026-11-01").glob("*.parquet")
    live.write_bytes(b"PAR1 not really")
    with pytest.raises(LakeUnreadable) as info:
        engine(lake).run("SELECT count(*) FROM telemetry")
    assert info.value.status == 503 and "telemetry" in info.value.message
