"""Import: Sora log files (plain or gzip) into the lake, incrementally.

Files are read in blocks of whole lines; each block is validated line by line (a bad line
is logged with its file and line number, counted, and skipped), converted like a spool
segment and written to the sinks directly: the file itself is the durable copy, so the
spool is not needed. A block's batch name is derived from the file and the block's byte
offset, so importing the same block again (after a crash, or twice) overwrites its own
files. What was imported is remembered per file (identity, byte offset, line number) in
``DATA_DIR/import-state.json``, written after the sinks confirmed; a file that grew is
continued where it stopped, a file that was replaced (another identity) or truncated is
read again from the start.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import structlog

from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import Table, TableRegistry
from rtclake.writer import Converter

log = structlog.get_logger(__name__)

BLOCK_BYTES = 32 * 1024 * 1024
SOURCE = "import"


class FileState(msgspec.Struct):
    """How far one file was imported."""

    identity: str
    offset: int = 0
    line: int = 0


class _SavedState(msgspec.Struct):
    files: dict[str, FileState] = msgspec.field(default_factory=dict)
    extra: dict[str, object] = msgspec.field(default_factory=dict)


class ImportState:
    """The import checkpoint: one :class:`FileState` per file, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, FileState] = {}
        self.extra: dict[str, object] = {}  # other importers' state (S3 listings)
        if path.exists():
            saved = msgspec.json.decode(path.read_bytes(), type=_SavedState)
            self.files, self.extra = saved.files, saved.extra

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgspec.json.encode(_SavedState(self.files, self.extra)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


@dataclass
class ImportStats:
    files: int = 0
    skipped_files: int = 0
    rows: int = 0
    bad_lines: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    on_progress: Callable[[int, int], None] | None = field(default=None, repr=False)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def file_identity(path: Path) -> str:
    """Device and inode, plus the first bytes: a replaced file gets a new identity."""
    st = path.stat()
    with open(path, "rb") as fh:
        head = hashlib.sha1(fh.read(4096), usedforsecurity=False).hexdigest()[:12]
    return f"{st.st_dev}:{st.st_ino}:{head}"


def expand(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and the files under folders named, in name order."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _chunks(fh: IO[bytes], gz: bool, size: int) -> Iterator[bytes]:
    """The file's (uncompressed) bytes in pieces of at most about ``size``."""
    if not gz:
        while data := fh.read(size):
            yield data
        return
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while raw := fh.read(1 << 20):
        while raw:
            yield inflate.decompress(raw, size)
            raw = inflate.unconsumed_tail
            if inflate.eof and inflate.unused_data:  # concatenated gzip members
                raw = inflate.unused_data
                inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)


def read_blocks(fh: IO[bytes], gz: bool, block: int) -> Iterator[tuple[int, bytes]]:
    """(offset in the uncompressed stream, bytes) blocks of whole lines of about ``block``
    bytes; the last block may end without a newline."""
    parts: list[bytes] = []
    size = 0
    offset = 0
    for data in _chunks(fh, gz, block):
        parts.append(data)
        size += len(data)
        if size < block:
            continue
        joined = b"".join(parts)
        cut = joined.rfind(b"\n") + 1
        if cut:
            yield offset, joined[:cut]
            offset += cut
        parts, size = [joined[cut:]], len(joined) - cut
    rest = b"".join(parts)
    if rest.strip():
        yield offset, rest


class Importer:
    """Imports files into the sinks, one block at a time, remembering where it stopped."""

    def __init__(
        self,
        tables: TableRegistry,
        sinks: Sequence[Sink],
        state_path: Path,
        *,
        node: str,
        table_for: Callable[[str], str | None],
        metrics: Metrics | None = None,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.tables = tables
        self.sinks = list(sinks)
        self.state = ImportState(state_path)
        self.node = node
        self.table_for = table_for
        self.metrics = metrics or Metrics()
        self.block_bytes = block_bytes
        # One DuckDB thread: the other core validates the next block meanwhile.
        self._converter = Converter(tables, threads=1)

    def close(self) -> None:
        self._converter.close()

    def import_paths(self, paths: Iterable[Path], stats: ImportStats | None = None) -> ImportStats:
        stats = stats or ImportStats()
        started = time.perf_counter()
        for sink in self.sinks:
            sink.start()
        for path in expand(paths):
            name = path.name.removesuffix(".gz")
            table_name = self.table_for(name)
            if table_name is None:
                log.info("import: not a known log file; skipped", file=str(path))
                stats.skipped_files += 1
                continue
            self.import_file(path, self.tables[table_name], stats)
            stats.files += 1
        stats.seconds = time.perf_counter() - started
        return stats

    def import_file(self, path: Path, table: Table, stats: ImportStats) -> None:
        """Import what is new in one local file."""
        key = str(path.absolute())
        identity = file_identity(path)
        done = self.state.files.get(key)
        gz = path.suffix == ".gz"
        if (
            done is None
            or done.identity != identity
            or (
                not gz and path.stat().st_size < done.offset  # truncated: read it again
            )
        ):
            done = FileState(identity)
        with open(path, "rb") as fh:
            if not gz:
                fh.seek(done.offset)
            self.import_stream(key, str(path), fh, gz, table, done, stats)

    def import_stream(
        self,
        key: str,
        label: str,
        fh: IO[bytes],
        gz: bool,
        table: Table,
        done: FileState,
        stats: ImportStats,
    ) -> None:
        """Import one stream of JSON Lines; ``done`` says what of it was imported before
        (a plain stream is already positioned there; a gzip stream is read from the start
        and the imported part skipped). ``key`` names it in the import state."""
        digest = hashlib.sha1(f"{key}:{done.identity}".encode(), usedforsecurity=False)
        run = "i" + digest.hexdigest()[:10]
        stream = Path(label).name.removesuffix(".gz").removesuffix(".jsonl")
        # Read and validate on this thread; convert and write on another (DuckDB and the
        # Parquet writer release the GIL), so both cores work.
        work: queue.Queue[tuple[int, int, Entry | None] | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_blocks, args=(work, run, key, done, stats, failure), daemon=True
        )
        writer.start()
        try:
            base = 0 if gz else done.offset
            line = done.line if not gz else 0
            for offset, block in read_blocks(fh, gz, self.block_bytes):
                start = base + offset
                stats.bytes_read += len(block)
                if gz and start + len(block) <= done.offset:
                    line += block.count(b"\n")
                    continue  # imported before (a gzip stream cannot seek)
                entry, good, lines = self._block_entry(label, table, stream, block, line)
                stats.bad_lines += lines - good
                line += lines
                if failure:
                    break
                work.put((start + len(block), line, entry))
        finally:
            work.put(None)
            writer.join()
        if failure:
            raise failure[0]

    def _block_entry(
        self, label: str, table: Table, stream: str, block: bytes, first_line: int
    ) -> tuple[Entry | None, int, int]:
        lines = block.split(b"\n")
        if lines and not lines[-1].strip():
            lines.pop()
        check = table.checker()
        kept: list[bytes] = []
        extra: list[int] = []
        for number, text in enumerate(lines, first_line + 1):
            if not text.strip():
                continue
            try:
                if check(text):
                    extra.append(len(kept))
            except (msgspec.MsgspecError, RecursionError) as exc:
                self.metrics.rejected.labels(SOURCE, "invalid_record").inc()
                log.warning(
                    "import: bad line skipped", file=label, line=number, error=str(exc)[:200]
                )
                continue
            kept.append(text)
        if not kept:
            return None, 0, len(lines)
        header = EntryHeader(
            table=table.name,
            source=SOURCE,
            stream=stream,
            kind=table.kind,
            received_us=time.time_ns() // 1000,
            records=len(kept),
            extra=extra if table.sparse_extra else None,
        )
        return Entry(header, b"\n".join(kept), 0), len(kept), len(lines)

    def _write_blocks(
        self,
        work: queue.Queue[tuple[int, int, Entry | None] | None],
        run: str,
        key: str,
        state: FileState,
        stats: ImportStats,
        failure: list[BaseException],
    ) -> None:
        while (item := work.get()) is not None:
            if failure:
                continue
            end, line, entry = item
            try:
                if entry is not None:
                    tables = self._converter.convert(run, end, [entry])
                    batch = Batch(self.node, run, end, tables)
                    for sink in self.sinks:
                        sink.write(batch)
                    stats.rows += batch.num_rows
                    for name, table in tables.items():
                        self.metrics.stored.labels("import", name).inc(table.num_rows)
                state.offset, state.line = end, line
                self.state.files[key] = state
                self.state.save()
                if stats.on_progress is not None:
                    stats.on_progress(stats.rows, stats.bytes_read)
            except BaseException as exc:  # reported by import_file on the caller's thread
                failure.append(exc)
