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
import time

from rtclake.metrics import Metrics
from rtclake.router import Router
from rtclake.sources.base import Records, split_lines, split_records
from rtclake.spool import EntryHeader, Spool
from rtclake.tables import Table


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


class Intake:
    """Routes, validates, spools and counts what sources receive."""

    def __init__(self, spool: Spool, metrics: Metrics, router: Router | None = None) -> None:
        self.spool = spool
        self.metrics = metrics
        self.router = router

    def table_for(self, stream: str) -> Table:
        """The table the router sends ``stream`` to (raises InputError for a bad name)."""
        if self.router is None:
            raise RuntimeError("this intake has no router: name the table")
        return self.router.table_for(stream)

    @staticmethod
    def validate(body: bytes, table: Table, *, lines: bool = False) -> Records:
        """``body`` (one object, an array or JSON Lines; with ``lines``, JSON Lines only)
        checked against ``table``; raises InputError naming the line at fault."""
        return split_lines(body, table) if lines else split_records(body, table)

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
    ) -> int:
        """Spool validated ``records`` and return their number once they are durable.

        Raises :class:`~rtclake.errors.SpoolUnavailable` (full, disk full, failing) or
        :class:`~rtclake.errors.PayloadTooLarge` (larger than the whole spool)."""
        if not records.n:
            return 0
        header = make_entry(
            source, stream, table, records.n, extra=records.extra, idem=idem, type=type,
            received_us=received_us,
        )  # fmt: skip
        await self.spool.append(header, records.body)
        self.metrics.received.labels(source).inc(records.n)
        return records.n

    def take_nowait(self, header: EntryHeader, body: bytes) -> asyncio.Future[None]:
        """Append a built entry (see :func:`make_entry`); the future completes once it is
        durable, and its records are counted then. For sources that keep many entries
        in flight (the log tail)."""
        future = self.spool.append_nowait(header, body)
        counter = self.metrics.received.labels(header.source)

        def count(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                counter.inc(header.records)

        future.add_done_callback(count)
        return future
