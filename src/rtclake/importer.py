"""Import: Sora log files (plain or gzip) into the lake, incrementally.

A log's files are read oldest first (:func:`~rtclake.logfiles.oldest_first`): what is
derived as they are stored (rates from consecutive samples, reports) needs its lines in
order. Files are read in blocks of whole lines; each block is parsed by the writer's
:class:`~rtclake.convert.Converter` (a line that is not a JSON object is logged with its
file and line number, counted, and skipped; a value of the wrong type for its column is
logged and kept in ``extra``) and written to the sinks directly: the file itself is the
durable copy, so the spool is not needed. Blocks go to the sinks in groups (one commit of
the lake for several blocks); a group's batch name is derived from the file and the byte
offset after its last block, so importing the same group again (after a crash, or twice)
finds it in the lake's ledger (a Hive-layout lake: overwrites its own files). What was
imported is remembered per file and table (identity, byte offset, line number) in
``DATA_DIR/import-state.json``, written after the sinks confirmed; a file that grew is
continued where it stopped, a file that was replaced (another identity) or truncated is
read again from the start.

A spool segment (``RUN-SEQ.wal``: entries framed as :mod:`rtclake.spool` writes them) is
recognised by its first bytes, whatever its name says of a table: one the writer set
aside in ``spool/quarantine/`` is imported with :meth:`Importer.import_segment`, converted
as the writer converts it.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import msgspec
import pyarrow as pa
import structlog
from isal import isal_zlib
from isal.isal_zlib import _GzipReader  # gzip inflated 2-3x faster than zlib (Intel ISA-L)

from rtclake import _jsoncols
from rtclake.convert import Converter
from rtclake.delivery import Delivery
from rtclake.derive import Derivations, Pending, concat
from rtclake.durable import write_atomic
from rtclake.intake import make_entry
from rtclake.logfiles import oldest_first, unrotated
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch
from rtclake.spool import EntryHeader, is_segment, read_entries, segment_name
from rtclake.tables import Table, TableRegistry

log = structlog.get_logger(__name__)

BLOCK_BYTES = 32 * 1024 * 1024
# Column memory the parser keeps for the next blocks while an importer lives: the blocks
# in flight (read, parsed, queued, written) need ~300 MB at 32 MiB per block; kept, it is
# not faulted in again for every block. The writer's default is smaller.
POOL_BYTES = 512 * 1024 * 1024
SOURCE = "import"
# Blocks are stored in groups of at least this many rows (the last one smaller): one
# commit of the lake for several blocks, whose fixed costs (reading the catalog, adding a
# file per table, the commit) took more time than the blocks' own data at one block
# (~30,000 Sora lines) a commit.
GROUP_ROWS = 120_000
# Blocks parsed or being parsed, waiting for the writer thread.
QUEUED_BLOCKS = 2


#: What inflating a gzip stream that is cut short or damaged raises (ISA-L's, zlib's and
#: gzip's own errors).
GZIP_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    gzip.BadGzipFile,
    cast("type[BaseException]", isal_zlib.error),  # a class; isal's stubs say an instance
    zlib.error,
)


class UnreadableFile(Exception):
    """A file or object that cannot be read as what its name says (a gzip stream cut short
    or damaged); its whole lines before the damage were imported."""


class FileState(msgspec.Struct):
    """How far one file was imported."""

    identity: str
    offset: int = 0
    line: int = 0
    table: str | None = None  # the table it went to (None: a state saved before it was kept)


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
        write_atomic(self.path, msgspec.json.encode(_SavedState(self.files, self.extra)))


@dataclass
class ImportStats:
    files: int = 0
    skipped_files: int = 0
    rows: int = 0
    bad_lines: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    unreadable: list[str] = field(default_factory=list)  # why each unreadable file was left
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


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files named, and the files under folders named, each log's files oldest first
    (:func:`~rtclake.logfiles.oldest_first`: ``rtc_stats.jsonl.2.gz``, ``.1``, then
    ``rtc_stats.jsonl``), as the derivations need them."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            found.extend(p for p in path.rglob("*") if p.is_file())
        else:
            found.append(path)
    return oldest_first(found)


def _inflated(fh: IO[bytes]) -> Any:
    """The inflated bytes of a gzip stream (several members allowed), with ``readinto``
    into the caller's buffer; ISA-L does the work without holding the GIL."""
    raw: Any = fh if hasattr(fh, "readinto") else _ReadInto(fh)
    return _GzipReader(raw, 1 << 20)


class _ReadInto(io.RawIOBase):
    """``readinto`` for a stream that only has ``read``."""

    def __init__(self, fh: IO[bytes]) -> None:
        super().__init__()
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, view: Any) -> int:
        data = self._fh.read(len(view))
        view[: len(data)] = data
        return len(data)


def _salvaged(
    fh: IO[bytes], reopen: Callable[[], IO[bytes]] | None, skip: int, limit: int
) -> bytes:
    """The inflated bytes of a damaged gzip stream from ``skip`` on, up to the damage (at
    most ``limit`` of them), read anew from its start with zlib, which gives what it
    inflated before an error or the end of the input; empty when the stream cannot be
    read again."""
    try:
        if reopen is not None:
            again = reopen()
        elif fh.seekable():
            fh.seek(0)
            again = fh
        else:
            return b""
    except Exception:  # (a second fetch failing: the error of the first stands)
        return b""
    inflate = zlib.decompressobj(31)
    done = 0
    kept: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = again.read(1 << 20)
            if not chunk:
                break
            while chunk and size < limit:
                out = inflate.decompress(chunk)
                if done + len(out) > skip:
                    piece = out[max(0, skip - done) :]
                    kept.append(piece)
                    size += len(piece)
                done += len(out)
                chunk = b""
                if inflate.eof:  # the next member, if any
                    chunk = inflate.unused_data
                    inflate = zlib.decompressobj(31)
    except zlib.error:
        pass  # the damage: what came before it is kept
    except Exception:
        return b""
    return b"".join(kept)[:limit]


class BlockReader:
    """Reads a stream as blocks of whole lines, into a few buffers used again and again.

    A fresh buffer costs a page fault per 4 KiB; at a gigabyte of JSON per import that
    was a good part of the time. Each block's buffer goes back with :meth:`release` once
    it is parsed; :meth:`blocks` waits for one when all are out.
    """

    def __init__(self, block: int, buffers: int = 4) -> None:
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._block = block
        self._unmade = buffers  # made when first needed: a small import touches one
        self._lock = threading.Lock()

    def release(self, buf: bytearray) -> None:
        self._free.put(buf)

    def _take(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._unmade > 0
                self._unmade -= make
            return bytearray(self._block) if make else self._free.get()

    def blocks(
        self, fh: IO[bytes], gz: bool, reopen: Callable[[], IO[bytes]] | None = None
    ) -> Iterator[tuple[int, bytearray, int]]:
        """(offset in the uncompressed stream, buffer, length) per block: the buffer's
        first ``length`` bytes are whole lines (the last block may end without a newline).
        The caller releases each buffer.

        A gzip stream cut short or damaged raises its error after the block of its whole
        lines before the damage. ISA-L's reader gives nothing of the read that meets the
        damage (a small file: nothing at all), so those bytes are inflated again, with
        zlib, from the stream read anew: ``fh`` sought back to its start, or ``reopen``'s
        stream (an S3 object fetched again)."""
        source: Any = _inflated(fh) if gz else fh
        carry = b""  # the start of a line cut by the end of the previous block
        offset = 0
        while True:
            buf = self._take()
            if len(buf) <= len(carry):  # room for more than the carried line
                buf.extend(bytes(2 * len(carry) - len(buf)))
            buf[: len(carry)] = carry
            n = len(carry)
            eof = False
            damage: BaseException | None = None
            with memoryview(buf) as view:
                while n < len(buf):
                    try:
                        got = source.readinto(view[n:])
                    except GZIP_ERRORS as exc:
                        damage = exc
                        break
                    if not got:
                        eof = True
                        break
                    n += got
            if damage is not None:  # the whole lines before it, then the error
                rest = _salvaged(fh, reopen, offset + n, limit=len(buf) - n)
                if rest:
                    buf[n : n + len(rest)] = rest
                    n += len(rest)
                cut = buf.rfind(b"\n", 0, n) + 1
                if cut:
                    yield offset, buf, cut
                else:
                    self.release(buf)
                raise damage
            cut = buf.rfind(b"\n", 0, n) + 1
            if eof:
                if buf[:n].strip():
                    yield offset, buf, n
                else:
                    self.release(buf)
                return
            if cut == 0:  # one line longer than the buffer: carried into a bigger one
                carry = bytes(buf[:n])
                self.release(buf)
                continue
            carry = bytes(buf[cut:n])
            yield offset, buf, cut
            offset += cut


class Importer:
    """Imports files into the sinks, one block at a time, remembering where it stopped."""

    def __init__(
        self,
        tables: TableRegistry,
        delivery: Delivery,
        state_path: Path,
        *,
        node: str,
        table_for: Callable[[str], str | None],
        metrics: Metrics | None = None,
        block_bytes: int = BLOCK_BYTES,
        group_rows: int = GROUP_ROWS,
    ) -> None:
        self.tables = tables
        self.delivery = delivery
        self.state = ImportState(state_path)
        self.node = node
        self.table_for = table_for
        self.metrics = metrics or Metrics()
        self.block_bytes = block_bytes
        self.group_rows = group_rows
        # Two blocks convert at once (one per core); DuckDB, one thread per block, only
        # hashes record ids, when a sink needs them.
        self._converter = Converter(tables, threads=1, record_ids=delivery.needs_record_id)
        # derived tables (rates from counters): state in memory, for this import's run
        self.derivations = Derivations(tables.derivations)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="import-convert")
        self._reader = BlockReader(block_bytes)
        self._pool_before = _jsoncols.set_pool_limit(POOL_BYTES)

    def close(self) -> None:
        self._pool.shutdown()
        self._converter.close()
        _jsoncols.set_pool_limit(self._pool_before)
        _jsoncols.release_pool()

    def import_paths(self, paths: Iterable[Path], stats: ImportStats | None = None) -> ImportStats:
        stats = stats or ImportStats()
        started = time.perf_counter()
        self.delivery.start_soon()
        for path in expand(paths):
            if path.suffix == ".acks" and path.with_suffix(".wal").exists():
                continue  # the sinks that hold a segment: read with it
            if is_segment(path):
                self.import_segment(path, stats)
                stats.files += 1
                continue
            name = path.name.removesuffix(".gz")
            table_name = self.table_for(name) or self.table_for(unrotated(name))
            if table_name is None:
                log.info("import: not a known log file; skipped", file=str(path))
                stats.skipped_files += 1
                continue
            try:
                self.import_file(path, self.tables[table_name], stats)
            except UnreadableFile as exc:  # the other files are still imported
                log.error("import: file unreadable; the rest of it skipped", file=str(path),
                          error=str(exc))  # fmt: skip
                stats.unreadable.append(str(exc))
                continue
            stats.files += 1
        stats.seconds = time.perf_counter() - started
        return stats

    def import_file(self, path: Path, table: Table, stats: ImportStats) -> None:
        """Import what is new in one local file, for ``table``: a file imported before into
        another table (``--table`` of another run) is read from its start for this one, as
        a file of its own (its own checkpoint and ledger run)."""
        key = str(path.absolute())
        done = self.state.files.get(key)
        if done is not None and done.table not in (None, table.name):
            key = f"{key}#{table.name}"
            done = self.state.files.get(key)
        identity = file_identity(path)
        gz = path.suffix == ".gz"
        if (
            done is None
            or done.identity != identity
            or (
                not gz and path.stat().st_size < done.offset  # truncated: read it again
            )
        ):
            done = FileState(identity, table=table.name)
        with open(path, "rb") as fh:
            if not gz:
                fh.seek(done.offset)
            self.import_stream(key, str(path), fh, gz, table, done, stats)

    def import_segment(self, path: Path, stats: ImportStats) -> None:
        """Import a spool segment the writer set aside (``spool/quarantine/RUN-SEQ.wal``),
        once its cause is fixed: its records are converted as the writer converts them,
        with the record ids the writer gives them (their entries' places in the segment
        its name gives, or their own time), so a record a sink holds already is not stored
        again; it goes to the sinks its ``.acks`` file beside it does not name (those
        confirmed it before it was set aside). As every import, it skips the processors:
        the records of a table a store-stage processor works on (Sora's API tables) miss
        what it adds, and those with a time of their own get the id of their text, not of
        their place as the writer then gives. A segment imported before is not read
        again; raises ``ValueError`` for entries of a table this node does not know."""
        key = str(path.absolute())
        identity = file_identity(path)
        size = path.stat().st_size
        done = self.state.files.get(key)
        if done is not None and done.identity == identity and done.offset >= size:
            return
        run, seq = segment_name(path)
        entries, _ = read_entries(path)
        unknown = sorted({e.header.table for e in entries if e.header.table not in self.tables})
        if unknown:
            raise ValueError(f"{path}: records of tables this node does not have: {unknown}")
        tables = self._converter.convert(run, seq, entries)
        derived, pending = self.derivations.derive(tables)
        batch = Batch(self.node, _import_run(key, identity), size, {**tables, **derived},
                      origin=str(path))  # fmt: skip
        try:
            acked = set(path.with_suffix(".acks").read_text().split())
        except FileNotFoundError:
            acked = set()
        self.delivery.deliver_retrying(batch, already=acked)
        self.derivations.commit(pending)
        stats.rows += sum(table.num_rows for table in tables.values())
        stats.bytes_read += size
        self.state.files[key] = FileState(identity, size, sum(e.header.records for e in entries))
        self.state.save()
        if stats.on_progress is not None:
            stats.on_progress(stats.rows, stats.bytes_read)

    def import_stream(
        self,
        key: str,
        label: str,
        fh: IO[bytes],
        gz: bool,
        table: Table,
        done: FileState,
        stats: ImportStats,
        reopen: Callable[[], IO[bytes]] | None = None,
    ) -> None:
        """Import one stream of JSON Lines; ``done`` says what of it was imported before
        (a plain stream is already positioned there; a gzip stream is read from the start
        and the imported part skipped). ``key`` names it in the import state; ``reopen``
        gives the stream anew when it cannot seek (see :meth:`BlockReader.blocks`)."""
        run = _import_run(key, done.identity)
        stream = Path(label).name.removesuffix(".gz").removesuffix(".jsonl")
        header = make_entry(SOURCE, stream, table, 0)
        # This thread reads (and inflates); the pool converts (the C++ parser, Arrow and
        # DuckDB work without the GIL, so both cores work); the writer thread writes the
        # blocks to the sinks in file order and advances the checkpoint.
        work: queue.Queue[_Block | None] = queue.Queue(maxsize=QUEUED_BLOCKS)
        read_all = threading.Event()  # the last block is queued
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_blocks,
            args=(work, read_all, table, run, key, label, done, stats, failure),
            daemon=True,
        )  # fmt: skip
        writer.start()
        damage: BaseException | None = None
        try:
            base = 0 if gz else done.offset
            skipped = done.line if not gz else 0
            blocks = self._reader.blocks(fh, gz, reopen)
            while True:
                try:
                    offset, buf, length = next(blocks)
                except StopIteration:
                    break
                except GZIP_ERRORS as exc:
                    damage = exc
                    break
                start = base + offset
                stats.bytes_read += length
                if gz and start + length <= done.offset:  # imported before (gzip cannot seek)
                    skipped += buf.count(b"\n", 0, length) + (buf[length - 1] != 0x0A)
                    self._reader.release(buf)
                    continue
                if failure:
                    self._reader.release(buf)
                    break
                end = start + length
                parsed = self._pool.submit(self._parse, table, header, run, end, buf, length)
                work.put(_Block(end, skipped, parsed))
                skipped = 0
        finally:
            read_all.set()
            work.put(None)
            writer.join()
        if failure:
            raise failure[0]
        if damage is not None:
            raise UnreadableFile(
                f"{label}: not a valid gzip file ({damage}); its lines before the damage"
                " were imported"
            ) from damage

    def _parse(
        self, table: Table, header: EntryHeader, run: str, end: int, buf: bytearray, length: int
    ) -> _Parsed:
        """Convert one block (on the pool); its buffer goes back to the reader."""
        try:
            cut = length - 1 if buf[length - 1] == 0x0A else length
            with memoryview(buf)[:cut] as text:
                parsed = self._converter.parse_block(table, text, run, end, header)
        finally:
            self._reader.release(buf)
        rows = self._converter.finish(parsed) if parsed.rows else None
        return _Parsed(rows, parsed.lines, parsed.bad, parsed.notes)

    def _write_blocks(
        self,
        work: queue.Queue[_Block | None],
        read_all: threading.Event,
        table: Table,
        run: str,
        key: str,
        label: str,
        state: FileState,
        stats: ImportStats,
        failure: list[BaseException],
    ) -> None:
        line = 0  # lines of the stream before the block
        group = _Group()
        pending: Pending | None = None  # the derivations' states after the last block
        # A group is merged and encoded on the pool while this thread derives the next
        # blocks, and stored once the next group is complete. (Stored on a thread of its
        # own beside the derivations instead, the import took more time: 7.5-8.5 against
        # 6.3-7.1 s per million Sora lines, one run of three each.)
        merging: collections.deque[tuple[Future[Batch | None], _Group]] = collections.deque()

        def close(group: _Group) -> None:
            merging.append((self._pool.submit(self._merge, run, label, group), group))
            while len(merging) > 1:
                self._store(*merging.popleft(), key, state, stats, failure)

        while (item := work.get()) is not None:
            if failure:
                continue
            try:
                parsed = item.parsed.result()
                line += item.skipped
                self._report(label, line, parsed)
                stats.bad_lines += len(parsed.bad)
                if parsed.rows is not None:
                    tables = {table.name: parsed.rows}
                    derived, pending = self.derivations.derive(tables, pending)
                    group.blocks.append({**tables, **derived})
                    group.rows += parsed.rows.num_rows
                    del tables, derived
                line += parsed.lines
                del parsed
                group.end, group.line, group.pending = item.end, line, pending
                # Once the last block is read, the group takes the few left (at most
                # QUEUED_BLOCKS) rather than closing: a last small group was stored after
                # this one, their two commits after the last block, one core idle.
                full = group.rows >= self.group_rows and not read_all.is_set()
                if full or not group.blocks:
                    close(group)
                    group = _Group()
            except BaseException as exc:  # reported by import_file on the caller's thread
                failure.append(exc)
        if group.end is not None and not failure:
            # the last group: every block is parsed, and this thread would only wait for
            # its merge; it encodes the smaller tables itself while the pool does the
            # largest (one pool thread had encoded all of them, the other core idle)
            last: Future[Batch | None] = Future()
            try:
                last.set_result(self._merge(run, label, group, self._pool))
            except BaseException as exc:
                last.set_exception(exc)
            merging.append((last, group))
        for waiting in merging:
            self._store(*waiting, key, state, stats, failure)

    def _merge(
        self, run: str, label: str, group: _Group, pool: ThreadPoolExecutor | None = None
    ) -> Batch | None:
        """A group's blocks as one batch (named after the offset after its last block),
        with what the sinks prepare of it (the lake's Parquet: one file per table and
        date for the group, not per block; each file costs the lake's commit its column
        statistics and a read of its footer). With a ``pool``, the largest table is
        prepared there, beside the others here."""
        if not group.blocks:
            return None
        names = dict.fromkeys(name for block in group.blocks for name in block)
        tables = {}
        for name in names:
            parts = [block[name] for block in group.blocks if name in block]
            merged = concat(parts)
            rollup = self.tables[name].rollup if name in self.tables else None
            tables[name] = rollup.fold(merged) if rollup and rollup.fold else merged
        prepared: dict[tuple[str, str], Any] = {}
        order = sorted(tables, key=lambda name: tables[name].num_rows, reverse=True)
        largest = None
        if pool is not None and len(order) > 1:
            largest = pool.submit(self.delivery.prepare, order[0], tables[order[0]])
            order = order[1:]
        for name in order:
            prepared.update(self.delivery.prepare(name, tables[name]))
        if largest is not None:
            prepared.update(largest.result())
        assert group.end is not None
        return Batch(self.node, run, group.end, tables, prepared, origin=label)

    def _store(
        self,
        merged: Future[Batch | None],
        group: _Group,
        key: str,
        state: FileState,
        stats: ImportStats,
        failure: list[BaseException],
    ) -> None:
        """Deliver a group of blocks (one commit of the lake), then move the file's
        checkpoint past them; nothing once a group failed (the checkpoint must not pass
        it). A failure goes to ``failure``."""
        if failure:
            return
        try:
            batch = merged.result()
            if batch is not None:
                self.delivery.deliver_retrying(batch)
                if group.pending is not None:
                    self.derivations.commit(group.pending)
                stats.rows += group.rows
            assert group.end is not None
            state.offset, state.line = group.end, group.line
            self.state.files[key] = state
            self.state.save()
            if stats.on_progress is not None:
                stats.on_progress(stats.rows, stats.bytes_read)
        except BaseException as exc:
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


def _import_run(key: str, identity: str) -> str:
    """The run of the lake's ledger an import of one file (or object) writes: the same
    for the same file, so the ledger finds what an earlier import of it stored."""
    digest = hashlib.sha1(f"{key}:{identity}".encode(), usedforsecurity=False)
    return "i" + digest.hexdigest()[:10]


@dataclass
class _Group:
    """Blocks converted and derived, waiting to be stored together."""

    blocks: list[dict[str, pa.Table]] = field(default_factory=list)  # tables of each
    pending: Pending | None = None  # the derivations' states after the last of them
    rows: int = 0
    end: int | None = None  # offset after the last block (rows or none)
    line: int = 0  # lines of the stream up to there


@dataclass
class _Block:
    """A block on its way from the reader to the writer thread."""

    end: int  # offset after the block (in the uncompressed stream)
    skipped: int  # lines skipped (imported before) between the previous block and this one
    parsed: Future[_Parsed]


@dataclass
class _Parsed:
    """A block converted (on the pool)."""

    rows: pa.Table | None
    lines: int  # lines of the block (stored, bad and blank)
    bad: list[tuple[int, str]]
    notes: list[tuple[int, str]]
