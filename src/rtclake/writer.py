"""The writer: drains sealed spool segments, in order, into every sink.

One segment is one batch. Its entries pass the store-stage processors (if any), are
grouped by table, turned into Arrow by the :class:`~rtclake.convert.Converter` (the C++
parser, the envelope in Arrow, record ids in DuckDB), and handed through the
:class:`~rtclake.delivery.Delivery` to each sink that has not yet confirmed the segment.
A sink's confirmation is recorded in the spool; once every sink confirmed, the segment
is deleted. A failing sink is retried with exponential backoff while the segment stays
on disk, so an outage loses nothing. Segments are taken in order, so the ones behind it
wait, for every sink (the lake's too), until the sink takes it or gives up on its
destination (``give_up_after``: its records go to ``dead_letters``); the spool fills
meanwhile, and ingest answers 503 once it is full. A segment that cannot be converted,
or that a sink refuses for its data rather than for an outage (any error but
``OSError`` and :class:`~rtclake.errors.SinkError`), is tried five times, then moved to
``spool/quarantine/`` (counted and logged), so one poisoned batch cannot hold up the
batches behind it; ``rtclake import`` stores it from there once its cause is fixed
(:meth:`rtclake.importer.Importer.import_segment`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import structlog

from rtclake import faults
from rtclake.convert import Converter
from rtclake.delivery import Delivery
from rtclake.derive import Derivations, Pending
from rtclake.memory import release_memory
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, group_name
from rtclake.spool import Entry, Segment, Spool
from rtclake.tables import TableRegistry

T = TypeVar("T")

#: When segments wait (the writer is behind), up to this many of one run, of at most
#: GROUP_RECORDS records and GROUP_BYTES together, go to the sinks as one group: the lake
#: stores a group in one commit, whose fixed cost (reading the catalog, a file per
#: table, the commit) is then paid once.
GROUP_SEGMENTS = 8
GROUP_RECORDS = 200_000
GROUP_BYTES = 32 * 1024 * 1024

log = structlog.get_logger(__name__)


class Writer:
    """Runs on the event loop; converts on a thread of the loop's executor and delivers
    through ``delivery`` (which the caller owns: it starts it here, closes it itself)."""

    def __init__(
        self,
        spool: Spool,
        delivery: Delivery,
        tables: TableRegistry,
        metrics: Metrics,
        *,
        node: str,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        maintenance_interval: float = 300.0,
        process: Callable[[list[Entry], str, int], list[Entry]] | None = None,
        derived_state: Path | None = None,
    ) -> None:
        self.spool = spool
        self.delivery = delivery
        self.metrics = metrics
        self.node = node
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.maintenance_interval = maintenance_interval
        self.process = process  # the store-stage processors (Intake.process_entries)
        self._converter = Converter(tables, record_ids=delivery.needs_record_id)
        # derived tables (rates from counters), their state kept in derived_state
        self.derivations = Derivations(tables.derivations, derived_state)
        self._task: asyncio.Task[None] | None = None
        self._held: collections.deque[Segment] = collections.deque()  # taken, not stored
        self._busy = False
        self._writing = False  # a call on a thread under way (see _off_loop)
        self._data_failures: dict[Path, int] = {}
        self.max_data_failures = 5
        self._last_maintenance = time.monotonic()

    async def start(self) -> None:
        start = functools.partial(self.delivery.start, refuse_misconfigured=True)
        await asyncio.get_running_loop().run_in_executor(None, start)
        self._task = asyncio.create_task(self._run(), name="writer")

    @property
    def idle(self) -> bool:
        return not self._busy and not self._held and self.spool.sealed_waiting() == 0

    async def drain(self, timeout: float) -> bool:
        """Cut the open segment and wait until the writer has stored everything."""
        self.spool.cut()
        await self.spool.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle and self.spool.pending_records == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        # A batch being written on the executor finishes first: its thread cannot be
        # cancelled, and it still uses the converter and the sinks.
        # Only that: a batch waiting out its retry delay (a sink down) stops at once and
        # is delivered again at the next start.
        deadline = time.monotonic() + 60
        while self._writing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._converter.close()

    async def _run(self) -> None:
        while True:
            seg = self._held.popleft() if self._held else await self.spool.next_sealed()
            self._busy = True
            delay = self.retry_initial
            try:
                work = self.delivery.executor  # convert and deliver on the sinks' thread
                group = self._group(seg)
                if len(group) > 1 and not await self._off_loop(work, self._deliver_group, group):
                    # one at a time: a failure is then retried or set aside alone (those
                    # the group stored before it failed are gone from the spool)
                    group = [s for s in group if s.path.exists()]
                    self._held.extendleft(reversed(group[1:]))
                    seg = group[0] if group else seg
                elif len(group) > 1:
                    group = []
                while group and not await self._off_loop(work, self._deliver_safely, seg):
                    if self._data_failures.get(seg.path, 0) >= self.max_data_failures:
                        await self._off_loop(None, self._quarantine, seg)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
                    self._last_maintenance = time.monotonic()
                    await self._off_loop(None, self.delivery.maintain)
            finally:
                self._busy = False

    def _group(self, seg: Segment) -> list[Segment]:
        """``seg`` and the segments waiting after it that can go with it: of its run,
        confirmed by the same sinks (a group is delivered as one), within the budget
        (GROUP_SEGMENTS, GROUP_RECORDS, GROUP_BYTES)."""
        group = [seg]
        acked = Spool.acked_sinks(seg)
        records, size = seg.records, seg.size
        while len(group) < GROUP_SEGMENTS:
            more = self._held.popleft() if self._held else self.spool.next_sealed_nowait()
            if more is None:
                break
            if (
                more.run != seg.run
                or records + more.records > GROUP_RECORDS
                or size + more.size > GROUP_BYTES
                or Spool.acked_sinks(more) != acked
            ):
                self._held.appendleft(more)
                break
            group.append(more)
            records, size = records + more.records, size + more.size
        return group

    async def _off_loop(self, executor: Any, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on ``executor``, with :attr:`_writing` set meanwhile: a
        thread cannot be cancelled, so :meth:`stop` waits for it."""
        self._writing = True
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        finally:
            self._writing = False

    def _deliver_safely(self, seg: Segment) -> bool:
        """:meth:`_deliver`, where a failure of the spool's own disk (reading the segment,
        recording a confirmation, deleting it) means "try again later", never the end of
        the writer."""
        try:
            return self._deliver(seg)
        except OSError as exc:
            self.metrics.writer_errors.labels("spool").inc()
            log.error(
                "writer: spool I/O failed; batch kept",
                segment=seg.path.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False

    def _convert(self, seg: Segment, entries: list[Entry]) -> dict[str, pa.Table]:
        """A segment's entries through the store-stage processors, as Arrow tables."""
        if self.process is not None:
            entries = self.process(entries, seg.run, seg.seq)
        return self._converter.convert(seg.run, seg.seq, entries)

    def _deliver(self, seg: Segment) -> bool:
        """Write one segment to every sink that lacks it; True when all have it."""
        entries = Spool.read(seg)  # an OSError here is the disk's, not the segment's
        faults.check("writer.after_read")
        try:
            tables = self._convert(seg, entries)
        except Exception as exc:  # retried, then set aside; never dropped
            self.metrics.writer_errors.labels("convert").inc()
            self._data_failures[seg.path] = self._data_failures.get(seg.path, 0) + 1
            log.error(
                "writer: cannot convert segment",
                segment=seg.path.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        faults.check("writer.after_convert")
        derived, pending = self.derivations.derive(tables)
        batch = Batch(self.node, seg.run, seg.seq, {**tables, **derived})
        outcome = self.delivery.deliver(
            batch, Spool.acked_sinks(seg), lambda sink: self.spool.ack(seg, sink)
        )
        if outcome.data_error:
            # Not an outage but the batch's data (a value a sink cannot take): retried,
            # then set aside, so it cannot hold up every later batch.
            self._data_failures[seg.path] = self._data_failures.get(seg.path, 0) + 1
        if outcome.done:
            self.spool.remove(seg)
            # after the removal: a crash before it replays the batch with the state it
            # was derived from (the same rows again); a crash after it only makes the
            # next batch's first interval per stream span two reports
            self.derivations.commit(pending)
            faults.check("writer.after_remove")
            log.info(
                "writer: batch stored",
                batch=batch.name,
                rows={name: table.num_rows for name, table in batch.tables.items()},
            )
        del batch, tables, entries
        release_memory()
        return outcome.done

    def _deliver_group(self, segs: list[Segment]) -> bool:
        """Several segments to every sink at once (:meth:`Delivery.deliver` of a group);
        True when all have them. Anything that fails sends them one at a time again,
        where failures are counted and retried (False)."""
        try:
            batches: list[Batch] = []
            pending: Pending | None = None
            for seg in segs:
                entries = Spool.read(seg)
                faults.check("writer.after_read")
                tables = self._convert(seg, entries)
                faults.check("writer.after_convert")
                derived, pending = self.derivations.derive(tables, pending)
                batches.append(Batch(self.node, seg.run, seg.seq, {**tables, **derived}))
                del entries, tables, derived
            acked = Spool.acked_sinks(segs[0])

            def confirm(sink: str) -> None:
                for seg in segs:
                    self.spool.ack(seg, sink)

            outcome = self.delivery.deliver(batches, acked, confirm)
            if not outcome.done:
                return False
            for seg in segs:
                self.spool.remove(seg)
            if pending is not None:
                self.derivations.commit(pending)
            faults.check("writer.after_remove")
        except Exception as exc:
            log.warning("writer: a group of batches failed; they go one at a time",
                        batch=group_name(batches) if batches else segs[0].path.name,
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip
            return False
        finally:
            release_memory()
        log.info("writer: batches stored", batch=group_name(batches), segments=len(segs),
                 rows=sum(batch.num_rows for batch in batches))  # fmt: skip
        return True

    def _quarantine(self, seg: Segment) -> None:
        """Set a segment that cannot be converted aside, so later batches flow again."""
        self._data_failures.pop(seg.path, None)
        target = self.spool.quarantine(seg)
        self.metrics.quarantined.inc()
        log.error(
            "writer: segment quarantined; once its cause is fixed, store it with `command`"
            " (with this node's configuration): each record once, in the sinks that lack it",
            path=str(target), command=f"rtclake import {shlex.quote(str(target))}",
        )  # fmt: skip
