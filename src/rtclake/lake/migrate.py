"""``rtclake migrate``: a lake of the layout before the catalog
(``ROOT/TABLE/date=D/NODE-RUN-SEQ.parquet``, :mod:`rtclake.lake.layout`) moved into the
catalog, exactly once.

Each table's ``date=`` partitions are copied in date order, one transaction each: the
partition's rows, de-duplicated by the key the old query views hid repeats by, and a
ledger row (node, run ``migrate:TABLE``, seq = the date as ``YYYYMMDD``, file = the
partition's folder, file_offset = its number of files) that marks the partition done. A
migration that stops half-way (a crash, Ctrl-C, a full disk) left each partition either
wholly in the catalog with its ledger row, or not at all, so running it again copies what
is missing and nothing twice. Rows the lake already holds under the same key in the same
partition (a node that wrote the catalog before the migration ran) are left out as well,
which also makes a partition safe to copy a second time. On a SQLite catalog each copy
holds the catalog's write lock (:class:`~rtclake.lake.catalog.WriteLock`), so it can run
beside ``rtclake run`` writing the same lake: without it the writer's commits got the
copies refused.

DuckLake keeps its files under ``ROOT/main/``, which no old table's folder is, so both
layouts can share one root and the old files stay readable until the migration is done.
They are removed only with ``delete``, and only once every partition is committed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from rtclake import faults
from rtclake.config import Settings
from rtclake.errors import ConfigError
from rtclake.lake import layout
from rtclake.lake.catalog import ALIAS, LEDGER, PARTITION, Catalog, literal
from rtclake.lake.storage import LocalStorage, S3Options, S3Storage, Storage, storage_for
from rtclake.tables import Table

#: The folder of the root that DuckLake keeps its files in (its schema's name).
DUCKLAKE_FOLDER = "main"
#: The ledger's run of one table's migration (its seq: the partition's date, YYYYMMDD).
RUN_PREFIX = "migrate:"


class MigrationError(Exception):
    """A partition that could not be copied (unreadable files, a failing catalog or
    disk), named in the message; the partitions before it are committed."""


def run_name(table: str) -> str:
    return f"{RUN_PREFIX}{table}"


@dataclass(frozen=True)
class Partition:
    """One ``date=`` folder of a table in the old layout, with its data files."""

    table: str
    day: date
    folder: str
    files: tuple[str, ...]

    @property
    def seq(self) -> int:
        """The ledger's sequence of this partition: its date as a number, so the ledger's
        order is the dates' order."""
        return self.day.year * 10_000 + self.day.month * 100 + self.day.day


@dataclass(frozen=True)
class PartitionResult:
    """What became of one partition: copied (``migrated``) or found in the ledger."""

    table: str
    day: date
    files: int
    migrated: bool
    rows: int = 0  # rows stored in the catalog
    source_rows: int = 0  # rows of the old files, repeats included
    seconds: float = 0.0


@dataclass
class TableReport:
    name: str
    partitions_migrated: int = 0
    partitions_skipped: int = 0
    rows: int = 0
    source_rows: int = 0
    files: int = 0  # old files of the partitions migrated now
    seconds: float = 0.0

    @property
    def left_out(self) -> int:
        """Rows of the old files not stored: repeats, and rows the lake already held."""
        return self.source_rows - self.rows

    def add(self, result: PartitionResult) -> None:
        if result.migrated:
            self.partitions_migrated += 1
            self.rows += result.rows
            self.source_rows += result.source_rows
            self.files += result.files
            self.seconds += result.seconds
        else:
            self.partitions_skipped += 1


@dataclass
class MigrationReport:
    """The outcome of :func:`migrate`: per table, what was copied and what was already."""

    source: str
    tables: dict[str, TableReport] = field(default_factory=dict)
    #: Old files whose partition is in the catalog: removed (``delete``) or removable.
    files_deleted: int = 0
    files_removable: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def partitions_migrated(self) -> int:
        return sum(t.partitions_migrated for t in self.tables.values())

    @property
    def partitions_skipped(self) -> int:
        return sum(t.partitions_skipped for t in self.tables.values())

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def source_rows(self) -> int:
        return sum(t.source_rows for t in self.tables.values())

    @property
    def rows_per_second(self) -> float:
        copying = sum(t.seconds for t in self.tables.values())
        return self.source_rows / copying if copying > 0 else 0.0

    def next_step(self) -> str:
        """What is left to do with the old files, in one sentence."""
        if self.files_deleted:
            return f"removed {self.files_deleted:,} old files from {self.source}"
        if self.files_removable:
            return (
                f"the {self.files_removable:,} old files under {self.source} are all in the"
                f" catalog now and can be removed: rtclake migrate --from {self.source}"
                " --delete, with the same settings (it copies nothing twice)"
            )
        # (every partition found is removable once in the catalog: none was found)
        return (
            f"no files of the old layout (TABLE/date=YYYY-MM-DD/*.parquet) under {self.source}:"
            " nothing (left) to migrate"
        )


#: What a migration that ran out of memory says about it.
MEMORY_HINT = "DuckDB's memory for rtclake migrate is lake.maintenance.memory_limit"
#: DuckDB writes a table's Parquet row groups in memory, ~0.5 GiB a thread for the ~170
#: columns of rtc_stats, whatever the limit: a migration takes a thread per this much of
#: its limit (at least one, at most one a core).
MEMORY_PER_THREAD = 512 * 1024 * 1024


def threads_within(memory_limit: int) -> int:
    """DuckDB's threads for a migration within ``memory_limit`` bytes."""
    return max(1, min(os.cpu_count() or 1, memory_limit // MEMORY_PER_THREAD))


ProgressCallback = Callable[[PartitionResult], None]


def migrate(
    source_root: Storage | str | os.PathLike[str],
    catalog: Catalog,
    *,
    node: str,
    delete: bool = False,
    progress: ProgressCallback | None = None,
    threads: int | None = None,
    memory_limit: int | None = None,
    temp_directory: Path | None = None,
) -> MigrationReport:
    """Copy every partition of the old layout under ``source_root`` that the ledger does
    not hold into ``catalog`` (see the module's doc); with ``delete``, then remove the old
    files of every partition the catalog holds. ``progress`` is called after each
    partition. A partition that cannot be copied raises a :class:`MigrationError` (an S3
    source the lake's connection cannot read, a ``ConfigError``): the partitions committed
    before stay committed, and the next run goes on from there.

    ``memory_limit`` (bytes) keeps DuckDB's memory within it: without one it would take up
    to 80 % of the host's before spilling, and a day of a busy table is large (its repeats
    are found by grouping it). What outgrows the limit spills into a folder of the run's
    own under ``temp_directory``, removed after it."""
    source = (
        source_root if isinstance(source_root, Storage) else storage_for(os.fspath(source_root))
    )
    started = time.perf_counter()
    report = MigrationReport(source=source.root)
    removable: list[Partition] = []
    spill: Path | None = None
    if temp_directory is not None:
        temp_directory.mkdir(parents=True, exist_ok=True)
        spill = Path(tempfile.mkdtemp(prefix="migrate-", dir=temp_directory))
    try:
        con = catalog.connect(threads=threads)
    except BaseException:
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
        raise
    try:
        if memory_limit is not None:
            con.execute(f"SET memory_limit = '{int(memory_limit)}B'")
        if spill is not None:
            con.execute(f"SET temp_directory = {literal(str(spill))}")
        _read_setup(con, source, catalog.storage)
        with catalog.writing():  # beside a running writer (SQLite: WriteLock)
            catalog.ensure_tables(con)
        lake_columns = catalog.columns(con)
        for table in catalog.tables:
            table_report = report.tables[table.name] = TableReport(table.name)
            partitions, bad = old_partitions(source, table.name)
            report.warnings += bad
            for part in partitions:
                done = _committed_files(con, node, part)
                if done is not None and done >= len(part.files):
                    result = PartitionResult(part.table, part.day, len(part.files), False)
                else:
                    # a partition that grew since it was copied is copied again: the
                    # anti-join leaves out the rows stored the first time
                    with catalog.writing():
                        result = _copy(con, table, part, lake_columns[table.name], node)
                removable.append(part)
                table_report.add(result)
                if progress is not None:
                    progress(result)
        report.warnings += _unknown_tables(source, catalog.tables.names())
        if delete:
            for part in removable:
                report.files_deleted += _remove(source, part)
        else:
            report.files_removable = sum(len(p.files) for p in removable)
    finally:
        con.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def old_partitions(source: Storage, table: str) -> tuple[list[Partition], list[str]]:
    """The table's ``date=`` partitions in the old layout, oldest first, and a warning
    for each folder whose name is not a date (left alone)."""
    folders: dict[str, list[str]] = {}
    for path in source.files(table):
        folder, _, _name = path.rpartition("/")
        folders.setdefault(folder, []).append(path)
    partitions: list[Partition] = []
    warnings: list[str] = []
    for folder, files in folders.items():
        text = folder.rpartition("/")[2].removeprefix(f"{layout.PARTITION}=")
        try:
            if len(text) != 10:
                raise ValueError(text)
            day = date.fromisoformat(text)
        except ValueError:
            warnings.append(f"{folder}: not a date=YYYY-MM-DD folder, not migrated")
            continue
        partitions.append(Partition(table, day, folder, tuple(sorted(files))))
    # one date in two folders (an s3 prefix listed deeper) stays two partitions of one seq
    partitions.sort(key=lambda p: (p.day, p.folder))
    return _merge_days(partitions), warnings


def _unknown_tables(source: Storage, tables: list[str]) -> list[str]:
    """A warning for each folder of a local lake that looks like a table of the old layout
    but is no table of this installation (an integration not installed): left alone."""
    if not isinstance(source, LocalStorage) or not source.exists():
        return []
    found = []
    with os.scandir(source.root) as entries:
        for entry in entries:
            if (
                entry.name in tables
                or entry.name == DUCKLAKE_FOLDER
                or not entry.is_dir(follow_symlinks=False)
            ):
                continue
            with os.scandir(entry.path) as inner:
                if any(layout.is_partition(e.name) for e in inner):
                    found.append(f"{entry.path}: no table {entry.name} here, not migrated")
    return sorted(found)


def _merge_days(partitions: list[Partition]) -> list[Partition]:
    """One partition per date: the ledger counts a date once."""
    merged: list[Partition] = []
    for part in partitions:
        if merged and merged[-1].day == part.day:
            last = merged[-1]
            merged[-1] = Partition(last.table, last.day, last.folder, last.files + part.files)
        else:
            merged.append(part)
    return merged


def copy_sql(table: Table, part: Partition, columns: Iterable[str]) -> str:
    """The ``INSERT`` of one partition: its old files' rows that the lake table has
    columns for, one per key (the first received), none whose key the lake already holds
    in that partition.

    The rows to keep are chosen by their key columns alone, then taken from the files by
    their place (file, row): a window over every column of rtc_stats took a partition of
    250,000 rows 2.0 s to copy, this 0.9 s (a copy without de-duplication: 0.8 s).
    """
    day = f"DATE '{part.day.isoformat()}'"
    name = f"{ALIAS}.{_ident(table.name)}"
    key = table.record_key
    source = (
        f"read_parquet({_sql_list(part.files)}, union_by_name = true,"
        " hive_partitioning = false, filename = true, file_row_number = true)"
    )
    matches = " AND ".join(f"l.{_ident(c)} IS NOT DISTINCT FROM s.{_ident(c)}" for c in key)
    keep = (
        f"SELECT s.filename, s.file_row_number FROM {source} AS s WHERE NOT EXISTS"
        f" (SELECT 1 FROM {name} AS l WHERE l.{_ident(PARTITION)} = {day} AND {matches})"
    )
    if not table.unique_rows:
        by = ", ".join(f"s.{_ident(c)}" for c in key)
        keep += (
            f" QUALIFY row_number() OVER (PARTITION BY {by}"
            " ORDER BY s.received_at, s.filename, s.file_row_number) = 1"
        )
    # The date is the folder's, as the old views' Hive partitioning gave it; taken from
    # its name here, not from the path, which may hold other key=value folders.
    select = ", ".join(f"s.{_ident(c)}" for c in columns if c != PARTITION)
    return (
        f"INSERT INTO {name} BY NAME SELECT {select}, {day} AS {_ident(PARTITION)}"
        f" FROM {source} AS s SEMI JOIN ({keep}) AS k"
        " ON s.filename = k.filename AND s.file_row_number = k.file_row_number"
    )


def _copy(con: Any, table: Table, part: Partition, lake: set[str], node: str) -> PartitionResult:
    """One partition into the catalog, with its ledger row, in one transaction; what
    stops it is a :class:`MigrationError` naming the partition."""
    started = time.perf_counter()
    try:
        reader = (
            f"read_parquet({_sql_list(part.files)}, union_by_name = true,"
            " hive_partitioning = false)"
        )
        described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        present = {row[0] for row in described}
        missing = [c for c in table.record_key if c not in present]
        if missing:
            raise ValueError(
                f"the files lack {', '.join(missing)}, which identify a row of {table.name}"
            )
        columns = [row[0] for row in described if row[0] in lake]
        source_rows = int(con.execute(f"SELECT count(*) FROM {reader}").fetchone()[0])
        con.execute("BEGIN")
        try:
            row = con.execute(copy_sql(table, part, columns)).fetchone()
            rows = int(row[0]) if row else 0
            con.execute(
                f"INSERT INTO {ALIAS}.{LEDGER} VALUES (?, ?, ?, ?, ?, ?, now())",
                [node, run_name(table.name), part.seq, part.folder, len(part.files), rows],
            )
            faults.check("migrate.before_commit")
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
    except (duckdb.Error, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, duckdb.OutOfMemoryException):
            first += f" ({MEMORY_HINT})"
        raise MigrationError(f"{part.folder}: {first}") from exc
    return PartitionResult(
        table.name,
        part.day,
        len(part.files),
        True,
        rows=rows,
        source_rows=source_rows,
        seconds=time.perf_counter() - started,
    )


def _committed_files(con: Any, node: str, part: Partition) -> int | None:
    """How many files the partition had when the ledger last committed it (None: never).

    The partition's own ledger row decides, not the run's highest seq: a partition whose
    folder appeared after a later date was copied is copied too."""
    row = con.execute(
        f"SELECT max(file_offset) FROM {ALIAS}.{LEDGER} WHERE node = ? AND run = ? AND seq = ?",
        [node, run_name(part.table), part.seq],
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _read_setup(con: Any, source: Storage, lake: Storage) -> None:
    """Let the catalog's connection read the old files (an S3 source needs httpfs and a
    secret; a lake on S3 has set up its own, which must then be the source's too)."""
    con.execute("SET parquet_metadata_cache = true")  # every footer is read twice
    if not source.remote:
        return
    if lake.remote:
        if getattr(source, "options", None) != getattr(lake, "options", None):
            raise ConfigError(
                f"{source.root}: an S3 source is read with the lake's S3 settings; give it"
                " the same endpoint and credentials, or copy it to a folder first"
            )
        return
    con.execute("LOAD httpfs")
    source.duckdb_setup(con)


def _remove(source: Storage, part: Partition) -> int:
    """Remove a committed partition's old files, then its folder and the table's folder
    once empty (a local lake); the number of files removed."""
    removed = 0
    for path in part.files:
        if isinstance(source, LocalStorage):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed += 1
        elif isinstance(source, S3Storage):
            with contextlib.suppress(FileNotFoundError):
                source.fs.delete_file(path.removeprefix("s3://"))
                removed += 1
        else:
            raise TypeError(f"cannot remove files of a {type(source).__name__}")
    if isinstance(source, LocalStorage):
        for folder in (part.folder, os.path.dirname(part.folder)):
            with contextlib.suppress(OSError):  # not empty: a temporary file, another date
                os.rmdir(folder)
    return removed


def source_storage(settings: Settings, root: str | Path | None) -> Storage:
    """The old lake to migrate: ``root`` (the lake's S3 settings apply to an ``s3://``
    one), else the configured lake root."""
    lake = settings.lake
    secret = lake.secret_access_key
    options = S3Options(
        endpoint_url=lake.endpoint_url,
        access_key_id=lake.access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None,
        region=lake.region,
    )
    return storage_for(settings.lake_root if root is None else str(root), options)


def print_report(report: MigrationReport, *, console: Any = None) -> None:
    """The report as ``rtclake migrate`` prints it: a row per table that had old files,
    then the totals and what is left to do."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = console or Console()
    shown = RichTable(title=f"migrated from {report.source}", title_justify="left")
    for name in ("table", "partitions migrated", "skipped", "rows stored", "left out"):
        shown.add_column(name, justify="left" if name == "table" else "right")
    for t in report.tables.values():
        if t.partitions_migrated or t.partitions_skipped:
            shown.add_row(
                t.name,
                f"{t.partitions_migrated:,}",
                f"{t.partitions_skipped:,}",
                f"{t.rows:,}",
                f"{t.left_out:,}",
            )
    shown.add_section()
    shown.add_row(
        "total",
        f"{report.partitions_migrated:,}",
        f"{report.partitions_skipped:,}",
        f"{report.rows:,}",
        f"{report.source_rows - report.rows:,}",
        style="bold",
    )
    console.print(shown)
    console.print(
        f"{report.rows:,} rows stored in {report.seconds:.1f} s"
        + (f" ({report.rows_per_second:,.0f} rows/s read)" if report.partitions_migrated else "")
        + "; 'left out' counts repeated records and records the catalog already held",
        highlight=False,
    )
    for warning in report.warnings:
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    console.print(report.next_step(), highlight=False)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_list(items: Iterable[str]) -> str:
    quoted = ("'" + p.replace("'", "''") + "'" for p in items)
    return f"[{', '.join(quoted)}]::VARCHAR[]"
