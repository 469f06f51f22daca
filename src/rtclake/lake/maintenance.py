"""The lake's maintenance: retention, merging small files, expiring snapshots, cleanup.

Every batch the writer commits adds a file per table and date, and a snapshot to the
catalog; nothing ever leaves by itself. A run of :class:`Maintenance` does four steps, in
this order and one after the other (never two at once: two merges at once, or a merge
beside a retention ``DELETE``, conflict in DuckLake):

1. **retention**: a table with a TTL (``lake.maintenance.retention``, days; ``"*"`` for
   every table without its own) loses the date partitions whose whole UTC day lies before
   ``now - TTL``: ``DELETE FROM lake.T WHERE date < CUTOFF``. The predicate covers whole
   files (each file holds one date), so DuckLake drops the files from the snapshot and
   writes no delete files; should it ever write some, the table's files with deletes are
   rewritten at once, since rtclake's readers expect none.
2. **merge**: ``ducklake_merge_adjacent_files`` per table (and the ledger): the small
   files of one partition become one file. Rows and partitions do not change. Before
   that, a table with ``cluster_by`` (the derived tables read one connection at a time)
   has each UTC day that is over written again once (and when files came to it since) in one
   transaction, sorted by those columns (``DELETE`` of the day's partition, which drops
   its files, and an ``INSERT`` of their rows in order; ``sort_closed_days``): a page of
   one connection then reads one or two of the day's row groups, not one in every file.
   The merge alone only joins files end to end, each a sorted run of its own. A table
   with a ``rollup`` (``connection_spans``: rows per connection and batch) has its days
   folded the same way, today's too (it is small), into fewer rows (one per connection and
   span), the sum of a column checked unchanged.
3. **expire**: snapshots older than ``expire_after`` are dropped from the catalog, and the
   files only they referenced are scheduled for deletion. ``expire_after`` must outlast
   any node's recovery and the longest query: what still reads an expired snapshot
   fails. With a SQLite catalog DuckLake 1.4 compares these times by date, so expire and
   cleanup ask for the end of the day before (see :meth:`Maintenance._older_than`):
   there things stay up to a day longer than asked.
4. **cleanup**: the files scheduled for deletion at least ``cleanup_after`` ago are
   deleted (``ducklake_cleanup_old_files``), and so are orphans: data files under the
   lake's root that no snapshot knows, uploaded by a transaction that never committed.
   ``cleanup_after`` must exceed the gap between a writer's upload and its commit, or a
   batch still being committed would lose its files. On object storage DuckLake lists
   the orphans (``ducklake_delete_orphaned_files`` with ``dry_run``); in a local folder
   rtclake lists them itself, with ``stat`` only (DuckLake's listing reads every file
   under the data path, the SQLite catalog's own among them, and closing them dropped
   the process's SQLite locks: see :meth:`Maintenance._local_orphans`). Either way only
   files named as DuckLake names its data files are deleted: DuckLake counts every other
   file under the data path as an orphan too, the default SQLite catalog
   (``ROOT/catalog.sqlite``), its journal and this module's lock file among them.

Only one node runs maintenance at a time (the *leader* of that run): a run takes a lock
without waiting and does nothing when another node holds it: an ``flock`` on
``CATALOG.maintenance.lock`` beside a SQLite catalog (one machine), a PostgreSQL advisory
lock in the catalog's database (several), held until the run ends. Each run is recorded
in the lake's table ``rtclake_maintenance``; the scheduled run
(:meth:`Maintenance.run_if_due`) does nothing when any node started one less than
``interval`` ago, so of several nodes on one schedule one maintains the lake.

A SQLite catalog refuses a commit when another connection committed since the committing
transaction began ("database is locked"). A merge's transaction lasts as long as writing
the merged files, and beside a writer committing more often than that it did not get
through: tried again and again, each time merging anew (a core's work for as long as the
load lasted), until the step failed. So on a SQLite catalog each of maintenance's
statements, and each of the lake sink's transactions, holds the catalog's write lock
(:class:`~rtclake.lake.catalog.WriteLock`, an ``flock`` on ``CATALOG.write.lock``): they
take turns, and a writer waits out a merge with its batches durable in the spool. A
statement that meets a busy catalog all the same (a writer that takes no lock) is tried
again, for up to ``busy_timeout`` seconds. On a PostgreSQL catalog DuckLake itself retries
a commit that met another's, and there is no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from rtclake.config import MaintenanceConfig as MaintenanceConfig
from rtclake.errors import ConfigError
from rtclake.lake import layout
from rtclake.lake.catalog import ALIAS, LEDGER, PARTITION, Catalog, CatalogUrl, literal
from rtclake.lake.storage import S3Storage, Storage
from rtclake.metrics import Metrics
from rtclake.tables import Table, TableRegistry

log = structlog.get_logger("rtclake.lake.maintenance")

T = TypeVar("T")

STEPS = ("retention", "merge", "expire", "cleanup")
#: The folder under the data dir where a run spills what outgrows its memory limit.
MAINTENANCE_TMP = "maintenance-tmp"
#: ``retention`` key that applies to every table without its own entry.
ALL_TABLES = "*"
#: The PostgreSQL advisory lock of the maintenance leader: a fixed 64-bit key (advisory
#: locks are per database, so each lake's catalog has its own).
ADVISORY_KEY = int.from_bytes(
    hashlib.blake2b(b"rtclake.lake.maintenance", digest_size=8).digest(), "big", signed=True
)
#: The lake's table of maintenance runs (what :meth:`Maintenance.run_if_due` reads); like
#: the ledger, no query view shows it.
RUNS_TABLE = "rtclake_maintenance"
RUNS_COLUMNS = "node VARCHAR, started TIMESTAMPTZ, seconds DOUBLE, ok BOOLEAN"
#: The days of clustered tables written again in order (``sort_closed_days``): the files
#: a day had just after, so a day is sorted again only when files came since.
SORTED_TABLE = "rtclake_sorted_days"
SORTED_COLUMNS = "table_name VARCHAR, day DATE, files INTEGER, rows BIGINT, sorted TIMESTAMPTZ"
#: The suffix of the lock file beside a SQLite catalog.
LOCK_SUFFIX = ".maintenance.lock"


def cutoff_date(now: dt.datetime, days: float) -> dt.date:
    """The first date partition a TTL of ``days`` keeps at ``now``: a partition expires
    once its whole UTC day lies before ``now - days``, i.e. its next midnight is no later,
    so every date before the date of ``now - days`` goes."""
    moment = now.astimezone(dt.UTC) - dt.timedelta(days=days)
    return moment.date()


# -- the leader lock ----------------------------------------------------------------------


class LeaderLock:
    """The lock whose holder runs maintenance; taken without waiting, held for a run.

    ``with lock as held:`` takes it (``held``: whether it was got) and lets it go after.
    :attr:`holder` names who held it when it was refused, as far as known."""

    holder: str | None = None

    def acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


class FileLock(LeaderLock):
    """An exclusive ``flock`` on a file: one machine (a SQLite catalog). The kernel lets it
    go when the process ends, also on kill -9. Each acquire opens the file anew, so two
    locks in one process exclude each other as two processes do."""

    def __init__(self, path: str | os.PathLike[str], node: str) -> None:
        self.path = Path(path)
        self.node = node
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or None
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.node} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd
        self.holder = None
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


class AdvisoryLock(LeaderLock):
    """``pg_try_advisory_lock`` on a connection of its own to the catalog's database:
    several nodes. PostgreSQL lets it go when the session ends, so a node that dies
    mid-run frees it for the next."""

    def __init__(
        self, conninfo: str, node: str, key: int = ADVISORY_KEY, purpose: str = "maintenance"
    ) -> None:
        self.conninfo = conninfo
        self.node = node
        self.key = key
        self.purpose = purpose
        self._conn: Any = None

    def acquire(self) -> bool:
        import psycopg

        if self._conn is not None:
            return True
        conn = psycopg.connect(
            self.conninfo,
            autocommit=True,
            connect_timeout=10,
            application_name=f"rtclake {self.purpose} {self.node}"[:63],
            # the client notices a server gone within ~25 s
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )  # fmt: skip
        try:
            # and the server a client host gone (its session, and so the lock, end):
            # without, PostgreSQL waits for the system's keepalive, two hours by default
            for setting, value in (("idle", 30), ("interval", 10), ("count", 3)):
                conn.execute(f"SET tcp_keepalives_{setting} = {value}")
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
            if not (row and row[0]):
                self.holder = self._holder(conn)
                conn.close()
                return False
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.holder = None
        return True

    def _holder(self, conn: Any) -> str | None:
        """The application name of the session holding the lock (a bigint key is kept as
        its high and low 32 bits in ``classid`` and ``objid``)."""
        key = self.key & 0xFFFFFFFFFFFFFFFF
        try:
            row = conn.execute(
                "SELECT a.application_name, a.client_addr::text FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                " AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s"
                " AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database())",
                [key >> 32, key & 0xFFFFFFFF],
            ).fetchone()
        except Exception:  # only a nicer message; the refusal itself stands
            return None
        if not row:
            return None
        name, addr = row
        return f"{name or 'unknown'}" + (f" at {addr}" if addr else "")

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        except Exception:  # closing the session releases it as well
            pass
        finally:
            conn.close()


def check_retention(retention: Mapping[str, Any], tables: TableRegistry) -> None:
    """Refuse a retention of a table the lake does not have (``rtclake run``, ``maintain``
    and ``config`` alike)."""
    unknown = sorted(n for n in retention if n != ALL_TABLES and n not in tables)
    if unknown:
        known = ", ".join(tables.names())
        raise ConfigError(
            f"lake.maintenance.retention: no table {', '.join(unknown)} (known: {known})"
        )


def node_lock(url: CatalogUrl, node: str) -> LeaderLock | None:
    """The lock a node running as ``node`` holds on a lake for its life (``rtclake run``):
    a second process under the same name finds it taken and says so. A file beside a
    SQLite catalog, an advisory lock keyed by the name in a PostgreSQL catalog's
    database; the kernel or PostgreSQL lets it go when the process ends."""
    if url.kind == "sqlite":
        tag = hashlib.blake2b(node.encode(), digest_size=6).hexdigest()
        return FileLock(f"{url.target}.node-{tag}.lock", node)
    if url.kind == "postgres":
        key = int.from_bytes(
            hashlib.blake2b(f"rtclake.node:{node}".encode(), digest_size=8).digest(),
            "big", signed=True,
        )  # fmt: skip
        return AdvisoryLock(url.target, node, key=key, purpose="node")
    return None


def leader_lock(url: CatalogUrl, node: str) -> LeaderLock:
    """The leader lock of a catalog: a file beside a SQLite catalog, a PostgreSQL advisory
    lock in a PostgreSQL catalog's database."""
    if url.kind == "sqlite":
        return FileLock(url.target + LOCK_SUFFIX, node)
    if url.kind == "postgres":
        return AdvisoryLock(url.target, node)
    raise ConfigError(f"a {url.kind} lake has no catalog to maintain")


# -- the report ---------------------------------------------------------------------------


@dataclass
class StepReport:
    """What one step did: its time, counts of what changed, a line per table touched."""

    step: str
    seconds: float = 0.0
    changes: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    error: str | None = None
    #: statements tried again because the catalog was busy (SQLite: another commit)
    retries: int = 0

    def summary(self) -> str:
        """One line of counts (and the error), then the details."""
        counts = ", ".join(f"{value:,} {name}" for name, value in self.changes.items())
        lines = [f"failed: {self.error}" if self.error else (counts or "nothing to do")]
        if self.error and counts:
            lines.append(counts)
        if self.retries:
            lines.append(f"{self.retries} statements tried again (catalog busy)")
        return "\n".join(lines + self.details)


@dataclass
class MaintenanceReport:
    """One run, by the node that led it."""

    node: str
    started: dt.datetime
    seconds: float = 0.0
    steps: list[StepReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.error is None for step in self.steps)

    def step(self, name: str) -> StepReport | None:
        return next((s for s in self.steps if s.step == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "started": self.started.isoformat(),
            "seconds": round(self.seconds, 3),
            "steps": {
                s.step: {
                    "seconds": round(s.seconds, 3),
                    **s.changes,
                    "retries": s.retries,
                    "error": s.error,
                }
                for s in self.steps
            },
        }


# -- maintenance --------------------------------------------------------------------------


class Maintenance:
    """The maintenance of one lake, run by ``node``; see the module's doc.

    ``threads``: DuckDB's threads for the run (1 leaves the other cores to ingest;
    None: all). ``busy_timeout``: seconds a statement that meets a busy catalog is tried
    again before the step fails. ``temp_directory``: where DuckDB spills what outgrows
    ``config.memory_limit``, in a folder of each run's own, removed after it (DuckDB's
    default: ``.tmp`` in the process's working folder)."""

    def __init__(
        self,
        catalog: Catalog,
        config: MaintenanceConfig | None = None,
        *,
        node: str,
        metrics: Metrics | None = None,
        threads: int | None = 1,
        busy_timeout: float = 60.0,
        temp_directory: Path | None = None,
    ) -> None:
        self.catalog = catalog
        self.temp_directory = temp_directory
        self._temp: Path | None = None  # the run's own folder under temp_directory
        self.config = config or MaintenanceConfig()
        self.node = node
        self.metrics = metrics
        self.threads = threads
        self.busy_timeout = busy_timeout
        check_retention(self.config.retention, catalog.tables)
        self._running = threading.Lock()
        #: Who held the leader lock when the last run was refused it, as far as known.
        self.holder: str | None = None
        self._step: StepReport | None = None  # the step under way, for its retries

    def leader(self) -> LeaderLock:
        """A new leader lock on this lake's catalog (not yet taken)."""
        return leader_lock(self.catalog.url, self.node)

    def run(self, now: dt.datetime | None = None) -> MaintenanceReport | None:
        """One run of every step, in order, if this node gets the leader lock; None when
        another node holds it. ``now`` (default: the clock) is the time the TTLs,
        ``expire_after`` and ``cleanup_after`` count back from.

        A step that fails is reported (and logged) and the next steps still run: each
        stands on its own, and one broken table must not stop the cleanup of the others.
        The run counts as failed then; errors outside the steps (the lock, the catalog's
        connection) are counted and raised."""
        return self._lead(now, due_only=False)

    def run_if_due(self, now: dt.datetime | None = None) -> MaintenanceReport | None:
        """The scheduled run (``rtclake run``, every ``interval`` on each node): as
        :meth:`run`, but when any node started a run less than ``interval`` ago (less a
        little slack for timers) nothing is done and None returned (outcome
        ``skipped``). So of several nodes on one schedule, one maintains the lake per
        interval, not each in turn: the lock alone only keeps them from running at once.
        Runs are recorded in the lake's table ``rtclake_maintenance``."""
        return self._lead(now, due_only=True)

    def _lead(self, now: dt.datetime | None, *, due_only: bool) -> MaintenanceReport | None:
        now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        if not self._running.acquire(blocking=False):  # a run of this object is under way
            self._count("not_leader")
            return None
        try:
            lock = self.leader()
            try:
                held = lock.acquire()
            except Exception:
                self._count("failed")
                raise
            self.holder = lock.holder
            if not held:
                self._count("not_leader")
                log.info("maintenance: another node leads", node=self.node, holder=lock.holder)
                return None
            try:
                report = self._run(now, due_only=due_only)
            except Exception:
                self._count("failed")
                raise
            finally:
                lock.release()
        finally:
            self._running.release()
        if report is None:
            self._count("skipped")
            return None
        self._count("done" if report.ok else "failed")
        if report.ok and self.metrics is not None:
            self.metrics.maintenance_last_run.labels(self.node).set(time.time())
        log.info("maintenance: done", **report.as_dict())
        return report

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.maintenance_runs.labels(self.node, outcome).inc()

    def _run(self, now: dt.datetime, *, due_only: bool = False) -> MaintenanceReport | None:
        # a folder of the run's own for DuckDB's spill files, removed after it
        if self.temp_directory is not None:
            self.temp_directory.mkdir(parents=True, exist_ok=True)
            self._temp = Path(tempfile.mkdtemp(prefix="run-", dir=self.temp_directory))
        try:
            con = self._retrying(None, self._connect)
            try:
                if due_only:
                    last = self._last_start(con)
                    slack = min(60.0, self.config.interval * 0.05)
                    if last is not None and now.timestamp() - last < self.config.interval - slack:
                        return None
                report = self._steps(con, now)
            finally:
                con.close()
        finally:
            if self._temp is not None:
                shutil.rmtree(self._temp, ignore_errors=True)
                self._temp = None
        return report

    def _write_replaced(self, con: Any) -> None:
        """Write :data:`layout.REPLACED`: the paths of the files the folders still hold
        that the current snapshot does not (a merge's, a sort's, retention's), for the
        readers of the folders. A list that cannot be written is only logged (the run
        goes on; those readers count such files' rows twice until the next run)."""
        meta = f"__ducklake_metadata_{ALIAS}"
        root = self.catalog.data_path
        try:
            rows = self._query(con, REPLACED_SQL.format(meta=meta), [root, root])
            paths = sorted({r[0][len(root) :] for r in rows if r[0].startswith(root)})
            table = pa.table({"path": pa.array(paths, pa.string())})
            buffer = pa.BufferOutputStream()
            pq.write_table(table, buffer)
            content = buffer.getvalue()
            self.catalog.storage.write_bytes(layout.REPLACED, content)
        except (duckdb.Error, OSError, pa.ArrowException) as exc:
            log.warning("maintenance: list of replaced files not written", error=str(exc))

    def _last_start(self, con: Any) -> float | None:
        """When the last recorded run started (Unix time), by any node; None: never."""
        if RUNS_TABLE not in self._retrying(con, lambda: self.catalog.columns(con)):
            return None
        rows = self._query(con, f"SELECT epoch(max(started)) FROM {ALIAS}.{RUNS_TABLE}")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def _record(self, con: Any, report: MaintenanceReport) -> None:
        """Add the run to ``rtclake_maintenance`` (what :meth:`run_if_due` reads); a run
        that cannot be recorded is only logged: the next node then runs again."""
        try:
            self._query(con, f"CREATE TABLE IF NOT EXISTS {ALIAS}.{RUNS_TABLE} ({RUNS_COLUMNS})")
            self._query(
                con,
                f"INSERT INTO {ALIAS}.{RUNS_TABLE} VALUES (?, ?::TIMESTAMPTZ, ?, ?)",
                [report.node, _timestamp(report.started), report.seconds, report.ok],
            )
        except duckdb.Error as exc:
            log.warning("maintenance: run not recorded", error=_message(exc))

    def _steps(self, first: Any, now: dt.datetime) -> MaintenanceReport:
        """The steps in order on ``first`` (the caller closes it), or on a new connection
        after a step failed (closed here)."""
        con = first
        report = MaintenanceReport(self.node, now)
        started = time.perf_counter()
        steps: list[tuple[str, Callable[[Any, dt.datetime, StepReport], None]]] = [
            ("retention", self._retention),
            ("merge", self._merge),
            ("expire", self._expire),
            ("cleanup", self._cleanup),
        ]
        if not self.config.merge:
            steps.pop(1)
        try:
            for name, step in steps:
                result = StepReport(name)
                report.steps.append(result)
                self._step = result
                begun = time.perf_counter()
                try:
                    step(con, now, result)
                except Exception as exc:
                    result.error = _message(exc)
                    if isinstance(exc, duckdb.OutOfMemoryException):
                        limit = self.config.memory_limit.human_readable(separator=" ")
                        result.error = (f"{result.error[:400]} (lake.maintenance.memory_limit"
                                        f" is {limit})")  # fmt: skip
                    log.error("maintenance: step failed", step=name, error=result.error)
                    # its connection may be left mid-transaction: the next step gets a new one
                    con.close()
                    con = self._retrying(None, self._connect)
                finally:
                    result.seconds = time.perf_counter() - begun
                    self._observe(result)
                self._write_replaced(con)
            report.seconds = time.perf_counter() - started
            self._record(con, report)
        finally:
            self._step = None
            if con is not first:
                con.close()
        return report

    def _connect(self) -> Any:
        """The run's connection, kept to ``config.memory_limit`` and spilling into the
        run's folder. Without a limit DuckDB would take up to 80 % of the host's memory
        before it spills, beside the node's ingest. Merging rtc_stats, 170 columns, needs
        ~0.5 GiB a thread whatever the limit: its Parquet row groups. (Figures:
        docs/BENCHMARKS.md, "The targets on 6a6eee9".)"""
        con = self.catalog.connect(threads=self.threads)
        try:
            con.execute(f"SET memory_limit = '{int(self.config.memory_limit)}B'")
            if self._temp is not None:
                con.execute(f"SET temp_directory = {literal(str(self._temp))}")
        except BaseException:
            con.close()
            raise
        return con

    def _observe(self, result: StepReport) -> None:
        m = self.metrics
        if m is None:
            return
        m.maintenance_step_seconds.labels(self.node, result.step).observe(result.seconds)
        removed = {
            "retention": result.changes.get("files removed", 0),
            "merge": result.changes.get("files before", 0) - result.changes.get("files after", 0),
            "cleanup": result.changes.get("files deleted", 0)
            + result.changes.get("orphans deleted", 0),
        }.get(result.step, 0)
        if removed > 0:
            m.maintenance_files_removed.labels(self.node, result.step).inc(removed)
        if result.step == "expire" and result.changes.get("snapshots expired"):
            m.maintenance_snapshots_expired.labels(self.node).inc(
                result.changes["snapshots expired"]
            )

    def _retrying(self, con: Any, what: Callable[[], T]) -> T:
        """``what()``, tried again while the catalog is busy (SQLite: another connection
        commits) or a commit conflicts beyond DuckLake's own retries, for up to
        ``busy_timeout`` seconds. Every statement given here can run twice: a commit
        that failed left nothing behind but uploaded files, which cleanup takes as
        orphans. On a SQLite catalog each try holds the catalog's write lock
        (:class:`~rtclake.lake.catalog.WriteLock`): writers wait, and the try is not
        refused for their commits."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.02
        while True:
            try:
                with self.catalog.writing():
                    return what()
            except duckdb.Error as exc:
                if not _busy(exc) or time.monotonic() + delay > deadline:
                    raise
                if con is not None:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                if self._step is not None:
                    self._step.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _query(self, con: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement, run as :meth:`_retrying` runs it."""
        return self._retrying(con, lambda: con.execute(sql, list(params)).fetchall())

    def _count_of(self, con: Any, sql: str, params: Sequence[Any] = ()) -> int:
        """The number in the first column of the first row (0: none)."""
        rows = self._query(con, sql, params)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def _tables(self, con: Any) -> list[str]:
        """The registry's tables that the lake has (in the registry's order)."""
        existing = self._retrying(con, lambda: self.catalog.columns(con))
        return [t.name for t in self.catalog.tables if t.name in existing]

    def _files(self, con: Any, table: str) -> list[tuple[str, str | None]]:
        """``(data file, delete file)`` of each live file of ``table``."""
        rows = self._query(
            con, "SELECT data_file, delete_file FROM ducklake_list_files(?, ?)", [ALIAS, table]
        )
        return [(str(data), None if delete is None else str(delete)) for data, delete in rows]

    # -- the steps --------------------------------------------------------------------

    def _retention(self, con: Any, now: dt.datetime, result: StepReport) -> None:
        rows = partitions = removed = rewritten = 0
        for name in self._tables(con):
            days = self.config.ttl(name)
            if days is None:
                continue
            cutoff = cutoff_date(now, days)
            target = f'{ALIAS}."{name}"'
            dates: list[dt.date] = [
                row[0]
                for row in self._query(
                    con,
                    f'SELECT DISTINCT "{PARTITION}" FROM {target} WHERE "{PARTITION}" < ?'
                    " ORDER BY 1",
                    [cutoff],
                )
            ]
            if not dates:
                continue
            before = _expired_files(self._files(con, name), cutoff)
            deleted = self._count_of(con, f'DELETE FROM {target} WHERE "{PARTITION}" < ?', [cutoff])
            after = self._files(con, name)
            with_deletes = sum(1 for _, delete in after if delete is not None)
            if with_deletes:
                # Not expected (each file holds one date), but rtclake's readers take
                # whole files only: write the files with deletes again without them.
                log.warning("maintenance: retention left delete files", table=name,
                            files=with_deletes)  # fmt: skip
                self._query(
                    con,
                    "CALL ducklake_rewrite_data_files(?, ?, delete_threshold => 0)",
                    [ALIAS, name],
                )
                rewritten += with_deletes
                after = self._files(con, name)
            rows += deleted
            partitions += len(dates)
            removed += max(before - _expired_files(after, cutoff), 0)
            if self.metrics is not None and deleted:
                self.metrics.maintenance_rows_deleted.labels(self.node, name).inc(deleted)
            shown = _dates(dates)
            result.details.append(
                f"{name}: {deleted:,} rows, {len(dates)} partitions ({shown}), TTL {days:g} d,"
                f" kept from {cutoff.isoformat()}"
            )
        result.changes.update({"rows deleted": rows, "partitions deleted": partitions,
                               "files removed": removed})  # fmt: skip
        if rewritten:
            result.changes["files rewritten"] = rewritten

    def _merge(self, con: Any, now: dt.datetime, result: StepReport) -> None:
        total_before = total_after = 0
        names = self._tables(con)
        existing = self._retrying(con, lambda: self.catalog.columns(con))
        names += [name for name in (LEDGER, RUNS_TABLE, SORTED_TABLE) if name in existing]
        for name in names:
            if self.config.sort_closed_days and name in self.catalog.tables:
                table = self.catalog.tables[name]
                if table.cluster_by or table.rollup:
                    self._sort_closed_days(con, now, table, result)
            before = len(self._files(con, name))
            total_before += before
            if before < 2:
                total_after += before
                continue
            self._query(con, "CALL ducklake_merge_adjacent_files(?, ?)", [ALIAS, name])
            after = len(self._files(con, name))
            total_after += after
            if after != before:
                result.details.append(f"{name}: {before:,} -> {after:,} files")
        result.changes.update({"files before": total_before, "files after": total_after})

    def _sort_closed_days(
        self, con: Any, now: dt.datetime, table: Table, result: StepReport
    ) -> None:
        """Write each day of ``table`` that is over again as one run sorted by
        ``table.cluster_by``: once, and again when files came to it since (late rows). A
        day's single file is sorted too: it may be merged files, each a run of its own.
        A table with a ``rollup`` has its days folded, today's included (writers add to it
        meanwhile: their files, not in this transaction's snapshot, stay as they are)."""
        today = now.astimezone(dt.UTC).date()
        per_day: dict[dt.date, int] = {}
        for path, _ in self._files(con, table.name):
            day = _partition_day(path)
            if day is not None:
                per_day[day] = per_day.get(day, 0) + 1
        done: dict[dt.date, int] = {}
        if SORTED_TABLE in self._retrying(con, lambda: self.catalog.columns(con)):
            done = {
                day: files
                for day, files in self._query(
                    con,
                    f"SELECT day, arg_max(files, sorted) FROM {ALIAS}.{SORTED_TABLE}"
                    " WHERE table_name = ? GROUP BY day",
                    [table.name],
                )
            }
        for day, files in sorted(per_day.items()):
            # a rollup's rows are few: today's are folded too, at each run new files came
            last = today if table.rollup else today - dt.timedelta(days=1)
            if day > last or done.get(day) == files:
                continue
            begun = time.perf_counter()
            rows = self._retrying(con, functools.partial(self._sort_day, con, table, day))
            after = sum(1 for path, _ in self._files(con, table.name)
                        if _partition_day(path) == day)  # fmt: skip
            self._query(
                con, f"CREATE TABLE IF NOT EXISTS {ALIAS}.{SORTED_TABLE} ({SORTED_COLUMNS})"
            )
            self._query(
                con,
                f"INSERT INTO {ALIAS}.{SORTED_TABLE} VALUES (?, ?, ?, ?, now())",
                [table.name, day, after, rows],
            )
            result.changes["days sorted"] = result.changes.get("days sorted", 0) + 1
            done_how = "folded into" if table.rollup else "sorted into"
            result.details.append(
                f"{table.name} {day.isoformat()}: {files} files {done_how} {after}, {rows:,}"
                f" rows by {', '.join(table.cluster_by)} ({time.perf_counter() - begun:.1f} s)"
            )

    def _sort_day(self, con: Any, table: Table, day: dt.date) -> int:
        """One transaction: the day's files listed, its partition deleted (DuckLake drops
        whole files, no delete files), their rows inserted again in order, or folded by
        the table's rollup; the rows inserted."""
        target = f'{ALIAS}."{table.name}"'
        con.execute("BEGIN")
        try:
            # (live_files refuses a table with delete files, whose rows this would revive)
            paths = [
                p for p in self.catalog.live_files(con, table.name) if _partition_day(p) == day
            ]
            source = "read_parquet(?, union_by_name = true)"
            before = after = None
            if table.rollup:
                keeps = f'sum("{table.rollup.keeps}")'
                before = con.execute(f"SELECT {keeps} FROM {source}", [paths]).fetchone()
                source = f"({table.rollup.sql.format(rows=source)})"
            deleted = con.execute(f'DELETE FROM {target} WHERE "{PARTITION}" = ?', [day]).fetchone()
            names = table.stored_schema.names
            columns = ", ".join(f'"{n}"' for n in names)
            order = ", ".join(f'"{n}"' for n in table.cluster_by or names[:1])
            inserted = con.execute(
                f'INSERT INTO {target} ({columns}, "{PARTITION}") SELECT {columns}, ?::DATE'
                f" FROM {source} ORDER BY {order}",
                [day, paths],
            ).fetchone()
            removed = int(deleted[0]) if deleted else -1
            added = int(inserted[0]) if inserted else -2
            if table.rollup:
                after = con.execute(
                    f'SELECT {keeps} FROM {target} WHERE "{PARTITION}" = ?', [day]
                ).fetchone()
                if before != after or removed < added:
                    raise RuntimeError(
                        f"{table.name} {day}: {removed} rows folded into {added}, but the sum"
                        f" of {table.rollup.keeps} went from {before and before[0]} to"
                        f" {after and after[0]}; nothing changed"
                    )
            elif removed != added:
                raise RuntimeError(
                    f"{table.name} {day}: {removed} rows deleted but {added} read from"
                    f" {len(paths)} files; nothing changed"
                )
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return added

    def _older_than(self, now: dt.datetime, seconds: float) -> str:
        """The ``older_than`` of expire and cleanup: ``now - seconds``, but with a SQLite
        catalog the end of the UTC day before that. DuckLake 1.4 compares the catalog's
        snapshot and schedule times with it by date there (measured: a file scheduled
        at 16:35 is listed for ``older_than`` 00:00 of the same day), so anything of the
        day of ``now - seconds`` would go at once; before that day, the comparison is
        right. So on SQLite a snapshot or replaced file stays up to a day longer than
        asked, never shorter."""
        moment = now - dt.timedelta(seconds=seconds)
        if self.catalog.url.kind == "sqlite":
            day = dt.datetime.combine(moment.astimezone(dt.UTC).date(), dt.time(), dt.UTC)
            moment = day - dt.timedelta(microseconds=1)
        return _timestamp(moment)

    def _expire(self, con: Any, now: dt.datetime, result: StepReport) -> None:
        older = self._older_than(now, self.config.expire_after)
        expired = self._count_of(
            con,
            "SELECT count(*) FROM ducklake_expire_snapshots(?, older_than => ?::TIMESTAMPTZ)",
            [ALIAS, older],
        )
        result.changes["snapshots expired"] = expired

    def _cleanup(self, con: Any, now: dt.datetime, result: StepReport) -> None:
        older = self._older_than(now, self.config.cleanup_after)
        deleted = self._count_of(
            con,
            "SELECT count(*) FROM ducklake_cleanup_old_files(?, older_than => ?::TIMESTAMPTZ)",
            [ALIAS, older],
        )
        if not self.catalog.holds_data(self.catalog.columns(con)):
            # a catalog without tables wrote no file: what is under the root is another
            # catalog's (see Catalog.refuse_foreign_files), never an orphan of this one
            result.changes.update({"files deleted": deleted, "orphans deleted": 0})
            if self.catalog.storage.holds_parquet("main"):
                result.details.append(
                    "the catalog holds no table: the files under the lake's root are"
                    " another catalog's and were left alone (is lake.catalog theirs?)"
                )
            return
        # orphans are aged by their files' times
        cutoff = now - dt.timedelta(seconds=self.config.cleanup_after)
        if self.catalog.storage.remote:
            listed = self._orphans_listed_by_ducklake(con, cutoff)
        else:
            listed = self._local_orphans(con, cutoff)
        orphans = [path for path in listed if _is_data_file(path, self.catalog)]
        removed = sum(_remove(self.catalog.storage, path) for path in orphans)
        result.changes.update({"files deleted": deleted, "orphans deleted": removed})
        skipped = len(listed) - len(orphans)
        if skipped:
            result.details.append(
                f"{skipped} other files under the lake's root left alone (not DuckLake's)"
            )

    def _local_orphans(self, con: Any, cutoff: dt.datetime) -> list[str]:
        """The Parquet files under a local lake's ``main/`` that the catalog does not
        know, last modified before ``cutoff``.

        Not DuckLake's ``ducklake_delete_orphaned_files``: it reads every file under the
        data path, the SQLite catalog's own files among them (the default keeps them in
        the lake's root), and a file closed in this process drops every POSIX lock the
        process holds on it: SQLite's locks on its catalog. Another process (``rtclake
        query``, a second tool) then took the catalog for unused and reset its WAL index
        under this one: "disk I/O error", a bus error, a corrupted catalog. Here the
        folders are listed and the files' times read with ``stat``, which opens
        nothing."""
        known = {
            str(path)
            for (path,) in self._query(
                con, KNOWN_FILES_SQL.format(meta=f"__ducklake_metadata_{ALIAS}"),
                [self.catalog.data_path, self.catalog.data_path],
            )
        }  # fmt: skip
        limit = cutoff.timestamp()
        found: list[str] = []
        for folder, _dirs, files in os.walk(self.catalog.data_path + "main"):
            for name in files:
                if not name.endswith(".parquet"):
                    continue
                path = os.path.join(folder, name)
                try:
                    modified = os.stat(path, follow_symlinks=False).st_mtime
                except FileNotFoundError:  # cleaned up or renamed meanwhile
                    continue
                if modified < limit and path not in known:
                    found.append(path)
        return sorted(found)

    def _orphans_listed_by_ducklake(self, con: Any, cutoff: dt.datetime) -> list[str]:
        """DuckLake's list of orphans older than ``cutoff`` (object storage, where no
        lock lives). It lists the data path's files and then reads each one's time: a
        file that goes meanwhile (a replaced file cleaned up) fails the listing, which
        is tried again (three times)."""
        for attempt in range(3):
            try:
                rows = self._query(
                    con,
                    "SELECT path FROM ducklake_delete_orphaned_files(?, dry_run => true,"
                    " older_than => ?::TIMESTAMPTZ)",
                    [ALIAS, _timestamp(cutoff)],
                )
                return [str(path) for (path,) in rows]
            except duckdb.IOException as exc:
                if attempt == 2 or "no such file" not in str(exc).lower():
                    raise
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
        raise AssertionError("unreachable")


REPLACED_SQL = """
SELECT CASE WHEN NOT f.path_is_relative THEN f.path
            WHEN NOT t.path_is_relative THEN t.path || f.path
            WHEN NOT s.path_is_relative THEN s.path || t.path || f.path
            ELSE ? || s.path || t.path || f.path END
FROM {meta}.ducklake_data_file f
JOIN {meta}.ducklake_table t ON f.table_id = t.table_id
JOIN {meta}.ducklake_schema s ON t.schema_id = s.schema_id
WHERE f.end_snapshot IS NOT NULL
UNION ALL
SELECT CASE WHEN path_is_relative THEN ? || path ELSE path END
FROM {meta}.ducklake_files_scheduled_for_deletion
"""
"""The paths of the data files the current snapshot no longer holds and cleanup has not
deleted yet (the parameters: the data path, twice)."""

#: Every file the catalog knows, in any snapshot, or has scheduled for deletion: the
#: files a cleanup must not take for orphans (paths resolved against the data path, as
#: DuckLake resolves them; ``{meta}`` is the catalog's metadata database, the two
#: parameters the data path).
KNOWN_FILES_SQL = """
SELECT CASE WHEN NOT f.path_is_relative THEN f.path
            WHEN NOT t.path_is_relative THEN t.path || f.path
            WHEN NOT s.path_is_relative THEN s.path || t.path || f.path
            ELSE ? || s.path || t.path || f.path END
FROM (SELECT path, path_is_relative, table_id FROM {meta}.ducklake_data_file
      UNION ALL
      SELECT path, path_is_relative, table_id FROM {meta}.ducklake_delete_file) f
JOIN {meta}.ducklake_table t ON f.table_id = t.table_id
JOIN {meta}.ducklake_schema s ON t.schema_id = s.schema_id
UNION ALL
SELECT CASE WHEN path_is_relative THEN ? || path ELSE path END
FROM {meta}.ducklake_files_scheduled_for_deletion
"""


# -- helpers ------------------------------------------------------------------------------


def _partition_day(path: str) -> dt.date | None:
    """The date of a data file's partition folder (``.../date=YYYY-MM-DD/...``)."""
    marker = f"/{PARTITION}="
    at = path.rfind(marker)
    if at < 0:
        return None
    try:
        return dt.date.fromisoformat(path[at + len(marker) : at + len(marker) + 10])
    except ValueError:
        return None


def _busy(exc: duckdb.Error) -> bool:
    """A failure that waiting cures: SQLite's lock held by another connection's commit, or
    a commit conflict DuckLake gave up retrying."""
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "conflict" in text


def _timestamp(moment: dt.datetime) -> str:
    """A TIMESTAMPTZ literal (handed as text: DuckDB's Python client needs pytz for
    timezone-aware datetimes)."""
    return moment.astimezone(dt.UTC).isoformat()


def _expired_files(files: list[tuple[str, str | None]], cutoff: dt.date) -> int:
    """How many of ``files`` lie in partitions before ``cutoff`` (DuckLake names a
    partition's folder ``date=YYYY-MM-DD``); counted this way, not as all files before
    and after, because writers add files to the live partitions meanwhile."""
    count = 0
    for path, _ in files:
        _, found, rest = path.partition(f"/{PARTITION}=")
        try:
            day = dt.date.fromisoformat(rest[:10]) if found else None
        except ValueError:
            day = None
        if day is not None and day < cutoff:
            count += 1
    return count


def _dates(dates: list[dt.date]) -> str:
    if len(dates) <= 3:
        return ", ".join(d.isoformat() for d in dates)
    return f"{dates[0].isoformat()} .. {dates[-1].isoformat()}"


def _message(exc: BaseException) -> str:
    """The error as one line (DuckDB puts the cause of a failed commit on later lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' / '.join(lines)}"[:500]


def _is_data_file(path: str, catalog: Catalog) -> bool:
    """A data file of a table under the lake's data path: ``main/TABLE/date=D/NAME.parquet``
    (rtclake's writer names it after its batch; DuckLake's merges ``ducklake-UUID.parquet``,
    its delete files ``ducklake-UUID-delete.parquet``), or a file of a table without
    partitions (the ledger): the only orphans rtclake deletes."""
    if not (path.startswith(catalog.data_path) and path.endswith(".parquet")):
        return False
    parts = path[len(catalog.data_path) :].split("/")
    if parts[0] != "main" or any(p.startswith(".") for p in parts):
        return False
    partitioned = len(parts) == 4 and parts[2].startswith(f"{PARTITION}=")
    return partitioned or (len(parts) == 3 and parts[2].startswith("ducklake-"))


def _remove(storage: Storage, path: str) -> int:
    """Delete one file of the lake; 1 if it was there (0: gone already)."""
    try:
        if isinstance(storage, S3Storage):
            storage.fs.delete_file(path.removeprefix("s3://"))
        else:
            os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1


class Schedule:
    """Maintenance in ``rtclake run``: every node asks on a schedule, one does the work.

    The first ask comes ``first_delay`` seconds after the start, then one every
    ``min(interval, 60 s)``; each is :meth:`Maintenance.run_if_due`, which runs only when
    no node started a run within ``interval``, under the leader lock. Runs happen on a
    thread of their own (a merge can take long; the writer's thread is the delivery's)."""

    def __init__(self, maintenance: Maintenance, *, first_delay: float = 5.0) -> None:
        self.maintenance = maintenance
        self.first_delay = first_delay
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rtclake-maintenance")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="maintenance")

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        every = min(self.maintenance.config.interval, 60.0)
        await asyncio.sleep(min(self.first_delay, every))
        while True:
            try:
                await loop.run_in_executor(self._executor, self.maintenance.run_if_due)
            except Exception as exc:  # counted as failed by the run; the next ask retries
                log.error("maintenance: run failed", error=_message(exc))
            await asyncio.sleep(every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # a run under way finishes (its transaction commits or rolls back whole)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
