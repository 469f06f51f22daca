"""Import: Sora log files (plain or gzip) into the lake, incrementally.

Files are read in blocks of whole lines; each block is parsed by the writer's
:class:`~rtclake.writer.Converter` (a line that is not a JSON object is logged with its
file and line number, counted, and skipped; a value of the wrong type for its column is
logged and kept in ``extra``) and written to the sinks directly: the file itself is the
durable copy, so the spool is not needed. A block's batch name is derived from the file
and the block's byte offset, so importing the same block again (after a crash, or twice)
overwrites its own files. What was imported is remembered per file (identity, byte
offset, line number) in ``DATA_DIR/import-state.json``, written after the sinks
confirmed; a file that grew is continued where it stopped, a file that was replaced
(another identity) or truncated is read again from the start.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import pyarrow as pa
import structlog
from isal import isal_zlib  # zlib's format, inflated 2-3x faster (Intel ISA-L)

from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import Table, TableRegistry
from rtclake.writer import Converter, entries_to_header

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
    inflate = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)
    while raw := fh.read(1 << 20):
        while raw:
            yield inflate.decompress(raw, size)
            raw = inflate.unconsumed_tail
            if inflate.eof and inflate.unused_data:  # concatenated gzip members
                raw = inflate.unused_data
                inflate = isal_zlib.decompressobj(16 + isal_zlib.MAX_WBITS)


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


@dataclass
class _Block:
    """A block on its way from the reader to the writer thread."""

    end: int  # offset after the block (in the uncompressed stream)
    first_line: int  # lines of the stream before it
    last_line: int  # lines of the stream up to its end
    parsed: Future[_Parsed]


@dataclass
class _Parsed:
    """A block converted (on the pool)."""

    rows: pa.Table | None
    bad: list[tuple[int, str]]
    notes: list[tuple[int, str]]


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
        # Two blocks convert at once, each on one DuckDB thread: one per core.
        self._converter = Converter(tables, threads=1)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="import-convert")

    def close(self) -> None:
        self._pool.shutdown()
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
        # This thread reads (and inflates); the pool converts (the C++ parser and DuckDB
        # work without the GIL, so both cores work); the writer thread writes the blocks
        # to the sinks in file order and advances the checkpoint.
        work: queue.Queue[_Block | None] = queue.Queue(maxsize=2)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_blocks, args=(work, table, run, key, label, done, stats, failure),
            daemon=True,
        )  # fmt: skip
        writer.start()
        try:
            base = 0 if gz else done.offset
            line = done.line if not gz else 0
            for offset, block in read_blocks(fh, gz, self.block_bytes):
                start = base + offset
                stats.bytes_read += len(block)
                lines = block.count(b"\n") + (not block.endswith(b"\n"))
                if gz and start + len(block) <= done.offset:
                    line += lines
                    continue  # imported before (a gzip stream cannot seek)
                if failure:
                    break
                end = start + len(block)
                parsed = self._pool.submit(self._parse, table, stream, run, end, block, lines)
                work.put(_Block(end, line, line + lines, parsed))
                line += lines
        finally:
            work.put(None)
            writer.join()
        if failure:
            raise failure[0]

    def _parse(
        self, table: Table, stream: str, run: str, end: int, block: bytes, lines: int
    ) -> _Parsed:
        header = EntryHeader(
            table=table.name,
            source=SOURCE,
            stream=stream,
            kind=table.kind,
            received_us=time.time_ns() // 1000,
            records=lines,
        )
        text = block[:-1] if block.endswith(b"\n") else block
        parsed = self._converter.parse(
            table, text, entries_to_header(run, end, [Entry(header, b"", 0)])
        )
        rows = self._converter.finish(parsed) if parsed.rows else None
        return _Parsed(rows, parsed.bad, parsed.notes)

    def _write_blocks(
        self,
        work: queue.Queue[_Block | None],
        table: Table,
        run: str,
        key: str,
        label: str,
        state: FileState,
        stats: ImportStats,
        failure: list[BaseException],
    ) -> None:
        while (item := work.get()) is not None:
            if failure:
                continue
            try:
                parsed = item.parsed.result()
                self._report(label, item.first_line, parsed)
                stats.bad_lines += len(parsed.bad)
                if parsed.rows is not None:
                    batch = Batch(self.node, run, item.end, {table.name: parsed.rows})
                    for sink in self.sinks:
                        sink.write(batch)
                    stats.rows += batch.num_rows
                    self.metrics.stored.labels("import", table.name).inc(batch.num_rows)
                    del batch
                del parsed
                state.offset, state.line = item.end, item.last_line
                self.state.files[key] = state
                self.state.save()
                if stats.on_progress is not None:
                    stats.on_progress(stats.rows, stats.bytes_read)
            except BaseException as exc:  # reported by import_file on the caller's thread
                failure.append(exc)

    def _report(self, label: str, first_line: int, parsed: _Parsed) -> None:
        """Log each bad line (skipped) and each value kept in extra, by file and line."""
        for index, error in parsed.bad:
            self.metrics.rejected.labels(SOURCE, "invalid_record").inc()
            log.warning(
                "import: bad line skipped", file=label, line=first_line + index + 1,
                error=error[:200],
            )  # fmt: skip
        for index, why in parsed.notes:
            log.warning(
                "import: value of the wrong type for its column kept in extra",
                file=label, line=first_line + index + 1, error=why[:200],
            )  # fmt: skip
