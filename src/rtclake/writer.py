"""The writer: drains sealed spool segments, in order, into every sink.

One segment is one batch. Its entries are grouped by table, turned into Arrow by the
table's projection (columnar, in DuckDB), and handed to each sink that has not yet
confirmed the segment. A sink's confirmation is recorded in the spool; once every sink
confirmed, the segment is deleted. A failing sink is retried with exponential backoff
while the segment stays on disk, so an outage loses nothing (the spool fills, and ingest
answers 503 once it is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import structlog

from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import Entry, Segment, Spool
from rtclake.tables import INPUT_SCHEMA, TableRegistry

log = structlog.get_logger(__name__)


def entries_to_input(run: str, segment: int, entries: Sequence[Entry]) -> pa.Table:
    """One row per spooled JSON line, carrying its entry's header (see ``INPUT_SCHEMA``)."""
    lines: list[bytes] = []
    line_no: list[int] = []
    take: list[int] = []
    headers: dict[str, list[object]] = defaultdict(list)
    for i, entry in enumerate(entries):
        h = entry.header
        body_lines = entry.body.split(b"\n")
        lines += body_lines
        line_no += range(1, len(body_lines) + 1)
        take += [i] * len(body_lines)
        headers["source"].append(h.source)
        headers["stream"].append(h.stream)
        headers["kind"].append(h.kind)
        headers["hdr_type"].append(h.type)
        headers["received_at"].append(h.received_us)
        headers["idem"].append(h.idem)
        headers["entry"].append(f"{run}:{segment}:{entry.index}")
    head = pa.table(
        {name: pa.array(values, INPUT_SCHEMA.field(name).type) for name, values in headers.items()}
    ).take(pa.array(take, pa.int32()))
    return head.append_column("line_no", pa.array(line_no, pa.int32())).append_column(
        "line", pa.array(lines, pa.binary()).cast(pa.string())
    )


class Converter:
    """Turns spool entries into Arrow tables with each table's declared schema."""

    def __init__(self, tables: TableRegistry) -> None:
        self.tables = tables
        self._con = duckdb.connect(config={"threads": 2})
        self._con.execute("SET TimeZone = 'UTC'")

    def convert(self, run: str, segment: int, entries: Sequence[Entry]) -> dict[str, pa.Table]:
        by_table: dict[str, list[Entry]] = defaultdict(list)
        for entry in entries:
            by_table[entry.header.table].append(entry)
        out: dict[str, pa.Table] = {}
        for name, group in by_table.items():
            table = self.tables[name]
            relation = entries_to_input(run, segment, group)
            self._con.register("spooled", relation)
            try:
                result = self._con.execute(table.projection_sql("spooled")).fetch_arrow_table()
            finally:
                self._con.unregister("spooled")
            out[name] = result.cast(table.schema)
        return out

    def close(self) -> None:
        self._con.close()


class Writer:
    """Runs on the event loop; does its work on a thread of its own."""

    def __init__(
        self,
        spool: Spool,
        sinks: Sequence[Sink],
        tables: TableRegistry,
        metrics: Metrics,
        *,
        node: str,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        maintenance_interval: float = 300.0,
    ) -> None:
        self.spool = spool
        self.sinks = list(sinks)
        self.metrics = metrics
        self.node = node
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.maintenance_interval = maintenance_interval
        self._converter = Converter(tables)
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._failed_conversions: dict[Path, int] = {}
        self.max_conversion_attempts = 5
        self._last_maintenance = time.monotonic()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sink in self.sinks:
            try:
                await loop.run_in_executor(None, sink.start)
            except Exception as exc:  # the sink may come back; its writes are retried
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error("writer: sink failed to start", sink=sink.name, error=str(exc))
        self._task = asyncio.create_task(self._run(), name="writer")

    @property
    def idle(self) -> bool:
        return not self._busy and self.spool.sealed_waiting() == 0

    async def drain(self, timeout: float) -> bool:
        """Cut the open segment and wait until the writer has stored everything."""
        self.spool.cut()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle and self.spool.pending_records == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        loop = asyncio.get_running_loop()
        for sink in self.sinks:
            await loop.run_in_executor(None, sink.close)
        self._converter.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            seg = await self.spool.next_sealed()
            self._busy = True
            delay = self.retry_initial
            try:
                while not await loop.run_in_executor(None, self._deliver, seg):
                    if self._failed_conversions.get(seg.path, 0) >= self.max_conversion_attempts:
                        await loop.run_in_executor(None, self._quarantine, seg)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
                    await loop.run_in_executor(None, self._maintain)
            finally:
                self._busy = False

    def _deliver(self, seg: Segment) -> bool:
        """Write one segment to every sink that lacks it; True when all have it."""
        try:
            entries = Spool.read(seg)
            tables = self._converter.convert(seg.run, seg.seq, entries)
        except Exception as exc:  # retried, then set aside; never dropped
            self.metrics.sink_errors.labels("converter").inc()
            self._failed_conversions[seg.path] = self._failed_conversions.get(seg.path, 0) + 1
            log.error(
                "writer: cannot convert segment",
                segment=seg.path.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        batch = Batch(self.node, seg.run, seg.seq, tables)
        done = Spool.acked_sinks(seg)
        ok = True
        for sink in self.sinks:
            if sink.name in done:
                continue
            started = time.perf_counter()
            try:
                sink.write(batch)
            except Exception as exc:  # a sink's failure must not stop the writer
                ok = False
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error(
                    "writer: sink failed; batch kept",
                    sink=sink.name,
                    segment=seg.seq,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            self.metrics.batch_seconds.labels(sink.name).observe(time.perf_counter() - started)
            for table_name, table in tables.items():
                self.metrics.stored.labels(sink.name, table_name).inc(table.num_rows)
            self.spool.ack(seg, sink.name)
        if ok:
            self.spool.remove(seg)
            log.debug("writer: batch stored", segment=seg.seq, rows=batch.num_rows)
        return ok

    def _quarantine(self, seg: Segment) -> None:
        """Set a segment that cannot be converted aside, so later batches flow again."""
        self._failed_conversions.pop(seg.path, None)
        target = self.spool.quarantine(seg)
        self.metrics.quarantined.inc()
        log.error("writer: segment quarantined; inspect it and re-import", path=str(target))

    def _maintain(self) -> None:
        self._last_maintenance = time.monotonic()
        for sink in self.sinks:
            try:
                sink.maintain()
            except Exception as exc:  # maintenance is retried at the next interval
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error("writer: maintenance failed", sink=sink.name, error=str(exc))
