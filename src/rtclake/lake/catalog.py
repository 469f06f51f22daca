"""The lake's catalog: DuckLake, with its metadata in SQLite (one node, the embedded
default) or PostgreSQL (several nodes), its data files under ``lake.root``.

A catalog URL (``lake.catalog``):

- ``sqlite:PATH``: a local SQLite file (``duckdb-ext-sqlite``). A DuckDB-file catalog
  would lock ``rtclake query`` out while ``rtclake run`` writes; SQLite lets readers in.
- ``postgres://USER@HOST:PORT/DB`` (or ``postgresql://``, or a libpq ``key=value``
  string after ``postgres:``): a PostgreSQL database (``duckdb-ext-postgres``) that every
  node writing the lake shares.
- ``hive``: no catalog, the layout of rtclake before it (``ROOT/TABLE/date=D/*.parquet``,
  duplicates hidden by the query views); kept for ``rtclake migrate`` and comparisons.

Every table is created partitioned by ``date`` (identity; the UTC date of ``time``) and
never re-partitioned: DuckLake names the files ``ROOT/main/TABLE/date=D/ducklake-UUID.parquet``
and each file carries ``date`` as a column too. Data inlining is off (it had bugs
upstream), and DuckLake retries a commit that conflicts with another node's
(``ducklake_max_retry_count``).

Each connection made here is one DuckDB connection with the lake attached as ``lake``;
DuckDB connections are not shared between threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import structlog

from rtclake.errors import ConfigError, SinkError
from rtclake.lake import extensions
from rtclake.lake.storage import Storage
from rtclake.lake.urls import DEFAULT_FILE as DEFAULT_FILE
from rtclake.lake.urls import CatalogUrl as CatalogUrl
from rtclake.lake.urls import default_url as default_url
from rtclake.lake.urls import parse_url as parse_url
from rtclake.redact import redact
from rtclake.tables import Table, TableRegistry

log = structlog.get_logger("rtclake.lake")

#: The name the lake is attached under in every connection of this module.
ALIAS = "lake"
#: The ledger: one row per committed batch, written in the batch's transaction.
LEDGER = "rtclake_ledger"
LEDGER_COLUMNS = (
    "node VARCHAR, run VARCHAR, seq BIGINT, file VARCHAR, file_offset BIGINT,"
    " rows BIGINT, committed_at TIMESTAMPTZ"
)
PARTITION = "date"
#: DuckLake retries a commit that conflicts with another writer's this often (with 0,
#: 45 % of first attempts failed with two writers, also of different tables).
MAX_RETRIES = 100


#: DuckDB's allocator settings of the catalog's connections (the writer's, maintenance's,
#: a reader's). By default a thread keeps up to 128 MiB it freed for its next task (512
#: MiB after a bulk free) for as long as the process lives: ``rtclake run``'s peak RSS in
#: the HTTP benchmark, whose window holds the writer's groups and the first maintenance
#: run (5 s after the start), was 627-700 MB with it and 568-586 MB without (one run each,
#: docs/BENCHMARKS.md).
ALLOCATOR = {
    "allocator_flush_threshold": "4MB",
    "allocator_bulk_deallocation_flush_threshold": "4MB",
}


#: The lock file beside a SQLite catalog that its write transactions take (:class:`WriteLock`).
WRITE_LOCK_SUFFIX = ".write.lock"


class WriteLock:
    """A SQLite catalog's write transactions one at a time, across the threads and
    processes of its machine: an exclusive ``flock`` on ``CATALOG.write.lock``, taken
    before a transaction's first read and let go after its commit (:meth:`holding`).

    SQLite refuses a commit when another connection committed since the committing
    transaction began ("database is locked"; its busy timeout does not wait that out).
    Taken by the lake sink, maintenance and ``rtclake migrate``. A writer's transactions
    are short, but one of maintenance's lasts as long as writing the files it merges:
    beside a writer committing a few times a second, the merge was refused and done
    again, over and over (HTTP benchmark: a merge of 62 files took 10 tries, 46 s and 37
    core-seconds, a core taken from ingest), and a migration's copies were refused. In
    turn, neither is refused: a writer waits out the merge, its batches durable in the
    spool meanwhile.

    Each instance opens the file itself, so two in one process exclude each other as two
    processes do; nested :meth:`holding` of one instance (one thread at a time) takes it
    once. The kernel lets it go when the process ends, also on kill -9. A waiter tries
    every 2 ms, and a holder that let it go waits :data:`TURN` before it takes it again,
    so maintenance's statements, one after the other, let a writer in between (without
    that the writer waited for the whole run). After ``wait`` seconds a transaction goes
    ahead without it (and is tried again if refused)."""

    #: Seconds a holder leaves the lock to others before taking it again.
    TURN = 0.01

    def __init__(self, path: str | os.PathLike[str], wait: float = 600.0) -> None:
        self.path = Path(path)
        self.wait = wait
        self._fd: int | None = None
        self._depth = 0
        self._mutex = threading.RLock()
        self._released = -math.inf

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                self._fd = self._take()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the descriptor lets the flock go
                    self._fd = None
                    self._released = time.monotonic()

    def _take(self) -> int | None:
        turn = self._released + self.TURN - time.monotonic()
        if turn > 0:
            time.sleep(turn)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.002)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        log.warning("lake: the catalog's write lock was not got; writing without it",
                    lock=str(self.path), waited=self.wait)  # fmt: skip
        return None


def data_path(storage: Storage) -> str:
    """DuckLake's DATA_PATH for a lake root: an absolute folder or an s3:// prefix, ending
    in a slash."""
    root = storage.root
    if not storage.remote:
        root = os.path.realpath(root)
    return root.rstrip("/") + "/"


class Catalog:
    """One lake: its catalog URL, its storage, the tables it holds."""

    def __init__(self, url: str | CatalogUrl, storage: Storage, tables: TableRegistry) -> None:
        self.url = url if isinstance(url, CatalogUrl) else parse_url(url)
        if self.url.kind == "hive":
            raise ConfigError("a hive lake has no catalog")
        self.storage = storage
        self.tables = tables
        self._ensured: set[str] = set()
        self._ensure_lock = threading.Lock()
        self._write_lock = (
            WriteLock(self.url.target + WRITE_LOCK_SUFFIX) if self.url.kind == "sqlite" else None
        )

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Held around each write transaction (:class:`WriteLock`, a SQLite catalog's);
        nothing for PostgreSQL, where DuckLake itself retries a commit that met another."""
        return self._write_lock.holding() if self._write_lock else contextlib.nullcontext()

    @property
    def data_path(self) -> str:
        return data_path(self.storage)

    @property
    def travels_with_root(self) -> bool:
        """Whether the catalog is a SQLite file inside a local root (the default)."""
        if self.url.kind != "sqlite" or self.storage.remote:
            return False
        return Path(self.url.target).resolve().parent == Path(self.storage.root).resolve()

    def connect(self, *, threads: int | None = None, read_only: bool = False) -> Any:
        """A DuckDB connection with the lake attached as ``lake`` (its tables not yet
        created: :meth:`ensure_tables`)."""
        needed = {"ducklake", self.url.extension} | ({"httpfs"} if self.storage.remote else set())
        # Only what the catalog needs is loaded: each extension's code costs the process
        # memory (all four: ~85 MB). Once DuckDB has checked their signatures (here, or
        # in an earlier process: rtclake.lake.extensions), the catalog's connections,
        # which run rtclake's SQL only, load them with ``allow_unsigned_extensions``.
        with extensions.lock():
            verified = extensions.checked(needed)
            before = None if verified else extensions.identity()
            config: dict[str, Any] = {
                "extension_directory": extensions.directory(),
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_unsigned_extensions": verified,  # else DuckDB checks them now
            }
            if threads:
                config["threads"] = threads
            con = duckdb.connect(config={**config, **ALLOCATOR})
            try:
                for name in sorted(needed):
                    con.execute(f"LOAD {name}")
            except duckdb.Error as exc:
                con.close()
                raise ConfigError(f"DuckDB's extensions do not load: {exc}") from exc
            if not verified:
                extensions.remember(needed, before)
        try:
            con.execute("SET TimeZone = 'UTC'")
            if self.storage.remote:
                self.storage.duckdb_setup(con)
            if self.url.kind == "sqlite":
                Path(self.url.target).parent.mkdir(parents=True, exist_ok=True)
            if not self.storage.remote:
                Path(self.storage.root).mkdir(parents=True, exist_ok=True)
            options = [f"DATA_PATH {literal(self.data_path)}"]
            if self.travels_with_root:
                # The catalog lives inside the lake's folder and its files' paths are
                # relative to it: a folder moved, renamed or restored elsewhere is still
                # the same lake (DuckLake would refuse the path it kept at its creation).
                options.append("OVERRIDE_DATA_PATH true")
            if read_only:
                options.append("READ_ONLY")
            else:
                options.append("DATA_INLINING_ROW_LIMIT 0")
                if self.url.kind == "sqlite":
                    # WAL: readers (``rtclake query``, the dashboard) never wait for the
                    # writer's commits, nor the writer for them. Set through DuckDB's own
                    # SQLite, never Python's: a second copy of the library in the process
                    # drops the other's POSIX locks on the file when it closes it, and
                    # the other then deletes the WAL index under the live writer ("disk
                    # I/O error", then "database disk image is malformed").
                    options.append("META_JOURNAL_MODE 'WAL'")
            self._attach(con, f"ATTACH {literal(self.url.attach_target)} AS {ALIAS}"
                               f" ({', '.join(options)})")  # fmt: skip
            con.execute(f"SET ducklake_max_retry_count = {MAX_RETRIES}")
        except BaseException:
            con.close()
            raise
        return con

    @staticmethod
    def _attach(con: Any, statement: str, attempts: int = 8) -> None:
        """``ATTACH`` the lake. The first attach of a new PostgreSQL catalog creates
        DuckLake's tables; nodes starting together race at it, and all but one fail
        ("relation ... already exists", or PostgreSQL's "duplicate key value" on its own
        catalog): tried again, each then finds the tables made. A refusal that quotes
        the URL has its password masked."""
        for attempt in range(attempts):
            try:
                con.execute(statement)
                return
            except duckdb.Error as exc:
                text = str(exc)
                if attempt < attempts - 1 and _created_by_another(text):
                    time.sleep(0.05 * (attempt + 1))
                    continue
                if "does not match existing data path" in text:
                    raise ConfigError(
                        f"lake.root: the catalog (lake.catalog) keeps its lake's files under"
                        f" another path ({redact(text.splitlines()[0])}): set lake.root to"
                        " that path, or lake.catalog to the catalog of this root"
                    ) from None
                shown = redact(text)  # PostgreSQL's refusal quotes the whole URL
                if shown == text:
                    raise
                raise type(exc)(shown) from None

    # -- tables -----------------------------------------------------------------------

    def ensure_tables(self, con: Any, names: Iterable[str] | None = None) -> None:
        """Create the lake's tables that are missing (partitioned by date from the start),
        add columns a newer version declares, and the ledger. Safe beside other nodes
        doing the same (a conflict is retried)."""
        wanted = [self.tables[n] for n in names] if names is not None else list(self.tables)
        with self._ensure_lock:
            todo = [t for t in wanted if t.name not in self._ensured]
            if not todo and LEDGER in self._ensured:
                return
            for attempt in range(10):
                try:
                    self._ensure(con, todo)
                    break
                except duckdb.Error as exc:
                    if attempt == 9 or not conflict(exc):
                        raise
                    _rollback(con)
                    time.sleep(0.05 * (attempt + 1))
            self._ensured.update(t.name for t in todo)
            self._ensured.add(LEDGER)

    def _ensure(self, con: Any, todo: list[Table]) -> None:
        existing = self.columns(con)
        if not self.holds_data(existing):
            self.refuse_foreign_files(con)
        con.execute("BEGIN")
        try:
            if LEDGER not in existing:
                con.execute(f"CREATE TABLE IF NOT EXISTS {ALIAS}.{LEDGER} ({LEDGER_COLUMNS})")
            for table in todo:
                wanted = duck_columns(con, table)
                have = existing.get(table.name)
                if have is None:
                    body = ", ".join(f'"{n}" {t}' for n, t in wanted.items())
                    con.execute(f'CREATE TABLE {ALIAS}."{table.name}" ({body}, "{PARTITION}" DATE)')
                    con.execute(
                        f'ALTER TABLE {ALIAS}."{table.name}" SET PARTITIONED BY ("{PARTITION}")'
                    )
                    continue
                for name, duck_type in wanted.items():
                    if name not in have:
                        con.execute(
                            f'ALTER TABLE {ALIAS}."{table.name}" ADD COLUMN "{name}" {duck_type}'
                        )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def refuse_foreign_files(self, con: Any) -> None:
        """Refuse a catalog that holds no table yet over a data path that holds a
        catalogued lake's files (``main/``): another catalog's, most likely a node or a
        host where ``lake.catalog`` was left out (its default, a SQLite file of its own).
        Its cleanup would take every one of those files for an orphan and delete it, and
        its node would store its batches where no other node sees them."""
        if not self.storage.holds_parquet("main") or self.holds_data(self.columns(con)):
            return  # (another node may have created the tables meanwhile: then it is ours)
        raise ConfigError(
            f"lake.catalog {self.url}: this catalog holds no table, but lake.root"
            f" {self.storage.root} already holds a catalogued lake's files (under main/):"
            " set lake.catalog to the catalog they were written with (every node and host"
            " of a lake uses the same one); a new catalog there would take them for"
            " orphans and delete them"
        )

    def holds_data(self, columns: dict[str, set[str]]) -> bool:
        """Whether a catalog with these tables (:meth:`columns`) has any table data
        files can belong to: a lake table or the ledger (not maintenance's own log)."""
        return any(name == LEDGER or name in self.tables for name in columns)

    def columns(self, con: Any) -> dict[str, set[str]]:
        """The lake's tables and their columns, as the catalog has them now."""
        rows = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_catalog = ?",
            [ALIAS],
        ).fetchall()
        found: dict[str, set[str]] = {}
        for table, column in rows:
            found.setdefault(table, set()).add(column)
        return found

    def set_options(self, con: Any, options: dict[str, str], table: str | None = None) -> None:
        """DuckLake's options (kept in the catalog, shared by every node) for the whole
        lake or one ``table``, where they differ: nodes starting together each set them,
        and a PostgreSQL catalog refuses concurrent updates of one row ("could not
        serialize access"): retried."""
        scope = "GLOBAL" if table is None else "TABLE"
        entry = None if table is None else f"main.{table}"
        current = {
            name: value
            for name, value, *where in con.execute(
                f"SELECT option_name, value, scope, scope_entry FROM ducklake_options('{ALIAS}')"
            ).fetchall()
            if where == [scope, entry]
        }
        scoped = "" if table is None else ", table_name => ?"
        for name, value in options.items():
            if current.get(name) == value:
                continue
            for attempt in range(10):
                try:
                    con.execute(
                        f"CALL {ALIAS}.set_option(?, ?{scoped})",
                        [name, value] + ([] if table is None else [table]),
                    )
                    break
                except duckdb.Error as exc:
                    if attempt == 9 or not conflict(exc):
                        raise
                    _rollback(con)
                    time.sleep(0.05 * (attempt + 1))

    # -- reading ------------------------------------------------------------------------

    def live_files(self, con: Any, table: str) -> list[str]:
        """The data files of one table in the connection's current snapshot (DuckLake
        lists each file once; rtclake deletes whole files only, so no delete files)."""
        rows = con.execute(
            "SELECT data_file, delete_file FROM ducklake_list_files(?, ?)", [ALIAS, table]
        ).fetchall()
        if any(delete is not None for _, delete in rows):
            raise RuntimeError(f"table {table} has delete files, which rtclake never writes")
        return sorted(str(path) for path, _ in rows)

    def last_committed(self, con: Any, node: str, run: str) -> int | None:
        """The highest sequence the ledger holds for one node's run (None: none)."""
        row = con.execute(
            f"SELECT max(seq) FROM {ALIAS}.{LEDGER} WHERE node = ? AND run = ?", [node, run]
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])


class CommitLock:
    """Serialises the nodes' transactions on one table of a PostgreSQL catalog, from
    before the repeat check to the commit: a session advisory lock per table, on a
    connection of the sink's own, waited for (up to ``wait`` seconds).

    DuckLake commits two appends to one table side by side without a conflict, so two
    nodes holding the same record (a client's retry against another node, a report by
    webhook to one and by log to the other) had each checked the lake before the other
    committed, and both had stored it. A SQLite catalog needs none: it refuses a commit
    when another committed since the transaction began, and the sink then checks again.
    PostgreSQL lets the locks go when the session ends (a node killed)."""

    def __init__(self, conninfo: str, node: str, wait: float = 60.0) -> None:
        self.conninfo = conninfo
        self.node = node
        self.wait = wait
        self._conn: Any = None

    @staticmethod
    def key(table: str) -> int:
        digest = hashlib.blake2b(f"rtclake.commit:{table}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    @contextlib.contextmanager
    def holding(self, tables: Iterable[str]) -> Iterator[None]:
        """Hold the locks of ``tables`` (in one order: no two nodes wait for each other)."""
        import psycopg

        keys = sorted({self.key(t) for t in tables})
        try:
            conn = self._connection()
            for key in keys:
                conn.execute("SELECT pg_advisory_lock(%s)", [key])
        except BaseException as exc:
            self.close()  # the locks it holds go with the session
            if isinstance(exc, psycopg.Error):  # the batch stays spooled and is retried
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise SinkError(f"lake: the catalog's commit lock: {redact(first)}") from exc
            raise
        try:
            yield
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock_all()")
            except BaseException:
                self.close()
                raise

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=10,
                application_name=f"rtclake commit {self.node}"[:63],
                keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
            )  # fmt: skip
            self._conn.execute(f"SET lock_timeout = '{int(self.wait * 1000)}ms'")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def duck_columns(con: Any, table: Table) -> dict[str, str]:
    """The table's stored columns with their DuckDB types (as DuckDB reads the Arrow)."""
    empty = table.stored_schema.empty_table()
    relation = con.from_arrow(empty)
    return {name: str(t) for name, t in zip(relation.columns, relation.types, strict=True)}


def _created_by_another(text: str) -> bool:
    """Whether an attach failed creating DuckLake's tables that another node created."""
    return "Failed to initialize DuckLake" in text and (
        "already exists" in text or "duplicate key value" in text
    )


def conflict(exc: BaseException) -> bool:
    """Whether a catalog error is another connection's concurrent change (worth a retry):
    a conflict DuckLake gave up retrying, PostgreSQL's serialization failure, SQLite's
    "database is locked" (another connection committed since the transaction began)."""
    text = str(exc).lower()
    return any(w in text for w in ("conflict", "serializ", "locked", "concurrent"))


def _rollback(con: Any) -> None:
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def date_column(rows: pa.Table) -> pa.Array:
    """The UTC date of each row's ``time`` (the partition)."""
    import pyarrow.compute as pc

    days = pc.floor_temporal(rows["time"], unit="day")
    return pc.cast(pc.cast(days, pa.timestamp("us")), pa.date32())
