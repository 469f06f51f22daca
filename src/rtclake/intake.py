"""Intake: where every source hands over what it received.

A source reads its transport (a request, a file, a poll) and hands the bytes or records
to the :class:`Intake`. The intake picks the table (the router, by stream, unless the
source names it), validates the records against the table (one reason format: an
:class:`~rtclake.errors.InputError`), builds the spool entry, appends it, and counts the
records received once they are durable. A source acknowledges only after
:meth:`Intake.take` returned (or the future of :meth:`Intake.take_nowait` completed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import structlog

from rtclake.errors import InputError
from rtclake.messages import PAYLOAD, RESERVED, Reply
from rtclake.metrics import Metrics
from rtclake.records import record_id
from rtclake.router import Router
from rtclake.sources.base import Records, check_utf8, split_lines, split_records
from rtclake.spool import Entry, EntryHeader, Spool
from rtclake.tables import TIME_KEYS, Table, TableRegistry

if TYPE_CHECKING:
    from rtclake.brokers import Message
    from rtclake.processors.base import Processor
    from rtclake.processors.chain import Chain

log = structlog.get_logger(__name__)


def make_entry(
    source: str,
    stream: str,
    table: Table,
    records: int,
    *,
    extra: list[int] | None = None,
    idem: str | None = None,
    type: str | None = None,
    received_us: int | None = None,
) -> EntryHeader:
    """The spool entry header of ``records`` records of ``table`` (the one place that
    builds it: sources through :class:`Intake`, imports for the converter)."""
    return EntryHeader(
        table=table.name,
        source=source,
        stream=stream,
        kind=table.kind,
        received_us=time.time_ns() // 1000 if received_us is None else received_us,
        records=records,
        type=type,
        idem=idem,
        extra=extra if table.sparse_extra else None,
    )


class Taken(NamedTuple):
    """What :meth:`Intake.take` did: records made durable, and the reply for the caller
    that waits: an intake-stage processor's, or the brokers' (``replies``: the one chosen
    for each record, in order; ``reply``: the first there is)."""

    records: int
    reply: Reply | None = None
    replies: tuple[Reply | None, ...] = ()
    record_ids: tuple[str | None, ...] = ()


class Intake:
    """Routes, validates, runs the intake-stage processors, spools and counts what
    sources receive."""

    def __init__(
        self,
        spool: Spool,
        metrics: Metrics,
        router: Router | None = None,
        *,
        tables: TableRegistry | None = None,
        chain: Chain | None = None,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.router = router
        self.tables = tables
        self.chain = chain
        self._counters: dict[str, Any] = {}
        # intake-stage processing, off the loop's default executor (the writer's)
        self._processing = ThreadPoolExecutor(4, thread_name_prefix="rtclake-intake")

    def table_for(self, stream: str) -> Table:
        """The table the router sends ``stream`` to (raises InputError for a bad name)."""
        if self.router is None:
            raise RuntimeError("this intake has no router: name the table")
        return self.router.table_for(stream)

    @staticmethod
    def validate(body: bytes, table: Table, *, lines: bool = False) -> Records:
        """``body`` (one object, an array or JSON Lines; with ``lines``, JSON Lines only)
        checked against ``table``; raises InputError naming the line at fault."""
        if lines:
            check_utf8(body)  # split_records checks it; JSON Lines from a source must too
            return split_lines(body, table)
        return split_records(body, table)

    async def take(
        self,
        source: str,
        stream: str,
        table: Table,
        records: Records,
        *,
        idem: str | None = None,
        type: str | None = None,
        received_us: int | None = None,
        within: float | None = None,
        ids: bool = False,
    ) -> Taken:
        """Run the intake-stage processors over validated ``records``, spool what they
        return (and emit), and return once it is durable; then give the records to the
        brokers that match them (:mod:`rtclake.brokers`), for at most their timeout or
        ``within`` seconds from the call (a caller's deadline: the time the spool and the
        intake-stage processors took counts), and spool what they emit. With ``ids``
        (or brokers), :attr:`Taken.record_ids` holds the lake's id of each record.

        Raises :class:`~rtclake.errors.SpoolUnavailable` (full, disk full, failing) or
        :class:`~rtclake.errors.PayloadTooLarge` (larger than the whole spool)."""
        if not records.n:
            return Taken(0)
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        lines = records.body.count(b"\n") + 1
        if lines != records.n:
            # A source's bug (a record over several lines) must not become an
            # acknowledgement of what the writer would then set aside as corrupt.
            raise RuntimeError(
                f"source {source}: {records.n} records handed over in {lines} lines; nothing stored"
            )
        if received_us is None:
            received_us = time.time_ns() // 1000
        emitted: list[tuple[EntryHeader, bytes]] = []
        reply = None
        processors = self.chain.active("intake", table.name, source) if self.chain else ()
        if processors:
            from rtclake.processors.base import Context

            assert self.chain is not None
            ctx = Context(table.name, source, stream, "intake")
            input_key = f"{source}/{idem or hashlib.md5(records.body).hexdigest()}"
            done = await asyncio.get_running_loop().run_in_executor(
                self._processing, self.chain.run, processors, records, table, ctx
            )
            records, reply = done.records, done.reply
            emitted = self.emitted_entries(done.emitted, stream, received_us, idem=input_key)
        # What processors emitted first: if the records' own append then fails, the
        # sender's retry emits the same records again, with the same ids (input_key).
        for header, body in emitted:
            await self.spool.append(header, body)
            self._received(header.source).inc(header.records)
        if not records.n:
            return Taken(0, Reply.of(reply) if reply is not None else None)
        header = make_entry(
            source, stream, table, records.n, extra=records.extra, idem=idem, type=type,
            received_us=received_us,
        )  # fmt: skip
        durable = self.spool.append_nowait(header, records.body)
        position = self.spool.last_position
        await durable
        self._received(source).inc(records.n)
        own = Reply.of(reply) if reply is not None else None
        brokers = self.chain.active("broker", table.name, source) if self.chain else ()
        if not brokers and not ids:
            return Taken(records.n, own)
        # Store-stage processors give the records of an entry without a key its place
        # as key (Intake.process_entries): the ids follow that rule then.
        keyed = idem or (
            position if self.chain and self.chain.active("store", table.name, source) else None
        )
        found = record_ids(source, stream, table, records.body, idem=keyed, position=position)
        if not brokers:
            return Taken(records.n, own, record_ids=tuple(found))
        left = None if deadline is None else max(0.0, deadline - loop.time())
        return await self._brokers(
            brokers, source, stream, table, records, found, position, received_us, own, left
        )

    async def _brokers(
        self,
        brokers: Sequence[Processor],
        source: str,
        stream: str,
        table: Table,
        records: Records,
        ids: list[str | None],
        position: str,
        received_us: int,
        own: Reply | None,
        within: float | None,
    ) -> Taken:
        """The brokers' part of :meth:`take`, on records already durable."""
        from rtclake.brokers import Broker

        assert self.chain is not None and self.chain.brokers is not None
        received_at = dt.datetime.fromtimestamp(received_us / 1e6, dt.UTC)
        messages = [
            _message(line, source=source, stream=stream, table=table.name,
                     record_id=record_id, received_at=received_at)
            for line, record_id in zip(records.body.split(b"\n"), ids, strict=True)
        ]  # fmt: skip
        matched = [b for b in brokers if isinstance(b, Broker)]
        outcomes = await self.chain.brokers.run(
            matched, messages, within=within, refusal=self._emit_refusal
        )
        for number, (message, outcome) in enumerate(zip(messages, outcomes, strict=True), 1):
            if not outcome.emitted:
                continue
            # Ids of what a broker emits come from the record's (its id, or its place).
            key = message.record_id or f"{position}:{number}"
            for header, body in self.emitted_entries(
                outcome.emitted, stream, received_us, idem=key
            ):
                await self.spool.append(header, body)
                self._received(header.source).inc(header.records)
        replies = tuple(o.reply for o in outcomes)
        chosen = own or next((r for r in replies if r is not None), None)
        return Taken(records.n, chosen, replies, tuple(ids))

    def _received(self, source: str) -> Any:
        """The received counter of ``source`` (labels looked up once: it takes a lock)."""
        counter = self._counters.get(source)
        if counter is None:
            counter = self._counters[source] = self.metrics.received.labels(source)
        return counter

    def close(self) -> None:
        """End the threads of intake-stage processing."""
        self._processing.shutdown(wait=False, cancel_futures=True)

    def _emit_refusal(
        self, message: Message, table_name: str | None, to_stream: str | None, record: Any
    ) -> str | None:
        """Why a record a broker emitted for ``message`` cannot be stored, or None."""
        try:
            self._emitted_line(table_name, to_stream or message.stream, record)
        except _REFUSED as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _emitted_line(
        self, table_name: str | None, stream: str, record: dict[str, Any]
    ) -> tuple[Table, bytes]:
        """The table an emitted record goes to (the one named, or the router's for
        ``stream``) and its JSON line; raises one of ``_REFUSED`` if it cannot be stored."""
        if table_name is None:
            table = self.table_for(stream)
        elif self.tables is not None and table_name in self.tables:
            table = self.tables[table_name]
        else:
            raise InputError("unknown_table", f"no table {table_name!r}")
        line = msgspec.json.encode(record)
        split_lines(line, table)
        return table, line

    def emitted_entries(
        self,
        emitted: Sequence[tuple[str, str | None, str | None, dict[str, Any]]],
        stream: str,
        received_us: int,
        *,
        idem: str | None = None,
    ) -> list[tuple[EntryHeader, bytes]]:
        """Spool entries of records processors emitted, one per processor and table: the
        table named, or the router's for the stream; each record validated (an invalid
        one is the processor's fault: counted, logged, left out)."""
        groups: dict[tuple[str, str, str], list[bytes]] = {}
        for processor, table_name, to_stream, record in emitted:
            target = to_stream or stream
            try:
                table, line = self._emitted_line(table_name, target, record)
            except _REFUSED as exc:
                if self.chain is not None:
                    self.chain.errors.labels(processor, "invalid_emit").inc()
                log.error("processor emitted a record its table refuses; left out",
                          processor=processor, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                continue
            groups.setdefault((processor, table.name, target), []).append(line)
        entries = []
        for (processor, table_name, target), lines in groups.items():
            assert self.tables is not None
            table = self.tables[table_name]
            body = b"\n".join(lines)
            checked = split_lines(body, table)
            entries.append((
                make_entry(processor, target, table, checked.n, extra=checked.extra,
                           idem=f"{idem}/{processor}/{table_name}" if idem else None,
                           received_us=received_us),
                checked.body,
            ))  # fmt: skip
        return entries

    def process_entries(self, entries: list[Entry], run: str, segment: int) -> list[Entry]:
        """Run the store-stage processors over a spool segment's ``entries`` (on the
        writer's thread): changed entries keep their place, emitted records become
        entries after the last one, so a replay gives them the same record ids."""
        chain = self.chain
        if chain is None or not chain.has("store") or self.tables is None:
            return entries
        from rtclake.processors.base import Context

        out: list[Entry] = []
        added: list[tuple[EntryHeader, bytes]] = []
        for entry in entries:
            h = entry.header
            processors = chain.active("store", h.table, h.source)
            if not processors or h.table not in self.tables:
                out.append(entry)
                continue
            table = self.tables[h.table]
            ctx = Context(h.table, h.source, h.stream, "store")
            records = Records(entry.body, h.records, h.extra)
            done = chain.run(processors, records, table, ctx)
            # Ids by place (or the sender's key), not by text: the same on a replay
            # whatever the processors made of the records this time.
            idem = h.idem or f"{run}:{segment}:{entry.index}"
            header = make_entry(
                h.source, h.stream, table, done.records.n, extra=done.records.extra,
                idem=idem, type=h.type, received_us=h.received_us,
            )  # fmt: skip
            if done.records.n:
                out.append(Entry(header, done.records.body, entry.index))
            added += self.emitted_entries(done.emitted, h.stream, h.received_us, idem=idem)
        if added:
            next_index = max(e.index for e in entries) + 1
            out += [Entry(h, body, next_index + n) for n, (h, body) in enumerate(added)]
        return out

    def take_nowait(self, header: EntryHeader, body: bytes) -> asyncio.Future[None]:
        """Append a built entry (see :func:`make_entry`); the future completes once it is
        durable, and its records are counted then. For sources that keep many entries
        in flight (the log tail). With intake-stage processors for its table and source,
        the entry goes through :meth:`take` instead."""
        chain = self.chain
        if chain is not None and (
            chain.active("intake", header.table, header.source)
            or chain.active("broker", header.table, header.source)
        ):
            assert self.tables is not None
            records = Records(body, header.records, header.extra)
            table = self.tables[header.table]
            taken = self.take(
                header.source, header.stream, table, records, idem=header.idem,
                type=header.type, received_us=header.received_us,
            )  # fmt: skip
            return asyncio.ensure_future(_none(taken))
        future = self.spool.append_nowait(header, body)
        counter = self._received(header.source)

        def count(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                counter.inc(header.records)

        future.add_done_callback(count)
        return future


# What refusing an emitted record raises (encoding it, routing it, validating it; a
# record nested deeper than the encoder goes raises RecursionError).
_REFUSED = (TypeError, ValueError, msgspec.EncodeError, InputError, RecursionError)


async def _none(taken: Any) -> None:
    await taken


_decode = msgspec.json.Decoder(dict[str, Any]).decode
_decode_keys = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


# The keys of a record's own time; the rest of a line is skipped, not built.
_NULL = msgspec.Raw(b"null")
_OwnTime = msgspec.defstruct("_OwnTime", [(key, msgspec.Raw, _NULL) for key in TIME_KEYS])
_decode_times = msgspec.json.Decoder(_OwnTime).decode


def _own_time(line: bytes) -> bool:
    """Whether a validated line carries its own time (a time key that is not null), as
    the writer's parser decides."""
    found = _decode_times(line)
    return any(bytes(getattr(found, key)) != b"null" for key in TIME_KEYS)


def _message(line: bytes, **context: Any) -> Any:
    """The broker's :class:`~rtclake.brokers.Message` of a stored line. A line Python
    cannot hold as values (a number beyond a float's range) is given as its bytes."""
    from rtclake.brokers import Message

    try:
        record = _decode(line)
    except (msgspec.DecodeError, RecursionError):
        record = _as_bytes(line)
    return Message.of(record, **context)


def _as_bytes(line: bytes) -> dict[str, Any]:
    """A line Python cannot hold as values, for a broker: its own keys as the payload's
    bytes, what the transport said (topic, content type, collector, metadata) as values,
    so a broker still matches it by topic or content type."""
    try:
        keys = _decode_keys(line)
    except (msgspec.DecodeError, RecursionError):
        return {PAYLOAD: base64.b64encode(line).decode("ascii")}
    record: dict[str, Any] = {}
    for key in RESERVED:
        if key in keys:
            with contextlib.suppress(msgspec.DecodeError, RecursionError):
                record[key] = msgspec.json.decode(keys[key])
    if not isinstance(record.get(PAYLOAD), str):
        own = {k: v for k, v in keys.items() if k not in RESERVED}
        record[PAYLOAD] = base64.b64encode(msgspec.json.encode(own)).decode("ascii")
    return record


def record_ids(
    source: str,
    stream: str,
    table: Table,
    body: bytes,
    *,
    idem: str | None,
    position: str,
) -> list[str | None]:
    """The lake's record id of each line of a spool entry, by the writer's rule
    (:meth:`rtclake.tables.Table.record_id_sql`): ``position`` is the entry's place in the
    spool (``RUN:SEGMENT:ENTRY``). None for a table whose ids come from its columns."""
    lines = body.split(b"\n")
    if table.identity:
        return [None] * len(lines)
    if idem is not None:
        return [record_id(source, stream, f"{idem}:{n}") for n in range(1, len(lines) + 1)]
    out: list[str | None] = []
    for n, line in enumerate(lines, 1):
        if _own_time(line):
            out.append(record_id(source, stream, line.decode().strip(" ")))
        else:
            out.append(record_id(source, stream, f"{position}:{n}"))
    return out
