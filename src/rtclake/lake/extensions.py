"""DuckDB's extensions (``duckdb-ext-*`` packages): where they are, and whether DuckDB has
checked their signatures.

DuckDB checks an extension's signature by hashing the whole file at every load, on short
threads of its own: DuckLake's and SQLite's (50 MB each) took ~0.45 core-seconds and
~100 threads, once per process, before anything else. That is most of what a catalog
costs a short command (``rtclake import`` of one line: 1.2 s; ``rtclake query``).

So a check is remembered: within the process, and across processes in a small record
(``$XDG_CACHE_HOME/rtclake/duckdb-extensions.json``, else ``~/.cache/...``) holding the
names DuckDB checked and the identity of every extension file then (device, inode, size,
modification and change times). While every file is unchanged, later connections load
those extensions with ``allow_unsigned_extensions``; a file replaced, rewritten or touched
since (its change time moves, and no user can set it back) is checked again. Whoever could
swap a file unnoticed could as well change rtclake's own code beside it. The record is
only a shortcut: when it cannot be read or written, DuckDB checks as before.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import duckdb
import structlog

from rtclake.errors import ConfigError

log = structlog.get_logger(__name__)

RECORD = "duckdb-extensions.json"

_checked: set[str] = set()  # names DuckDB checked in this process, or the record vouches for
_lock = threading.Lock()  # held around a check (the callers') and the record's update


@functools.cache
def directory() -> str:
    """Where the ``duckdb-ext-*`` packages keep DuckDB's extensions (nothing downloads)."""
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "DuckDB's extensions are not installed (pip install duckdb-ext-ducklake"
            " duckdb-ext-sqlite duckdb-ext-postgres duckdb-ext-httpfs)"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "extensions")


def lock() -> threading.Lock:
    """Held while checking whether extensions are checked, loading, and :func:`remember`:
    two threads do not both hash the same files."""
    return _lock


def record_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rtclake" / RECORD


def _identity() -> dict[str, list[int]]:
    """Each extension file's identity: device, inode, size, modification and change time."""
    found: dict[str, list[int]] = {}
    root = Path(directory())
    for path in sorted(root.rglob("*.duckdb_extension")):
        st = path.stat()
        found[str(path.relative_to(root))] = [
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
        ]  # fmt: skip
    return found


def _read() -> tuple[dict[str, list[int]], set[str]]:
    """The record's file identities and checked names (empty when there is none)."""
    try:
        saved = json.loads(record_path().read_text())
        if saved.get("duckdb") != duckdb.__version__ or saved.get("directory") != directory():
            return {}, set()
        return dict(saved["files"]), set(saved["checked"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, set()


def checked(names: Iterable[str]) -> bool:
    """Whether DuckDB checked the signatures of all of ``names``: in this process, or in
    an earlier one whose extension files are all unchanged since. Call with :func:`lock`
    held."""
    wanted = set(names)
    if wanted <= _checked:
        return True
    files, vouched = _read()
    if files and wanted <= vouched:
        try:
            same = files == _identity()
        except OSError:
            same = False
        if same:
            _checked.update(vouched)
            return True
    return False


def remember(names: Iterable[str]) -> None:
    """DuckDB checked ``names`` just now (a load without ``allow_unsigned_extensions``
    succeeded): for this process, and in the record. Call with :func:`lock` held."""
    _checked.update(names)
    try:
        files = _identity()
        saved, vouched = _read()
        if saved != files:
            vouched = set()
        vouched |= _checked
        body = {"duckdb": duckdb.__version__, "directory": directory(), "files": files,
                "checked": sorted(vouched)}  # fmt: skip
        path = record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)  # whole or not at all; a lost record only costs a check
    except OSError as exc:
        log.debug("duckdb extensions: the check is not remembered", error=str(exc))
