"""The SQL sandbox: a query reads the lake's own Parquet files and nothing else, not
through a symbolic link, not DuckDB's temporary files, not another query's."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import duckdb
import pytest

from rtclake.catalog import default_registry
from rtclake.errors import QueryError
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.lake.storage import S3Options, storage_for
from tests.conftest import Server
from tests.test_query import batch

DENIED = r"(?i)permission|access|disabled"


def write_lake(root: Path, segment: int, day: int, n: int) -> Path:
    """``n`` telemetry rows of 2026-11-``day`` in the lake at ``root``; their file."""
    sink = LakeSink(root, default_registry())
    sink.start()
    body = b"\n".join(
        b'{"time": "2026-11-%02dT10:00:00Z", "device_id": "d%d"}' % (day, i) for i in range(n)
    )
    sink.write(batch(segment, body))
    (path,) = (root / "main" / "telemetry" / f"date=2026-11-{day:02d}").glob("*.parquet")
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "lake"
    write_lake(root, 1, 1, 10)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A Parquet file of 5 rows on 2026-11-02 in a lake that queries must not see."""
    return write_lake(tmp_path / "elsewhere", 9, 2, 5)


def engine(lake: Path, temp_root: Path) -> QueryEngine:
    return QueryEngine(lake, default_registry(), temp_root=temp_root)


def count(engine: QueryEngine) -> int:
    value: int = engine.run("SELECT count(*) FROM telemetry").rows()[0][0]
    return value


def test_a_symlinked_date_folder_is_not_read(lake: Path, outside: Path, tmp_path: Path) -> None:
    link = lake / "main" / "telemetry" / "date=2026-11-02"
    link.symlink_to(outside.parent, target_is_directory=True)
    query = engine(lake, tmp_path / "data" / "query-tmp")
    assert count(query) == 10
    with pytest.raises(QueryError, match=DENIED):
        query.run(f"SELECT count(*) FROM read_parquet('{link}/{outside.name}')")


def test_a_symlinked_parquet_file_is_not_read(lake: Path, outside: Path, tmp_path: Path) -> None:
    link = lake / "main" / "telemetry" / "date=2026-11-01" / "linked.parquet"
    link.symlink_to(outside)
    query = engine(lake, tmp_path / "data" / "query-tmp")
    assert count(query) == 10
    with pytest.raises(QueryError, match=DENIED):
        query.run(f"SELECT count(*) FROM read_parquet('{link}')")


def test_a_symlinked_table_folder_is_not_read(tmp_path: Path, outside: Path) -> None:
    lake = tmp_path / "data" / "lake"
    (lake / "main").mkdir(parents=True)
    (lake / "main" / "telemetry").symlink_to(outside.parent.parent, target_is_directory=True)
    assert count(engine(lake, tmp_path / "data" / "query-tmp")) == 0


def test_a_live_file_replaced_by_a_link_is_not_read(
    lake: Path, outside: Path, tmp_path: Path
) -> None:
    """The catalog names the file; someone swapped it for a link to a file outside the
    lake: the query engine reads only regular files at their real place."""
    (live,) = (lake / "main" / "telemetry" / "date=2026-11-01").glob("*.parquet")
    live.unlink()
    live.symlink_to(outside)
    query = engine(lake, tmp_path / "data" / "query-tmp")
    assert count(query) == 0
    with pytest.raises(QueryError, match=DENIED):
        query.run(f"SELECT count(*) FROM read_parquet('{live}')")


def test_duckdbs_default_temp_folder_is_not_readable(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "spill.csv").write_text("secret\n1\n")
    query = engine(lake, tmp_path / "data" / "query-tmp")
    for sql in ("SELECT * FROM glob('.tmp/*')", "SELECT * FROM read_csv('.tmp/spill.csv')"):
        with pytest.raises(QueryError, match=DENIED):
            query.run(sql)


def test_each_instance_spills_into_its_own_folder_removed_after(lake: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "data" / "query-tmp"
    query = engine(lake, temp_root)
    inner: list[str] = []

    def while_the_first_runs(empty: frozenset[str]) -> str:
        # a query asked while another runs gets an instance, and a folder, of its own
        inner.append(temp_folder(query))
        return "SELECT current_setting('temp_directory')"

    first = query.run_many([while_the_first_runs])[0].rows()[0][0]
    assert inner and inner[0] != first
    # the next query over the same lake reuses an idle instance, and its folder
    assert temp_folder(query) in (first, inner[0])
    assert query.run("SELECT current_setting('temp_file_encryption')").rows() == [[True]]
    for name in (first, inner[0]):
        assert Path(name).parent == temp_root
        assert Path(name).is_dir() and not any(Path(name).iterdir())
    # a query that spills, its result cut at max_rows: its spill files do not wait with
    # the kept instance (DuckDB keeps a cut query open until the next one starts)
    spilling = QueryEngine(
        lake, default_registry(), temp_root=temp_root, memory_limit=128 * 1024 * 1024, max_rows=5
    )
    spilled = spilling.run(
        "SELECT md5(i::VARCHAR) AS m, current_setting('temp_directory') AS folder"
        " FROM range(3000000) t(i) ORDER BY m"
    )
    assert spilled.truncated and spilled.table.num_rows == 5
    spill_folder = Path(spilled.rows()[0][1])
    assert spill_folder.is_dir() and list(spill_folder.iterdir()) == []
    spilling.close()
    query.close_idle()
    assert not Path(first).exists() and not Path(inner[0]).exists()
    assert not any(temp_root.iterdir())


def test_a_query_cannot_read_another_querys_temp_folder(lake: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "data" / "query-tmp"
    other = temp_root / "other-query"
    other.mkdir(parents=True)
    (other / "spill.csv").write_text("secret\n1\n")
    query = engine(lake, temp_root)
    for sql in (
        f"SELECT * FROM glob('{temp_root}/*')",
        f"SELECT * FROM glob('{temp_root}/*/*')",
        f"SELECT * FROM read_csv('{other}/spill.csv')",
        "SELECT * FROM read_csv('{own}/../other-query/spill.csv')",
    ):
        own = temp_folder(query)  # the instance the refused query runs on, kept
        with pytest.raises(QueryError, match=DENIED):
            query.run(sql.replace("{own}", own))
        assert not Path(own).exists()  # it ran there, and was closed


def test_a_running_querys_temp_folder_is_not_readable_by_another(
    lake: Path, tmp_path: Path
) -> None:
    temp_root = tmp_path / "data" / "query-tmp"
    query = QueryEngine(lake, default_registry(), temp_root=temp_root, timeout=3)
    errors: list[QueryError] = []

    def slow() -> None:
        try:
            query.run("SELECT count(*) FROM range(1000000000000)")
        except QueryError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        folders: list[str] = []
        deadline = time.monotonic() + 3
        while not folders and time.monotonic() < deadline:
            folders = os.listdir(temp_root) if temp_root.exists() else []
            time.sleep(0.01)
        assert folders, "the slow query made no temp folder"
        with pytest.raises(QueryError, match=DENIED):
            query.run(f"SELECT * FROM glob('{temp_root / folders[0]}/*')")
    finally:
        thread.join(30)
    assert [e.reason for e in errors] == ["timeout"]
    assert os.listdir(temp_root) == []


def test_the_server_keeps_query_temp_folders_in_the_data_dir(server: Server) -> None:
    folder = server.query("SELECT current_setting('temp_directory')")["rows"][0][0]
    assert Path(folder).parent == (server.data_dir / "query-tmp").absolute()
    # kept with the instance for the next query, empty; removed when the server stops
    assert Path(folder).is_dir() and not any(Path(folder).iterdir())
    server.stop()
    assert not Path(folder).exists()


def test_temp_folders_a_crash_left_are_removed_when_the_server_starts(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    stale = tmp_path / "data" / "query-tmp" / "query-left-by-a-crash"
    stale.mkdir(parents=True)
    (stale / "duckdb_temp_storage-0.tmp").write_bytes(b"\0" * 1024)
    make_server(tmp_path / "data")
    assert not stale.exists()


def temp_folder(query: QueryEngine) -> str:
    """The temp folder of the instance a query ran on (one per DuckDB instance)."""
    folder: str = query.run("SELECT current_setting('temp_directory')").rows()[0][0]
    return folder


def test_an_instance_is_kept_while_the_lake_is_unchanged(lake: Path, tmp_path: Path) -> None:
    query = engine(lake, tmp_path / "query-tmp")
    first = temp_folder(query)
    assert temp_folder(query) == first
    assert count(query) == 10
    write_lake(lake, 2, 3, 4)
    assert count(query) == 14  # a new snapshot is read at once, on a new instance
    assert temp_folder(query) != first
    assert not Path(first).exists()  # the older snapshot's instance is closed


def test_a_kept_instance_stays_read_only(lake: Path, outside: Path, tmp_path: Path) -> None:
    query = engine(lake, tmp_path / "query-tmp")
    first = temp_folder(query)
    for sql in (
        f"SELECT * FROM read_parquet('{outside}')",
        "SELECT * FROM read_csv('/etc/hostname')",
        "SET lock_configuration = false",
        "SELECT 1; SET enable_external_access = true",
    ):
        with pytest.raises(QueryError):
            query.run(sql)
        # a refused query closes the instance it ran on: the next runs on a new one
        assert not Path(first).exists()
        first = temp_folder(query)
    assert query.run("SELECT current_setting('lock_configuration')").rows() == [[True]]
    assert count(query) == 10
    # what a SELECT can change, the random seed, does not pass to the next query
    seeded = duckdb.connect()
    seeded.execute("SELECT setseed(0.25)")
    predictable = seeded.execute("SELECT random(), uuid()::VARCHAR").fetchall()[0]
    seeded.close()
    kept = temp_folder(query)
    assert query.run("SELECT setseed(0.25)").rows() == [[None]]
    after = query.run("SELECT random(), uuid()::VARCHAR, current_setting('temp_directory')")
    assert after.rows()[0][2] == kept  # on the instance the seed was set on
    assert tuple(after.rows()[0][:2]) != predictable


def test_an_idle_instance_is_closed_after_the_idle_timeout(lake: Path, tmp_path: Path) -> None:
    query = engine(lake, tmp_path / "query-tmp")
    query.idle_timeout = 2.0
    first = temp_folder(query)
    query.close_idle(older_than=query.idle_timeout)  # not idle long enough
    assert Path(first).is_dir()
    time.sleep(0.2)
    query.close_idle(older_than=0.1)
    assert not Path(first).exists()
    query.idle_timeout = 0.1
    second = temp_folder(query)
    time.sleep(0.2)
    assert temp_folder(query) != second  # too old to be taken
    assert not Path(second).exists()


def test_no_more_instances_are_kept_than_queries_may_run(lake: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "query-tmp"
    query = QueryEngine(lake, default_registry(), temp_root=temp_root, max_concurrent=2)
    assert query.keep_idle == 2
    query.keep_idle = 1
    inner: list[str] = []

    def while_the_first_runs(empty: frozenset[str]) -> str:
        inner.append(temp_folder(query))
        return "SELECT current_setting('temp_directory')"

    outer = query.run_many([while_the_first_runs])[0].rows()[0][0]
    assert inner[0] != outer
    assert [p.name for p in temp_root.iterdir()] == [Path(inner[0]).name]  # kept: the first back
    query.close()
    assert list(temp_root.iterdir()) == []


def test_an_idle_timeout_of_0_keeps_no_instance(lake: Path, tmp_path: Path) -> None:
    query = QueryEngine(lake, default_registry(), temp_root=tmp_path / "t", idle_timeout=0)
    first = temp_folder(query)
    assert not Path(first).exists()
    assert temp_folder(query) != first


def test_the_server_closes_instances_idle_past_the_timeout(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(RTCLAKE_QUERY__IDLE_TIMEOUT="1")
    folder = Path(server.query("SELECT current_setting('temp_directory')")["rows"][0][0])
    assert folder.is_dir()  # kept for the next query
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not folder.exists()  # the server's sweep closed it, with no query asked


@pytest.mark.parametrize("temp", [False, True])
def test_a_query_installs_and_loads_no_extension(lake: Path, tmp_path: Path, temp: bool) -> None:
    # DuckDB would otherwise download sqlite_scanner from the internet for this query
    # (autoinstall_known_extensions): it names the extension instead, in the reason.
    queries = engine(lake, tmp_path / "tmp") if temp else QueryEngine(lake, default_registry())
    with pytest.raises(QueryError) as raised:
        queries.run("SELECT * FROM sqlite_scan('/etc/passwd', 'x')")
    assert raised.value.reason == "query_failed"
    assert "exists in the sqlite_scanner extension" in str(raised.value)
    assert "install" not in str(raised.value).split("extension")[0].lower()
    assert count(queries) == 10


def test_a_reason_announced_on_its_first_line_is_given_with_the_next() -> None:
    from rtclake.lake.query import reason

    announced = duckdb.IOException("An error occurred while trying to load it:\n\nno file\nmore")
    assert reason(announced) == "An error occurred while trying to load it: no file"
    assert reason(duckdb.CatalogException("Catalog Error: no table t\n\nLINE 1")) == (
        "Catalog Error: no table t"
    )


def test_a_query_cannot_show_the_lakes_storage_credentials(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """A lake on S3: the query's DuckDB holds the store's credentials as a secret, whose
    key id ``duckdb_secrets()`` showed (DuckDB redacts the secret itself). Refused, as are
    the functions that run SQL given as text, past this check; a word that only looks
    like one of them is not."""
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
    s3.create_bucket(Bucket=bucket)
    options = S3Options(endpoint_url=s3_endpoint, access_key_id="AKIAKEYIDOFTHELAKE",
                        secret_access_key="s", region="us-east-1")  # fmt: skip
    storage = storage_for(f"s3://{bucket}/lake", options)
    catalog = f"sqlite:{tmp_path / 'catalog.sqlite'}"
    sink = LakeSink(storage.root, default_registry(), storage=storage, catalog=catalog)
    sink.start()
    body = b"\n".join(b'{"time": "2026-11-01T10:00:00Z", "device_id": "d%d"}' % i for i in range(4))
    sink.write(batch(1, body))
    sink.close()
    query = QueryEngine(storage.root, default_registry(), temp_root=tmp_path / "query-tmp",
                        storage=storage, catalog=catalog)  # fmt: skip
    try:
        assert query.run("SELECT count(*) FROM telemetry").rows() == [[4]]
        for sql in (
            "SELECT * FROM duckdb_secrets()",
            'SELECT secret_string FROM "DuckDB_Secrets"() WHERE true',
            "SELECT count(*) FROM telemetry WHERE device_id IN"
            " (SELECT name FROM main.duckdb_secrets())",
            "SELECT * FROM which_secret('s3://x/y', 's3')",
            "SELECT * FROM query('SELECT * FROM duckdb_' || 'secrets()')",
            "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
        ):
            with pytest.raises(QueryError) as refused:
                query.run(sql)
            assert refused.value.reason == "not_allowed", sql
            assert "AKIAKEYIDOFTHELAKE" not in refused.value.message
        alike = "SELECT 'duckdb_secrets' AS query, count(*) AS secrets FROM telemetry"
        assert query.run(alike).rows() == [["duckdb_secrets", 4]]
    finally:
        query.close()
