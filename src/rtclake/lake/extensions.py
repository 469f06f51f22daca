"""DuckDB's extensions (``duckdb-ext-*`` packages): where they are, and whether DuckDB has
checked their signatures.

DuckDB checks an extension's signature by hashing the whole file at every load, on short
threads of its own: DuckLake's and SQLite's (50 MB each) took ~0.45 core-seconds and
~100 threads, once per process, before anything else. Remembered, a one-line ``rtclake
import`` took 0.80 s against 1.11 s (``python -m bench --only cli``, docs/BENCHMARKS.md).

So a check is remembered: within the process, and across processes in a small record
(``$XDG_CACHE_HOME/rtclake/duckdb-extensions.json``, else ``~/.cache/...``) holding the
names DuckDB checked and the identity of every extension file then (device, inode, size,
modification and change times). While every file is unchanged, later connections load
those extensions with ``allow_unsigned_extensions``; a file replaced, rewritten or touched
since (its change time moves, and no user can set it back) is checked again. The identity
is taken before the load DuckDB checks, and nothing is remembered if it differs after; a
record vouches only for names checked against the files it names. A record that is not
the user's own, or that others may write, is ignored (its folder is made 0700). Whoever
could swap a file unnoticed could as well change rtclake's own code beside it. The record
is only a shortcut: when it cannot be read or written, DuckDB checks as before.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import stat
import tempfile
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


def identity() -> dict[str, list[int]] | None:
    """Each extension file's identity (device, inode, size, modification and change
    time); None when the folder cannot be read. Taken before a load that DuckDB checks,
    for :func:`remember`."""
    try:
        return _identity()
    except OSError:
        return None


def _identity() -> dict[str, list[int]]:
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
        path = record_path()
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return {}, set()  # another user's, or one others may write: not trusted
        saved = json.loads(path.read_text())
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


def remember(names: Iterable[str], before: dict[str, list[int]] | None) -> None:
    """DuckDB checked ``names`` just now (a load without ``allow_unsigned_extensions``
    succeeded) with the files as :func:`identity` found them ``before`` the load: for
    this process, and in the record. Nothing is remembered when the files changed
    meanwhile, and the record vouches for the names checked against these very files
    only. Call with :func:`lock` held."""
    wanted = set(names)
    files = identity()
    if files is None or files != before:
        log.info("duckdb extensions: the files changed while loading; not remembered")
        return
    _checked.update(wanted)
    try:
        saved, vouched = _read()
        vouched = (vouched if saved == files else set()) | wanted
        body = {"duckdb": duckdb.__version__, "directory": directory(), "files": files,
                "checked": sorted(vouched)}  # fmt: skip
        path = record_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{RECORD}.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(body))
            os.replace(tmp, path)  # whole or not at all; a lost record only costs a check
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("duckdb extensions: the check is not remembered", error=str(exc))
