"""The durable spool: a write-ahead log of accepted records on local disk.

Sources append *entries* (a header naming table, source and stream, and a body of JSON
Lines, one record per line). ``append`` returns only after the entry is fsync'd, and
concurrent appends share one fsync (group commit), so an acknowledgement always means
"on disk". Entries go into numbered *segments*; a segment is cut when it reaches its size
or record limit or has been open for ``flush_interval`` seconds, and a cut segment is one
batch for the writer. A segment is deleted only after every sink confirmed it; on start,
every segment still on disk is replayed. A torn entry at the end of a segment (a crash in
the middle of a write, never acknowledged) is cut off.

A write that fails half-way (a full disk, an I/O error) leaves the segment as it was: the
torn bytes are cut off again before the error is raised, or, if even that fails, the
segment is retired and later entries go to a new one. The reader also steps over a torn
entry inside a segment to the next valid one, so nothing written after a tear is lost,
neither at run time nor on recovery. While the disk refuses writes, appends raise
:class:`~rtclake.errors.DiskFull` (or :class:`~rtclake.errors.SpoolIOError`), the episode
is logged once, and :meth:`Spool.health` reports it until writes succeed again.

Entry framing: ``b"RTW1"``, header length, body length, CRC-32 of header+body (three
little-endian u32), the header (JSON), the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from rtclake import faults
from rtclake.durable import fsync_dir
from rtclake.errors import (
    DiskFull,
    PayloadTooLarge,
    SpoolCorrupt,
    SpoolFull,
    SpoolIOError,
    SpoolUnavailable,
)

log = structlog.get_logger(__name__)

MAGIC = b"RTW1"
FRAME = struct.Struct("<4sIII")
# Seconds a sender is asked to wait when the disk refuses writes.
DISK_RETRY_AFTER = 5


class EntryHeader(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a spooled entry's records share."""

    table: str
    source: str
    stream: str
    kind: str
    received_us: int
    records: int
    type: str | None = None
    idem: str | None = None  # a sender's idempotency key (makes record ids retry-proof)
    extra: list[int] | None = None  # lines with unmapped keys; None: any line may have them


@dataclass(frozen=True)
class Entry:
    header: EntryHeader
    body: bytes
    index: int  # position in its segment, part of the record id of records without time


@dataclass(eq=False)
class Segment:
    seq: int
    run: str  # the id of the process run that wrote it; with seq, names the batch
    path: Path
    size: int = 0
    records: int = 0
    entries: int = 0  # entries written whole (a torn one is cut off or stepped over)
    fd: int | None = None
    first_write: float | None = None
    retired: bool = False
    dir_synced: bool = False

    @property
    def acks_path(self) -> Path:
        return self.path.with_suffix(".acks")


_encode_header = msgspec.json.Encoder().encode
_decode_header = msgspec.json.Decoder(EntryHeader).decode


def frame(header: EntryHeader, body: bytes) -> bytes:
    head = _encode_header(header)
    crc = zlib.crc32(body, zlib.crc32(head))
    return FRAME.pack(MAGIC, len(head), len(body), crc) + head + body


def _entry_at(data: bytes, offset: int) -> tuple[bytes, bytes, int] | None:
    """The header, body and end of a valid frame at ``offset``, or None."""
    if offset + FRAME.size > len(data):
        return None
    magic, head_len, body_len, crc = FRAME.unpack_from(data, offset)
    start = offset + FRAME.size
    end = start + head_len + body_len
    if magic != MAGIC or end > len(data):
        return None
    head = data[start : start + head_len]
    body = data[start + head_len : end]
    if zlib.crc32(body, zlib.crc32(head)) != crc:
        return None
    return head, body, end


def read_entries(path: Path) -> tuple[list[Entry], int]:
    """The valid entries of a segment file and the offset where valid data ends.

    Bytes that are not a valid entry (a write torn by a crash or a failing disk) are
    stepped over to the next valid entry: a JSON body cannot hold a frame (its lengths
    contain bytes JSON text never has), and the CRC rejects chance matches.
    """
    data = path.read_bytes()
    entries: list[Entry] = []
    offset = valid_end = 0
    skipped = 0
    while offset + FRAME.size <= len(data):
        found = _entry_at(data, offset)
        if found is None:
            following = data.find(MAGIC, offset + 1)
            if following < 0:
                break
            skipped += following - offset
            offset = following
            continue
        head, body, end = found
        try:
            header = _decode_header(head)
        except msgspec.MsgspecError as exc:
            raise SpoolCorrupt(f"{path}: entry at byte {offset} has a bad header: {exc}") from exc
        entries.append(Entry(header, body, len(entries)))
        offset = valid_end = end
    if skipped:
        log.warning("spool: stepped over torn bytes", segment=path.name, bytes=skipped)
    return entries, valid_end


class Spool:
    """A write-ahead log with group commit. Appends happen on one event loop; the writer
    reads, acknowledges and removes sealed segments from its own thread."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_max_bytes: int,
        segment_max_records: int,
        flush_interval: float,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_records = segment_max_records
        self.flush_interval = flush_interval
        self.fsync = fsync
        # A new id per run: segment numbers restart once the spool is empty, and the
        # run id keeps the names of the sinks' files (derived from it) from repeating.
        self.run_id = secrets.token_hex(6)
        self._lock = threading.Lock()
        self._sealed_bytes = 0
        self._sealed_count = 0
        self._active: Segment | None = None
        self._next_seq = 0
        self._dirty: list[Segment] = []
        self._retiring: list[Segment] = []  # cut, waiting for their last fsync
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._sealed: asyncio.Queue[Segment] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rtclake-fsync")
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # RUN:SEGMENT:ENTRY of the entry the last append wrote (read right after the
        # append, on the same loop): part of the record id of records without a time.
        self.last_position = ""
        self._failure: SpoolUnavailable | None = None  # set while the disk refuses writes
        self._failed_size = 0  # the size of the entry the disk refused
        self.on_sync: Callable[[float], None] | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        active = self._active.size if self._active else 0
        # cut segments waiting for their last fsync count too: between the cut and the
        # seal they are neither open nor queued, and /healthz would show an empty spool
        retiring = sum(seg.size for seg in list(self._retiring))
        return self._sealed_bytes + active + retiring

    @property
    def segment_count(self) -> int:
        return self._sealed_count + len(self._retiring) + (1 if self._active else 0)

    def disk_free_bytes(self) -> int | None:
        """Bytes free for this process on the spool's file system (None if it cannot be
        told: the folder is not there yet, or the disk is gone)."""
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    @property
    def failure(self) -> SpoolUnavailable | None:
        """Why the spool cannot write now (a full or failing disk), or None."""
        return self._failure

    def health(self) -> dict[str, object]:
        """The spool's state, for ``/healthz``."""
        state: dict[str, object] = {
            "writable": self._failure is None,
            "spool_bytes": self.used_bytes,
            "spool_segments": self.segment_count,
        }
        free = self.disk_free_bytes()
        if free is not None:
            state["disk_free_bytes"] = free
        if self._failure is not None:
            state["reason"] = self._failure.reason
            state["message"] = self._failure.message
        return state

    @property
    def pending_records(self) -> int:
        """Records in segments the writer has not been handed yet."""
        active = self._active.records if self._active else 0
        return active + sum(seg.records for seg in self._retiring)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what a previous run left, queue it for the writer, open a segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.directory.glob("*.wal"), key=_seq_of):
            seg = self._recover(path)
            if seg is not None:
                self._enqueue_sealed(seg)
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="spool-sync"),
            asyncio.create_task(self._timer_loop(), name="spool-timer"),
        ]

    def _recover(self, path: Path) -> Segment | None:
        run, seq = segment_name(path)
        self._next_seq = max(self._next_seq, seq + 1)
        entries, valid_end = read_entries(path)
        size = path.stat().st_size
        if valid_end < size:
            log.warning("spool: cutting torn tail", segment=path.name, kept=valid_end, size=size)
            with open(path, "r+b") as fh:
                fh.truncate(valid_end)
                os.fsync(fh.fileno())
        if not entries:
            path.unlink()
            path.with_suffix(".acks").unlink(missing_ok=True)
            return None
        records = sum(e.header.records for e in entries)
        return Segment(
            seq, run, path, size=valid_end, records=records, retired=True, dir_synced=True
        )

    async def close(self) -> None:
        """Cut the open segment (so the writer can drain it) and stop the background tasks."""
        if self._closed:
            return
        self.cut()
        await self.flush()
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=True)

    # -- appending ---------------------------------------------------------------------

    def check_room(self, size: int) -> None:
        """Raise :class:`SpoolFull` if ``size`` more bytes would pass the limit, and
        :class:`PayloadTooLarge` if they would not fit even in an empty spool."""
        if size > self.max_bytes:
            raise PayloadTooLarge(
                "too_large",
                f"the records take {size} bytes in the spool, more than its limit"
                f" (spool.max_bytes = {self.max_bytes}); send them in smaller requests",
            )
        used = self.used_bytes
        if used + size > self.max_bytes:
            raise SpoolFull(used, self.max_bytes, retry_after=max(1, round(self.flush_interval)))

    async def append(self, header: EntryHeader, body: bytes) -> None:
        """Append one entry and return once it is durable on disk."""
        await self.append_nowait(header, body)

    def append_nowait(self, header: EntryHeader, body: bytes) -> asyncio.Future[None]:
        """Write one entry; the returned future completes when it is durable."""
        if self._closed:
            raise RuntimeError("spool is closed")
        data = frame(header, body)
        self.check_room(len(data))
        try:
            seg = self._active or self._open_segment()
            self._write(seg, data)
        except OSError as exc:
            raise self._failed(exc, len(data)) from exc
        seg.size += len(data)
        seg.records += header.records
        self.last_position = f"{seg.run}:{seg.seq}:{seg.entries}"
        seg.entries += 1
        if seg.first_write is None:
            seg.first_write = time.monotonic()
        if not self._dirty or self._dirty[-1] is not seg:
            self._dirty.append(seg)
        if seg.size >= self.segment_max_bytes or seg.records >= self.segment_max_records:
            self._retire(seg)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        return future

    def _write(self, seg: Segment, data: bytes) -> None:
        """Append ``data`` to ``seg``, or leave ``seg`` exactly as it was and raise."""
        assert seg.fd is not None
        view = memoryview(data)
        try:
            action = faults.hit("spool.write")
            if action == "torn":
                os.write(seg.fd, view[: len(view) // 2])
            if action is not None:
                faults.act(action, "spool.write")
            while view:
                written = os.write(seg.fd, view)
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(seg.fd, seg.size)
            except OSError as cut_failed:
                # The torn bytes stay; readers step over them. Nothing more goes after.
                log.error("spool: cannot cut a torn write; segment retired", error=str(cut_failed))
                self._retire(seg)
                self._wake.set()
            raise

    def _failed(self, exc: OSError, size: int) -> SpoolUnavailable:
        """The error to answer for a write the disk refused; logs once per episode."""
        free = self.disk_free_bytes()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            error: SpoolUnavailable = DiskFull(
                f"no space left on the spool's disk for {size} bytes"
                + ("" if free is None else f" ({free} bytes free)")
                + "; retry later",
                retry_after=DISK_RETRY_AFTER,
            )
        else:
            error = SpoolIOError(
                f"the spool's disk failed a write ({exc.strerror or exc}); retry later",
                retry_after=DISK_RETRY_AFTER,
            )
        if self._failure is None:
            log.error(
                "spool: the disk refuses writes; refusing entries until it accepts them",
                reason=error.reason,
                error=str(exc),
                directory=str(self.directory),
                disk_free_bytes=free,
            )
        self._failure = error
        self._failed_size = max(size, 1)
        return error

    def _recovered(self) -> None:
        if self._failure is not None:
            log.warning("spool: the disk accepts writes again", reason=self._failure.reason)
            self._failure = None

    def cut(self) -> None:
        """End the open segment now, so the writer takes it as a batch."""
        if self._active is not None and self._active.records:
            self._retire(self._active)
            self._wake.set()

    def _open_segment(self) -> Segment:
        faults.check("spool.open_segment")
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"{self.run_id}-{seq:012d}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._active = Segment(seq, self.run_id, path, fd=fd)
        return self._active

    def _retire(self, seg: Segment) -> None:
        seg.retired = True
        self._retiring.append(seg)
        if self._active is seg:
            self._active = None
        if seg not in self._dirty:
            self._dirty.append(seg)

    # -- group commit ------------------------------------------------------------------

    async def flush(self) -> None:
        """Wait for a group commit (after :meth:`cut`, the cut segment is then queued)."""
        self._wake.set()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._tasks and not self._tasks[0].done():
            # A failed fsync is logged by the sync loop; the segments stay queued for it.
            with contextlib.suppress(SpoolUnavailable):
                await future

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            waiters, self._waiters = self._waiters, []
            segments, self._dirty = self._dirty, []
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._pool, self._sync, segments)
            except OSError as exc:
                error = self._failed(exc, 0)
                for future in waiters:
                    if not future.done():
                        future.set_exception(error)
                # What those segments hold is not known to be on disk: nothing more is
                # appended to them, and their fsync is tried again.
                for seg in segments:
                    if not seg.retired:
                        self._retire(seg)
                self._dirty = [*segments, *(s for s in self._dirty if s not in segments)]
                loop.call_later(1.0, self._wake.set)
                continue
            # A sync that works ends an I/O error; a full disk ends when the timer sees
            # room for what it refused (a small sync after a refused batch does not make
            # /healthz and rtclake_spool_writable flap back to writable).
            if segments and not (isinstance(self._failure, DiskFull) and not self._room_is_back()):
                self._recovered()
            if self.on_sync is not None:
                self.on_sync(time.perf_counter() - started)
            for future in waiters:
                if not future.done():
                    future.set_result(None)
            for seg in segments:
                if seg.retired and seg not in self._dirty:
                    self._seal(seg)

    def _sync(self, segments: list[Segment]) -> None:
        if not self.fsync:
            return
        new_file = False
        for seg in segments:
            if seg.fd is not None:
                faults.check("spool.fsync")
                os.fsync(seg.fd)
            if not seg.dir_synced:
                seg.dir_synced = new_file = True
        if new_file:
            fsync_dir(self.directory)

    def _seal(self, seg: Segment) -> None:
        self._retiring.remove(seg)
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        if seg.records == 0:  # retired by a failed first write: nothing to store
            seg.path.unlink(missing_ok=True)
            return
        self._enqueue_sealed(seg)

    def _enqueue_sealed(self, seg: Segment) -> None:
        with self._lock:
            self._sealed_bytes += seg.size
            self._sealed_count += 1
        self._sealed.put_nowait(seg)

    async def _timer_loop(self) -> None:
        tick = min(0.25, self.flush_interval / 4)
        while True:
            await asyncio.sleep(tick)
            if isinstance(self._failure, DiskFull) and self._room_is_back():
                self._recovered()
            seg = self._active
            if (
                seg
                and seg.first_write
                and time.monotonic() - seg.first_write >= self.flush_interval
            ):
                self.cut()

    def _room_is_back(self) -> bool:
        """True once the disk has room again for what it refused (with some margin)."""
        free = self.disk_free_bytes()
        return free is not None and free >= self._failed_size + 64 * 1024

    # -- the writer's side -------------------------------------------------------------

    async def next_sealed(self) -> Segment:
        """The oldest segment that is cut, durable and not yet removed."""
        return await self._sealed.get()

    def next_sealed_nowait(self) -> Segment | None:
        """The oldest segment waiting, if one is (None: none is)."""
        try:
            return self._sealed.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def sealed_waiting(self) -> int:
        return self._sealed.qsize()

    @staticmethod
    def read(seg: Segment) -> list[Entry]:
        entries, _ = read_entries(seg.path)
        return entries

    @staticmethod
    def acked_sinks(seg: Segment) -> set[str]:
        try:
            return set(seg.acks_path.read_text().split())
        except FileNotFoundError:
            return set()

    def ack(self, seg: Segment, sink: str) -> None:
        """Record durably that ``sink`` holds everything in ``seg``."""
        faults.check("spool.ack")
        with open(seg.acks_path, "a", encoding="utf-8") as fh:
            fh.write(sink + "\n")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def quarantine(self, seg: Segment) -> Path:
        """Move a segment that cannot be converted to ``quarantine/``, out of the queue,
        with its acknowledgements beside it: ``rtclake import`` stores it from there once
        its cause is fixed, in the sinks that do not hold it yet."""
        folder = self.directory / "quarantine"
        folder.mkdir(exist_ok=True)
        target = folder / seg.path.name
        os.replace(seg.path, target)
        with contextlib.suppress(FileNotFoundError):
            os.replace(seg.acks_path, target.with_suffix(".acks"))
        self._forget(seg)
        return target

    def remove(self, seg: Segment) -> None:
        """Delete a segment every sink confirmed."""
        seg.path.unlink(missing_ok=True)
        seg.acks_path.unlink(missing_ok=True)
        self._forget(seg)

    def _forget(self, seg: Segment) -> None:
        if self.fsync:
            fsync_dir(self.directory)
        with self._lock:
            self._sealed_bytes -= seg.size
            self._sealed_count -= 1


def _seq_of(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[-1])


def segment_name(path: Path) -> tuple[str, int]:
    """The run and the sequence number a segment file is named after (``RUN-SEQ.wal``):
    with the entries' places, what the record ids of records without a time hash."""
    run, _, seq = path.stem.rpartition("-")
    if not run or not seq.isdigit():
        raise ValueError(f"{path}: not named as a spool segment (RUN-SEQUENCE.wal)")
    return run, int(seq)


def is_segment(path: Path) -> bool:
    """Whether the file ``path`` is a spool segment (it starts with an entry's frame)."""
    with open(path, "rb") as fh:
        return fh.read(len(MAGIC)) == MAGIC
