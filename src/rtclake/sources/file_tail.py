"""The file tail: follows directories of JSON Lines files that a program appends to
(Sora's log directory is one: :mod:`rtclake.integrations.sora.log_tail` configures it).

Every ``poll_interval`` seconds the tail lists the watched directories and reads what
each file its ``table_for`` rule knows (for Sora: ``rtc_stats.jsonl``,
``session_webhook.jsonl``, ...) gained since the last look. Other files are ignored,
except the rotated copies of those files (``rtc_stats.jsonl.1``,
``rtc_stats.jsonl-20261120``: the file's name and a suffix; compressed ones are left to
``rtclake import``). Only complete lines are taken; a line still being written waits for
its newline. Each line is validated against its table; a bad one (a line longer than
``max_line_bytes`` is one, whatever it holds) is logged with its file and line number,
counted (``rtclake_records_rejected{source=...}``) and skipped, and never stops the tail.
The good lines of one read become one spool entry.

Where each file was read to is kept in a checkpoint (per file: device and inode, byte
offset, line number, a fingerprint of its first bytes), advanced only after the spool
confirmed the entry durable, and written atomically. After a restart, reading resumes
there. A crash between the spool's confirmation and the checkpoint's write makes the
next run read those lines again; their record ids are the same both times (the identity
of ``rtc_stats`` rows, the line's text for lines with a ``timestamp``, the file's
position for lines without one), so the query views show them once.

Files change under the tail in these ways, all handled:

- rotation by rename: the old file is still open, and is read until it has not grown for
  ``rotate_wait`` seconds (the writer may put a last line into it), then closed; the new file
  is read from its start. After a restart, the renamed file is found by its inode.
- copy and truncate (logrotate's ``copytruncate``): the file is read again from its
  start; what was not read before the truncation is read from the copy (a rotated copy
  whose first bytes match).
- several rotations between two looks, or while rtclake was stopped: a rotated copy the
  tail has never seen, and that is no copy of a file it reads, is read from its start.
  Rotated copies already there when a directory is followed for the first time are
  history, and are not read.
- a file removed, and later created again: the open removed file is read to its end, the
  new one from its start.
- a partial last line: stored once its newline arrives (or, in a rotated file that
  stopped growing, as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import msgspec
import structlog
from pydantic import Field, model_validator

from rtclake.config import MiB
from rtclake.durable import write_atomic
from rtclake.errors import SpoolUnavailable
from rtclake.intake import Intake, make_entry
from rtclake.logfiles import unrotated
from rtclake.registry import SourceConfig
from rtclake.sources.base import Source, reason_of
from rtclake.spool import EntryHeader
from rtclake.tables import TableRegistry

log = structlog.get_logger(__name__)


class FileTailConfig(SourceConfig):
    """A tail of directories of JSON Lines files (see :mod:`rtclake.sources.file_tail`)."""

    dirs: list[Path] = Field(description="directories to follow")
    poll_interval: float = Field(
        default=0.5, gt=0, description="seconds between two looks at the files"
    )
    rotate_wait: float = Field(
        default=5.0,
        ge=0,
        description="seconds a renamed or removed file is still read after it stopped growing",
    )
    max_batch_bytes: int = Field(
        default=4 * MiB, gt=0, description="most bytes of one file per spool entry"
    )
    max_line_bytes: int = Field(
        default=16 * MiB,
        gt=0,
        description="longer lines are skipped, logged (file, line) and counted",
    )
    start_at: Literal["beginning", "end"] = Field(
        default="beginning",
        description="where to start in the log files of a directory followed for the first time",
    )
    checkpoint: Path | None = Field(
        default=None, description="default: DATA_DIR/NAME.checkpoint.json"
    )


class JsonLinesTailConfig(FileTailConfig):
    """``type: file_tail``: any directory of JSON Lines logs into any table. Give ``table``
    (every ``*.jsonl`` file goes there) or ``files`` (file-name pattern -> table, the
    first match wins; ``*`` and ``?`` as in the shell)."""

    table: str | None = Field(default=None, description="the table of every *.jsonl file")
    files: dict[str, str] = Field(
        default_factory=dict, description='file-name pattern -> table, e.g. {"app-*.log": events}'
    )
    source: str | None = Field(
        default=None, description="the records' source column; default: the component's name"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> JsonLinesTailConfig:
        if (self.table is None) == (not self.files):
            raise ValueError("give either table (every *.jsonl file) or files (pattern -> table)")
        return self

    def rule(self) -> Callable[[str], str | None]:
        """The file -> table rule of these settings."""
        patterns = {"*.jsonl": self.table} if self.table else self.files
        compiled = [(re.compile(fnmatch.translate(p)), t) for p, t in patterns.items()]

        def table_for(filename: str) -> str | None:
            for pattern, table in compiled:
                if pattern.match(filename):
                    return table
            return None

        return table_for


MiB = 1024 * 1024
HEAD_BYTES = 1024  # a file is recognised by its first bytes (up to this many)
_MAX_LOGGED_BAD_LINES = 20  # per read; the rest are counted and summed up in one message


class FileProgress(NamedTuple):
    """How far one followed file was stored."""

    path: Path
    offset: int  # bytes
    line: int  # lines
    rotated: bool  # renamed, removed or a copy: read to its end, then closed


@dataclass(eq=False)
class _File:
    """One open file being read (the log file at DIR/NAME, or a rotated one)."""

    name: str  # the log's name (rtc_stats.jsonl): gives table and stream
    path: Path  # where the file is now (for a removed file: where it was)
    dev: int
    ino: int
    uid: str  # names this file's content in the record ids of lines without a time
    fd: int | None = None
    offset: int = 0  # bytes stored: always the end of a line, unless ``skipping``
    line: int = 0  # lines before ``offset``
    head: bytes = b""  # its first bytes, as read (tells a rewrite or a copy apart)
    rotated: bool = False  # no longer at DIR/NAME: read until idle, then closed
    skipping: bool = False  # inside a line longer than ``max_line_bytes``
    size_seen: int = -1
    idle_since: float = 0.0  # monotonic time the size last changed

    @property
    def ident(self) -> tuple[int, int]:
        return self.dev, self.ino

    @property
    def stream(self) -> str:
        return self.name.removesuffix(".jsonl")


class _Saved(msgspec.Struct, omit_defaults=True):
    """A file in the checkpoint: one being read, or a rotated one read to its end."""

    name: str
    path: str
    dev: int
    ino: int
    uid: str
    offset: int
    line: int
    head: bytes = b""
    rotated: bool = False
    skipping: bool = False
    copy: bool = False  # closed: a copy of a file being read (its content comes from there)


class _Checkpoint(msgspec.Struct):
    version: int = 1
    dirs: list[str] = msgspec.field(default_factory=list)  # directories followed before
    files: list[_Saved] = msgspec.field(default_factory=list)  # open
    closed: list[_Saved] = msgspec.field(default_factory=list)  # rotated copies, done


class _Times(msgspec.Struct):
    """The keys that give a record its own time (``rtclake.tables.TIME_KEYS``)."""

    time: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    timestamp: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    ts: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_decode_times = msgspec.json.Decoder(_Times).decode
_encode_checkpoint = msgspec.json.Encoder().encode
_decode_checkpoint = msgspec.json.Decoder(_Checkpoint).decode


def _has_time(line: bytes) -> bool:
    """True if the record carries a non-null time key (its record id is then its text)."""
    times = _decode_times(line)
    return any(bytes(raw) not in (b"", b"null") for raw in (times.time, times.timestamp, times.ts))


def _saved(f: _File, **changes: object) -> _Saved:
    s = _Saved(
        name=f.name,
        path=str(f.path),
        dev=f.dev,
        ino=f.ino,
        uid=f.uid,
        offset=f.offset,
        line=f.line,
        head=f.head,
        rotated=f.rotated,
        skipping=f.skipping,
    )
    return msgspec.structs.replace(s, **changes) if changes else s


@dataclass
class _Chunk:
    """What one read of one file produced, applied once its entries are durable."""

    file: _File
    entries: list[tuple[EntryHeader, bytes]]
    offset: int
    line: int
    skipping: bool
    records: int = 0
    more: bool = False  # the read was cut at max_batch_bytes: read again at once
    close: bool = False  # a rotated file read to its end and idle: close it once stored
    head: bytes | None = None  # the file's first bytes, when this chunk adds to them


class FileTail(Source):
    """Follows directories of JSON Lines files and spools their lines (see the module
    docs). ``table_for`` names the table of a file (by its name without a rotation
    suffix), or None for a file the tail ignores; ``source`` is the records' source,
    ``label`` starts the tail's log lines."""

    def __init__(
        self,
        config: FileTailConfig,
        intake: Intake,
        data_dir: Path,
        *,
        tables: TableRegistry,
        table_for: Callable[[str], str | None],
        name: str = "file_tail",
        source: str = "file",
        label: str = "file tail",
        checkpoint_name: str = "file-tail.checkpoint.json",
    ) -> None:
        self.config = config
        self.intake = intake
        self.metrics = intake.metrics
        self.tables = tables
        self.table_for = table_for
        self.name = name
        self.source = source
        self.label = label
        self.dirs = list(dict.fromkeys(Path(d).absolute() for d in config.dirs))
        self.checkpoint_path = Path(config.checkpoint or Path(data_dir) / checkpoint_name)
        self._live: dict[Path, _File] = {}
        self._rotated: list[_File] = []
        self._closed: dict[tuple[int, int], _Saved] = {}
        self._known_dirs: set[Path] = set()
        self._restored = False
        self._scanned = False
        self._missing: set[Path] = set()  # directories reported missing
        self._ignored: set[Path] = set()  # unknown files reported once
        self._last_saved = b""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the directories (the checkpoint is read in the first round)."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name=self.name)
        log.info(f"{self.label}: following", dirs=[str(d) for d in self.dirs])

    async def stop(self) -> None:
        """Finish the round in progress (so its checkpoint is written), close the files."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                log.warning(f"{self.label}: the last round did not finish; it is read again")
            self._task = None
        for f in self._open_files():
            _close(f)

    def files(self) -> list[FileProgress]:
        """The files being read and how far (rotated ones until they are closed)."""
        return [FileProgress(f.path, f.offset, f.line, f.rotated) for f in self._open_files()]

    def _open_files(self) -> list[_File]:
        return [*self._live.values(), *self._rotated]

    async def _loop(self) -> None:
        interval = self.config.poll_interval
        while not self._stopping.is_set():
            delay = interval
            try:
                if await self.poll_once():
                    delay = 0
            except SpoolUnavailable as exc:
                log.warning(
                    f"{self.label}: spool cannot take lines; waiting",
                    reason=exc.reason,
                    retry_after=exc.retry_after,
                )
                delay = exc.retry_after
            except Exception as exc:  # a failing round is retried; the tail never dies
                log.error(
                    f"{self.label}: round failed; retrying", error=f"{type(exc).__name__}: {exc}"
                )
                delay = max(interval, 1.0)
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
            else:
                await asyncio.sleep(0)

    async def poll_once(self) -> bool:
        """Look at the files once and store what they gained; True if more is waiting.

        The background loop calls this every ``poll_interval``; tests and tools may call
        it themselves instead of :meth:`start`.
        """
        changed = False
        if not self._restored:
            await asyncio.to_thread(self._restore)
            self._restored = changed = True
        changed |= await asyncio.to_thread(self._discover)
        if changed:
            # New files' ids (uid) and rotations are saved before anything of them is
            # stored, so a re-read after a crash names their lines the same way.
            await asyncio.to_thread(self._save)
        chunks = await asyncio.to_thread(self._read_all)
        if not chunks:
            return False
        pending: list[tuple[_Chunk, list[asyncio.Future[None]]]] = []
        full: SpoolUnavailable | None = None
        for chunk in chunks:
            futures: list[asyncio.Future[None]] = []
            try:
                for header, body in chunk.entries:
                    futures.append(self.intake.take_nowait(header, body))
            except SpoolUnavailable as exc:
                full = exc
            pending.append((chunk, futures))
            if full is not None:
                break
        stored: list[_Chunk] = []
        failure: BaseException | None = None
        for chunk, futures in pending:
            results = await asyncio.gather(*futures, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                failure = errors[0]
            elif not (full is not None and chunk is pending[-1][0]):
                stored.append(chunk)  # every entry durable: the checkpoint may pass it
        for chunk in stored:
            self._apply(chunk)
        if stored:
            await asyncio.to_thread(self._save)
        if full is not None:
            raise full
        if failure is not None:
            raise failure
        return any(chunk.more for chunk in stored)

    def _apply(self, chunk: _Chunk) -> None:
        f = chunk.file
        f.offset, f.line, f.skipping = chunk.offset, chunk.line, chunk.skipping
        if chunk.head is not None:
            f.head = chunk.head
        if chunk.close and f in self._rotated:
            log.info(f"{self.label}: rotated file read to its end", file=str(f.path), lines=f.line)
            _close(f)
            self._rotated.remove(f)
            # Remembered while it stays in the directory: a rotated copy seen again later
            # is not read again (and what was written into it after all is).
            self._closed[f.ident] = _saved(f)

    # -- the checkpoint ----------------------------------------------------------------

    def _save(self) -> None:
        checkpoint = _Checkpoint(
            dirs=sorted(str(d) for d in self._known_dirs),
            files=[_saved(f) for f in self._open_files()],
            closed=list(self._closed.values()),
        )
        data = _encode_checkpoint(checkpoint)
        if data == self._last_saved:
            return
        write_atomic(self.checkpoint_path, data)
        self._last_saved = data

    def _load(self) -> _Checkpoint:
        try:
            data = self.checkpoint_path.read_bytes()
        except FileNotFoundError:
            return _Checkpoint()
        try:
            return _decode_checkpoint(data)
        except msgspec.MsgspecError as exc:
            # Written atomically, so this is damage from outside; reading everything
            # again is safe (the views hide lines stored twice).
            aside = self.checkpoint_path.with_name(self.checkpoint_path.name + ".corrupt")
            os.replace(self.checkpoint_path, aside)
            log.error(
                f"{self.label}: checkpoint unreadable; moved aside, files are read from the start",
                checkpoint=str(self.checkpoint_path),
                moved_to=str(aside),
                error=str(exc),
            )
            return _Checkpoint()

    def _restore(self) -> None:
        """Pick the files up where the checkpoint left them, wherever they are now."""
        saved = self._load()
        self._known_dirs = {Path(d) for d in saved.dirs} & set(self.dirs)
        for s in saved.closed:
            if Path(s.path).parent in self.dirs:
                self._closed[(s.dev, s.ino)] = s
        for s in saved.files:
            path = Path(s.path)
            if path.parent not in self.dirs:
                log.info(f"{self.label}: directory no longer followed; forgetting", file=s.path)
                continue
            f = None if s.rotated else self._reopen(path, s)
            if f is not None:
                self._live[path] = f
                continue
            # A rotated file, or the log file changed while rtclake was down: renamed
            # (find it by inode), or truncated after a copy was taken (find the copy).
            if s.rotated:
                f = self._reopen(path, s)
            f = f or self._find_by_inode(path.parent, s)
            copied = False
            if f is None and not s.rotated:
                f, copied = self._open_copy(path.parent, s)
            if f is None and copied:
                log.info(
                    f"{self.label}: file truncated while stopped; all of it was read", file=s.path
                )
                continue
            if f is None:
                log.warning(
                    f"{self.label}: a file being read is gone; lines after the checkpoint may"
                    " be missing",
                    file=s.path,
                    offset=s.offset,
                    from_line=s.line + 1,
                )
                continue
            self._closed.pop(f.ident, None)
            f.rotated, f.idle_since = True, time.monotonic()
            self._rotated.append(f)
            if not s.rotated:
                log.info(f"{self.label}: resuming a file rotated while stopped", file=str(f.path))

    def _reopen(self, path: Path, s: _Saved) -> _File | None:
        """``path`` opened at the saved position if it is still the saved file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        f = _File(s.name, path, st.st_dev, st.st_ino, s.uid, fd, s.offset, s.line)
        f.head, f.skipping = s.head, s.skipping
        if (st.st_dev, st.st_ino) != (s.dev, s.ino) or st.st_size < s.offset or not _head_ok(f):
            _close(f)
            return None
        return f

    def _find_by_inode(self, directory: Path, s: _Saved) -> _File | None:
        for entry in _listdir(directory):
            if entry.inode() == s.ino and (f := self._reopen(Path(entry.path), s)) is not None:
                return f
        return None

    def _open_copy(self, directory: Path, s: _Saved) -> tuple[_File | None, bool]:
        """The newest rotated copy of the saved file, opened at the saved offset if it
        holds more than was read (a copy holding just that is remembered as done); and
        whether there is a copy."""
        if not s.head:
            return None, False
        taken = {f.ident for f in self._open_files()}
        best: tuple[float, _File] | None = None
        for entry in _listdir(directory):
            if self._classify(entry.name) != s.name or entry.name == s.name:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or st.st_size < s.offset or ident in taken:
                continue
            copy = msgspec.structs.replace(s, path=entry.path, dev=ident[0], ino=ident[1])
            f = self._reopen(Path(entry.path), copy)
            if f is None:
                continue
            if best is None or st.st_mtime > best[0]:
                if best is not None:
                    _close(best[1])
                best = (st.st_mtime, f)
            else:
                _close(f)
        if best is None:
            return None, False
        f = best[1]
        self._closed.pop(f.ident, None)
        assert f.fd is not None
        if os.fstat(f.fd).st_size == f.offset:
            _close(f)  # everything in it was read from the file it copies
            self._closed[f.ident] = _saved(f, rotated=True)
            return None, True
        return f, True

    # -- watching the directories ------------------------------------------------------

    def _classify(self, name: str) -> str | None:
        """The log a file name belongs to (itself, or the log it is a rotated copy of:
        the name and a suffix, ``.1`` or ``-20261120``; or anything after ``.jsonl``)."""
        if name.endswith(".gz"):
            return None  # compressed rotated copies: `rtclake import` reads those
        candidates = [name, unrotated(name)]
        end = name.find(".jsonl")
        if end >= 0:
            candidates.append(name[: end + len(".jsonl")])
        for base in candidates:
            table = self.table_for(base)
            if table is not None and table in self.tables:
                return base
        return None

    def _discover(self) -> bool:
        """Notice new, rotated, removed and truncated files; True if anything changed."""
        changed = False
        first = not self._scanned
        self._scanned = True
        for directory in self.dirs:
            listing: list[os.DirEntry[str]] | None
            try:
                listing = list(os.scandir(directory))
            except OSError as exc:
                if directory not in self._missing:
                    self._missing.add(directory)
                    log.warning(
                        f"{self.label}: cannot list directory; retrying",
                        dir=str(directory),
                        error=exc.strerror,
                    )
                if not isinstance(exc, FileNotFoundError):
                    continue  # unreadable for now: its files are not known to be gone
                listing = None
            else:
                self._missing.discard(directory)
            # Rotated copies there when a directory is first followed are history.
            fresh = first and listing is not None and directory not in self._known_dirs
            if listing is not None and directory not in self._known_dirs:
                self._known_dirs.add(directory)
                changed = True
            entries = listing or []
            logs: list[os.DirEntry[str]] = []
            copies: list[tuple[os.DirEntry[str], str]] = []
            for entry in entries:
                base = self._classify(entry.name)
                if base is None:
                    path = Path(entry.path)
                    if path not in self._ignored:
                        self._ignored.add(path)
                        log.info(
                            f"{self.label}: not a log rtclake stores; ignored", file=entry.path
                        )
                elif base == entry.name:
                    logs.append(entry)
                else:
                    copies.append((entry, base))
            present: set[str] = set()
            for entry in logs:
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                    present.add(entry.name)
                    changed |= self._check(directory, entry.name, st, entries, fresh)
                except OSError as exc:  # one file's trouble must not stop the others
                    log.error(f"{self.label}: cannot check file", file=entry.path, error=str(exc))
            for key, f in list(self._live.items()):
                if key.parent == directory and key.name not in present:
                    self._demote(f, entries)  # removed or renamed: read its rest
                    changed = True
            for entry, base in copies:
                try:
                    changed |= self._rotated_copy(entry, base, fresh)
                except OSError as exc:
                    log.error(f"{self.label}: cannot check file", file=entry.path, error=str(exc))
            if listing is not None:
                inodes = {entry.inode() for entry in entries}
                for ident, s in list(self._closed.items()):
                    if Path(s.path).parent == directory and ident[1] not in inodes:
                        del self._closed[ident]  # gone from the directory: forget it
                        changed = True
        return changed

    def _check(
        self,
        directory: Path,
        name: str,
        st: os.stat_result,
        entries: list[os.DirEntry[str]],
        fresh: bool,
    ) -> bool:
        """Look at the log file DIR/NAME: unchanged, grown, truncated, or another file."""
        key = directory / name
        ident = (st.st_dev, st.st_ino)
        f = self._live.get(key)
        if f is not None and f.ident == ident:
            if st.st_size >= f.offset and _head_ok(f):
                _extend_head(f)
                return False
            self._truncated(f, directory)
            return True
        if f is not None:
            self._demote(f, entries)
        # A rotated file moved back to its name continues where it was.
        for r in self._rotated:
            if r.ident == ident and r.name == name:
                self._rotated.remove(r)
                r.rotated, r.path = False, key
                self._live[key] = r
                log.info(f"{self.label}: file is back", file=str(key), offset=r.offset)
                return True
        done = self._closed.pop(ident, None)
        back = self._reopen(key, done) if done is not None and done.name == name else None
        if back is not None:
            back.rotated = False
            self._live[key] = back
            log.info(f"{self.label}: file is back", file=str(key), offset=back.offset)
            return True
        try:
            fd = os.open(key, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False  # gone again; the next look sees it
        opened = os.fstat(fd)
        f = _File(name, key, opened.st_dev, opened.st_ino, secrets.token_hex(8), fd)
        if fresh and self.config.start_at == "end":
            f.offset, f.line = _last_line_end(fd, opened.st_size)
            _extend_head(f)
        self._live[key] = f
        log.info(f"{self.label}: new file", file=str(key), offset=f.offset)
        return True

    def _demote(self, f: _File, entries: list[os.DirEntry[str]]) -> None:
        """``f`` is no longer at its name: keep reading it through the open descriptor."""
        del self._live[f.path]
        old = f.path
        for entry in entries:
            if entry.inode() == f.ino and entry.name != f.name:
                f.path = Path(entry.path)
                break
        f.rotated, f.idle_since = True, time.monotonic()
        self._rotated.append(f)
        log.info(
            f"{self.label}: file rotated or removed; reading the rest of it",
            file=str(old),
            now_at=str(f.path) if f.path != old else None,
            offset=f.offset,
        )

    def _truncated(self, f: _File, directory: Path) -> None:
        """Same file, but shorter or rewritten: read it from the start again, and what
        was not read before from a copy, if there is one."""
        copy, copied = self._open_copy(directory, _saved(f))
        if copy is not None:
            copy.rotated, copy.idle_since = True, time.monotonic()
            self._rotated.append(copy)
            log.info(
                f"{self.label}: file truncated; reading its rest from the copy",
                file=str(f.path),
                copy=str(copy.path),
                offset=f.offset,
            )
        elif f.size_seen > f.offset and not copied:
            log.warning(
                f"{self.label}: file truncated before it was read, and no copy of it found",
                file=str(f.path),
                unread_bytes=f.size_seen - f.offset,
                from_line=f.line + 1,
            )
        else:
            log.info(f"{self.label}: file truncated; reading it from the start", file=str(f.path))
        f.uid = secrets.token_hex(8)
        f.offset = f.line = 0
        f.head, f.skipping, f.size_seen = b"", False, -1

    def _rotated_copy(self, entry: os.DirEntry[str], base: str, fresh: bool) -> bool:
        """Look at a rotated copy of the log ``base`` (``rtc_stats.jsonl.1``)."""
        if not entry.is_file():
            return False
        st = entry.stat()
        ident = (st.st_dev, st.st_ino)
        if st.st_size == 0 or any(f.ident == ident for f in self._open_files()):
            return False
        path = Path(entry.path)
        done = self._closed.get(ident)
        if done is not None:
            moved = done.path != entry.path
            done.path = entry.path
            if st.st_size == done.offset:
                return moved
            if done.copy:
                done.offset = st.st_size  # grew while being copied
                return True
            f = self._reopen(path, done)
            del self._closed[ident]
            if f is not None:  # written into after it was closed
                f.rotated, f.idle_since = True, time.monotonic()
                self._rotated.append(f)
                log.info(f"{self.label}: rotated file grew; reading it", file=entry.path)
                return True
            # the inode now holds another file: one not read yet
        head = _file_head(path)
        if fresh:
            uid = secrets.token_hex(8)
            self._closed[ident] = _Saved(base, entry.path, *ident, uid, st.st_size, 0, head)
            log.info(
                f"{self.label}: rotated file there before rtclake followed the directory;"
                " not read (`rtclake import` loads it)",
                file=entry.path,
            )
            return True
        for f in self._open_files():
            if f.name == base and f.head and head and _same_start(head, f.head):
                # A copy of a file being read (perhaps still being written): read through
                # that file, or from this copy once that file is truncated (copytruncate).
                self._closed[ident] = _saved(
                    f, path=entry.path, dev=ident[0], ino=ident[1], offset=st.st_size, copy=True
                )
                return True
        # Rotated before the tail saw it (several rotations between two looks, or while
        # rtclake was stopped): read all of it.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        opened = os.fstat(fd)
        f = _File(base, path, opened.st_dev, opened.st_ino, secrets.token_hex(8), fd)
        f.rotated, f.idle_since = True, time.monotonic()
        self._rotated.append(f)
        log.info(f"{self.label}: rotated file not read before; reading it", file=entry.path)
        return True

    # -- reading -----------------------------------------------------------------------

    def _read_all(self) -> list[_Chunk]:
        now = time.monotonic()
        chunks = []
        for f in self._open_files():
            try:
                chunk = self._read(f, now)
            except OSError as exc:  # one file's trouble must not stop the others
                log.error(f"{self.label}: cannot read file", file=str(f.path), error=str(exc))
                continue
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def _read(self, f: _File, now: float) -> _Chunk | None:
        """The next complete lines of ``f`` (at most ``max_batch_bytes``), validated."""
        assert f.fd is not None
        cfg = self.config
        _extend_head(f)
        size = os.fstat(f.fd).st_size
        if size != f.size_seen:
            f.size_seen, f.idle_since = size, now
        idle = f.rotated and now - f.idle_since >= cfg.rotate_wait
        available = size - f.offset
        if available <= 0:
            return _Chunk(f, [], f.offset, f.line, f.skipping, close=True) if idle else None
        want = min(available, cfg.max_batch_bytes)
        data = os.pread(f.fd, want, f.offset)
        cut = data.find(b"\n") + 1 if f.skipping else data.rfind(b"\n") + 1
        if not cut and len(data) < available and not f.skipping:
            # One line longer than a batch: read it whole (up to the line limit).
            data = os.pread(f.fd, min(available, cfg.max_line_bytes + 1), f.offset)
            cut = data.find(b"\n") + 1
        # What was read is what the file held at ``f.offset`` only if the file was not
        # truncated and rewritten meanwhile (copytruncate): its start tells.
        if not _head_ok(f):
            return None  # the next look at the directory sees the truncation
        chunk = self._take(f, data, cut, available, size, want, idle)
        if chunk is not None and len(f.head) == f.offset < HEAD_BYTES:
            # the start of the file, as stored: recognises it later (rewrite, copy)
            chunk.head = f.head + data[: chunk.offset - f.offset][: HEAD_BYTES - f.offset]
        return chunk

    def _take(
        self, f: _File, data: bytes, cut: int, available: int, size: int, want: int, idle: bool
    ) -> _Chunk | None:
        """The chunk of ``data`` (read at ``f.offset``; ``cut``: after its last usable
        newline) to store, or None to wait for more."""
        cfg = self.config
        if f.skipping:
            if not cut:
                return _Chunk(f, [], f.offset + len(data), f.line, True, more=want < available)
            log.warning(f"{self.label}: over-long line ends", file=str(f.path), line=f.line + 1)
            return _Chunk(f, [], f.offset + cut, f.line + 1, False, more=True)
        if not cut and len(data) > cfg.max_line_bytes:
            self._bad(f, f.line + 1, "line_too_long", f"longer than {cfg.max_line_bytes} bytes")
            return _Chunk(f, [], f.offset + len(data), f.line, True, more=True)
        if not cut:
            if not (idle and len(data) == available):
                return None  # a line still being written
            cut = len(data)  # a rotated file's last line, never ended: take it as it is
        entries, records, lines = self._entries(f, data[:cut])
        new_offset = f.offset + cut
        close = idle and new_offset == size
        more = want < available or len(data) > want
        return _Chunk(f, entries, new_offset, f.line + lines, False, records, more, close)

    def _entries(self, f: _File, body: bytes) -> tuple[list[tuple[EntryHeader, bytes]], int, int]:
        """Spool entries of the good lines of ``body``; the number of good lines, of lines.

        Lines with a time (or of a table with an identity) go into one entry: their
        record ids come from their content. Each line without a time is an entry of its
        own whose idempotency key is its place in the file (``UID:BYTE_OFFSET``), so its
        record id is the same however the file is cut into reads (after a crash too).

        A line longer than ``max_line_bytes`` is a bad line here too: a read holds up to
        ``max_batch_bytes``, so a line under that but over the limit arrives whole, with
        its newline, and only its length tells (``_take`` catches those longer than a read).
        """
        table = self.tables[self.table_for(f.name) or ""]
        max_line = self.config.max_line_bytes
        lines = body.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the final newline
        try:
            body.decode("utf-8")
            utf8_ok = True
        except UnicodeDecodeError:
            utf8_ok = False
        check = table.checker()
        timed: list[bytes] = []
        timed_extra: list[int] = []
        untimed: list[tuple[int, bool, bytes]] = []  # (offset, has extra, line)
        bad = 0

        def reject(number: int, reason: str, error: str) -> None:
            nonlocal bad
            bad += 1
            if bad <= _MAX_LOGGED_BAD_LINES:
                self._bad(f, number, reason, error)
            else:
                self.metrics.rejected.labels(self.source, reason).inc()

        position = f.offset
        for number, line in enumerate(lines, f.line + 1):
            at, position = position, position + len(line) + 1
            if len(line) > max_line:
                reject(number, "line_too_long", f"longer than {max_line} bytes")
                continue
            if not line.strip():
                continue
            try:
                if not utf8_ok:
                    line.decode("utf-8")
                has_extra = check(line)
                has_time = bool(table.identity) or _has_time(line)
            except (UnicodeDecodeError, msgspec.MsgspecError, RecursionError) as exc:
                reject(number, reason_of(exc), str(exc)[:300])
                continue
            if not has_time:
                untimed.append((at, has_extra, line))
                continue
            if has_extra:
                timed_extra.append(len(timed))
            timed.append(line)
        if bad > _MAX_LOGGED_BAD_LINES:
            log.warning(
                f"{self.label}: more bad lines skipped",
                file=str(f.path),
                count=bad - _MAX_LOGGED_BAD_LINES,
                up_to_line=f.line + len(lines),
            )
        received = time.time_ns() // 1000

        def header(records: int, extra: list[int], idem: str | None = None) -> EntryHeader:
            return make_entry(
                self.source, f.stream, table, records, extra=extra, idem=idem, received_us=received
            )

        entries = [(header(len(timed), timed_extra), b"\n".join(timed))] if timed else []
        for at, has_extra, line in untimed:
            entries.append((header(1, [0] if has_extra else [], f"{f.uid}:{at}"), line))
        return entries, len(timed) + len(untimed), len(lines)

    def _bad(self, f: _File, line: int, reason: str, error: str) -> None:
        self.metrics.rejected.labels(self.source, reason).inc()
        log.warning(
            f"{self.label}: bad line skipped",
            file=str(f.path),
            line=line,
            reason=reason,
            error=error,
        )


def _head_ok(f: _File) -> bool:
    """True if the file still starts with the bytes it started with when read."""
    if not f.head:
        return True
    assert f.fd is not None
    return os.pread(f.fd, len(f.head), 0) == f.head


def _extend_head(f: _File) -> None:
    """Remember more of the file's start (up to what was stored and HEAD_BYTES), if the
    file still starts as remembered (else it was rewritten: the next look tells)."""
    want = min(f.offset, HEAD_BYTES)
    if len(f.head) < want and f.fd is not None:
        data = os.pread(f.fd, want, 0)
        if data.startswith(f.head):
            f.head = data


def _file_head(path: Path) -> bytes:
    """The first bytes of ``path`` (up to HEAD_BYTES; empty if unreadable)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except OSError:
        return b""


def _same_start(a: bytes, b: bytes) -> bool:
    """True if one of two file starts begins with the other (a copy, perhaps partial)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _last_line_end(fd: int, size: int) -> tuple[int, int]:
    """The offset after the last newline before ``size``, and the lines before it."""
    offset = lines = 0
    position = 0
    while position < size:
        data = os.pread(fd, min(8 * MiB, size - position), position)
        if not data:
            break
        lines += data.count(b"\n")
        last = data.rfind(b"\n")
        if last >= 0:
            offset = position + last + 1
        position += len(data)
    return offset, lines


def _listdir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except OSError:
        return []


def _close(f: _File) -> None:
    if f.fd is not None:
        with contextlib.suppress(OSError):
            os.close(f.fd)
        f.fd = None
