"""The SQL sandbox: a query reads the lake's own Parquet files and nothing else, not
through a symbolic link, not DuckDB's temporary files, not another query's."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rtclake.catalog import default_registry
from rtclake.errors import QueryError
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
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


def test_each_query_spills_into_its_own_folder_removed_after(lake: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "data" / "query-tmp"
    query = engine(lake, temp_root)
    first = query.run("SELECT current_setting('temp_directory')").rows()[0][0]
    second = query.run("SELECT current_setting('temp_directory')").rows()[0][0]
    assert first != second
    for folder in (Path(first), Path(second)):
        assert folder.parent == temp_root
        assert not folder.exists()
    assert query.run("SELECT current_setting('temp_file_encryption')").rows() == [[True]]


def test_a_query_cannot_read_another_querys_temp_folder(lake: Path, tmp_path: Path) -> None:
    temp_root = tmp_path / "data" / "query-tmp"
    other = temp_root / "other-query"
    other.mkdir(parents=True)
    (other / "spill.csv").write_text("secret\n1\n")
    query = engine(lake, temp_root)
    own = query.run("SELECT current_setting('temp_directory')").rows()[0][0]
    for sql in (
        f"SELECT * FROM glob('{temp_root}/*')",
        f"SELECT * FROM glob('{temp_root}/*/*')",
        f"SELECT * FROM read_csv('{other}/spill.csv')",
        f"SELECT * FROM read_csv('{own}/../other-query/spill.csv')",
    ):
        with pytest.raises(QueryError, match=DENIED):
            query.run(sql)


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
    assert not Path(folder).exists()


def test_temp_folders_a_crash_left_are_removed_when_the_server_starts(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    stale = tmp_path / "data" / "query-tmp" / "query-left-by-a-crash"
    stale.mkdir(parents=True)
    (stale / "duckdb_temp_storage-0.tmp").write_bytes(b"\0" * 1024)
    make_server(tmp_path / "data")
    assert not stale.exists()
