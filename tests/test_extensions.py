"""DuckDB's extension signatures: checked once, remembered across processes while the
files are unchanged (rtclake.lake.extensions)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rtclake.catalog import default_registry
from rtclake.errors import ConfigError
from rtclake.lake import extensions
from rtclake.lake.catalog import Catalog
from rtclake.lake.storage import storage_for


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A process that has checked nothing yet, with its own record's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(extensions, "_checked", set())
    return tmp_path


@pytest.fixture
def fake_files(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An extension folder of two files (the record's logic, not DuckDB's)."""
    folder = fresh / "extensions" / "v1" / "linux_amd64"
    folder.mkdir(parents=True)
    for name in ("ducklake", "sqlite_scanner"):
        (folder / f"{name}.duckdb_extension").write_bytes(name.encode() * 1000)
    monkeypatch.setattr(extensions, "directory", lambda: str(fresh / "extensions"))
    return folder


def _new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extensions, "_checked", set())


def test_a_check_is_remembered_for_a_later_process_while_the_files_are_unchanged(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not extensions.checked({"ducklake", "sqlite"})
    extensions.remember({"ducklake", "sqlite"}, extensions.identity())
    assert extensions.record_path().exists()
    _new_process(monkeypatch)
    assert extensions.checked({"ducklake", "sqlite"})
    assert extensions.checked({"ducklake"})
    assert not extensions.checked({"ducklake", "postgres"})  # never checked


@pytest.mark.parametrize("change", ["rewritten", "replaced", "touched", "added"])
def test_a_file_changed_since_the_check_is_checked_again(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    extensions.remember({"ducklake", "sqlite"}, extensions.identity())
    _new_process(monkeypatch)
    target = fake_files / "ducklake.duckdb_extension"
    if change == "rewritten":  # same size, same modification time
        st = target.stat()
        target.write_bytes(b"X" * st.st_size)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "replaced":
        other = fake_files / "new"
        other.write_bytes(target.read_bytes())
        other.replace(target)
    elif change == "touched":
        os.utime(target)
    else:
        (fake_files / "httpfs.duckdb_extension").write_bytes(b"x")
    assert not extensions.checked({"ducklake"})


def test_a_record_of_another_duckdb_or_unreadable_is_not_trusted(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extensions.remember({"ducklake"}, extensions.identity())
    record = extensions.record_path()
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "duckdb": "0.0.1"}))
    _new_process(monkeypatch)
    assert not extensions.checked({"ducklake"})
    for text in ("{not json", '{"files": 3}', "[]", ""):
        record.write_text(text)
        assert not extensions.checked({"ducklake"})
    extensions.remember({"ducklake"}, extensions.identity())  # written anew over a bad record
    _new_process(monkeypatch)
    assert extensions.checked({"ducklake"})


def test_an_unwritable_record_only_costs_the_check(
    fake_files: Path, fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (fresh / "cache").write_text("a file where the folder would be")
    extensions.remember({"ducklake"}, extensions.identity())  # no error
    assert extensions.checked({"ducklake"})  # this process still knows
    _new_process(monkeypatch)
    assert not extensions.checked({"ducklake"})


def test_a_record_vouches_only_for_what_was_checked_against_the_files_it_names(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that trusted an extension from the record, and then checks another one
    after the first was replaced, must not vouch for the replaced file."""
    extensions.remember({"ducklake"}, extensions.identity())
    _new_process(monkeypatch)
    assert extensions.checked({"ducklake"})  # trusted from the record
    replaced = fake_files / "ducklake.duckdb_extension"
    (fake_files / "new").write_bytes(b"other code")
    (fake_files / "new").replace(replaced)
    extensions.remember({"sqlite"}, extensions.identity())  # checked now, beside it
    _new_process(monkeypatch)
    assert extensions.checked({"sqlite"})
    assert not extensions.checked({"ducklake"})


def test_nothing_is_remembered_when_the_files_change_during_the_load(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = extensions.identity()
    os.utime(fake_files / "ducklake.duckdb_extension")  # e.g. swapped after the hash
    extensions.remember({"ducklake"}, before)
    assert not extensions.record_path().exists()
    assert not extensions.checked({"ducklake"})


def test_a_record_others_may_write_is_not_trusted(
    fake_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extensions.remember({"ducklake"}, extensions.identity())
    assert extensions.record_path().parent.stat().st_mode & 0o777 == 0o700
    extensions.record_path().chmod(0o666)
    _new_process(monkeypatch)
    assert not extensions.checked({"ducklake"})
    extensions.record_path().chmod(0o600)
    assert extensions.checked({"ducklake"})


def test_an_extension_that_fails_its_check_is_not_remembered(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files in the extensions' places that are not DuckDB's signed extensions: the
    catalog refuses to connect, and nothing is recorded."""
    real = Path(extensions.directory())
    fake = fresh / "extensions"
    for path in real.rglob("*.duckdb_extension"):
        target = fake / path.relative_to(real)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x7fELF not an extension" * 100)
    monkeypatch.setattr(extensions, "directory", lambda: str(fake))
    storage = storage_for(str(fresh / "lake"))
    catalog = Catalog(f"sqlite:{fresh / 'lake' / 'catalog.sqlite'}", storage, default_registry())
    with pytest.raises(ConfigError, match="do not load"):
        catalog.connect()
    assert not extensions.record_path().exists()
    assert not extensions.checked({"ducklake"})


def _unsigned_allowed(con: Any) -> bool:
    row = con.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone()
    return bool(row[0])


def test_the_catalog_loads_checked_extensions_without_hashing_them_again(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first process's connection has DuckDB check the real extensions; a later
    process's connection, with the record, loads them as checked; with the files changed
    since (here: the record's identities), DuckDB checks them again."""
    storage = storage_for(str(fresh / "lake"))
    catalog = Catalog(f"sqlite:{fresh / 'lake' / 'catalog.sqlite'}", storage, default_registry())
    con = catalog.connect()
    try:
        assert not _unsigned_allowed(con)
    finally:
        con.close()
    saved = json.loads(extensions.record_path().read_text())
    assert {"ducklake", "sqlite"} <= set(saved["checked"])

    _new_process(monkeypatch)
    con = catalog.connect()
    try:
        assert _unsigned_allowed(con)
        attached = "SELECT count(*) FROM duckdb_databases() WHERE database_name = 'lake'"
        assert con.execute(attached).fetchone() == (1,)
    finally:
        con.close()

    _new_process(monkeypatch)
    saved["files"] = {name: [0, 0, 0, 0, 0] for name in saved["files"]}
    extensions.record_path().write_text(json.dumps(saved))
    con = catalog.connect()
    try:
        assert not _unsigned_allowed(con)
    finally:
        con.close()
