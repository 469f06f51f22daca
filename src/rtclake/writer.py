"""The writer: drains sealed spool segments, in order, into every sink.

One segment is one batch. Its entries are grouped by table, turned into Arrow by the
:class:`Converter` (the C++ parser, the envelope in Arrow, record ids in DuckDB), and
handed to each sink that has not yet confirmed the segment. A sink's confirmation is
recorded in the spool; once every sink confirmed, the segment is deleted. A failing sink
is retried with exponential backoff while the segment stays on disk, so an outage loses
nothing (the spool fills, and ingest answers 503 once it is full). A segment that cannot
be converted, or that a sink refuses for its data rather than for an outage (any error
but ``OSError`` and :class:`~rtclake.errors.SinkError`), is tried five times, then moved
to ``spool/quarantine/`` (counted and logged), so one poisoned batch cannot hold up the
batches behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from rtclake import faults
from rtclake.errors import SinkError, SpoolCorrupt
from rtclake.memory import release_memory
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import Entry, EntryHeader, Segment, Spool
from rtclake.tables import ARROW_TYPES, TIME_KEYS, TYPE_KEYS, UTC_US, Table, TableRegistry

if TYPE_CHECKING:
    from rtclake._jsoncols import ColumnBuffers

log = structlog.get_logger(__name__)


def entries_to_header(run: str, segment: int, entries: Sequence[Entry]) -> pa.Table:
    """One row per spooled line with its entry's header (``INPUT_SCHEMA`` without
    ``line``), built in Arrow: no Python object per record."""
    counts = [e.header.records for e in entries]
    heads = [e.header for e in entries]
    header = pa.table(
        {
            "source": pa.array([h.source for h in heads], pa.string()),
            "stream": pa.array([h.stream for h in heads], pa.string()),
            "kind": pa.array([h.kind for h in heads], pa.string()),
            "hdr_type": pa.array([h.type for h in heads], pa.string()),
            "received_at": pa.array([h.received_us for h in heads], UTC_US),
            "idem": pa.array([h.idem for h in heads], pa.string()),
            "entry": pa.array([f"{run}:{segment}:{e.index}" for e in entries], pa.string()),
        }
    )
    run_ends = pa.array(list(accumulate(counts)), pa.int32())
    which = pc.run_end_decode(
        pa.RunEndEncodedArray.from_arrays(run_ends, pa.array(range(len(entries)), pa.int32()))
    )
    starts = pa.array([0, *run_ends.to_pylist()[:-1]], pa.int32()).take(which)
    line_no = pc.add(pc.subtract(pa.array(range(sum(counts)), pa.int32()), starts), 1)
    return header.take(which).append_column("line_no", line_no.cast(pa.int32()))


def _array(kind_type: pa.DataType, rows: int, buffers: ColumnBuffers) -> pa.Array:
    validity, offsets, values, nulls = buffers
    if validity is None:
        return pa.nulls(rows, kind_type)
    parts = [pa.py_buffer(validity)]
    if offsets is not None:
        parts.append(pa.py_buffer(offsets))
    parts.append(pa.py_buffer(values))
    return pa.Array.from_buffers(kind_type, rows, parts, null_count=nulls)


@dataclass
class Parsed:
    """The lines of one table in one batch, parsed (see :meth:`Converter.parse`)."""

    table: Table
    header: pa.Table  # INPUT_SCHEMA of the stored lines (``line`` only without identity)
    keys: dict[str, pa.Array]  # key path -> values, one per stored line
    extra: pa.Array
    bad: list[tuple[int, str]]  # lines left out: (line index in the batch, message)
    notes: list[tuple[int, str]]  # values kept in extra for their type: (line index, why)
    lines: int  # lines parsed: stored, bad and blank

    @property
    def rows(self) -> int:
        return int(self.header.num_rows)


class Converter:
    """Turns JSON lines into Arrow tables with each table's declared schema.

    :meth:`parse` runs the C++ parser (``_jsoncols``) over a batch's lines: one pass per
    line, the typed payload columns (times as timestamps) and ``extra`` built directly as
    Arrow buffers; a line that is not a JSON object is reported and left out, a value of
    the wrong type for its column is noted and kept in ``extra``. It holds no lock and
    releases the GIL, so several threads may parse at once. :meth:`finish` adds the
    envelope with Arrow's compute functions, and the record ids (an MD5 per row) in
    DuckDB, with a DuckDB connection per thread.

    ``record_ids`` says whether rows of tables with an ``identity`` get their record id:
    a lake derives it from the stored columns, so it is only computed when a sink needs
    it (see :attr:`rtclake.sinks.base.Sink.needs_record_id`).
    """

    def __init__(
        self,
        tables: TableRegistry,
        memory_limit: str = "256MB",
        threads: int = 2,
        *,
        record_ids: bool = True,
    ) -> None:
        self.tables = tables
        self.record_ids = record_ids
        self._con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit})
        self._con.execute("SET TimeZone = 'UTC'")
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the converter's database (DuckDB connections are
        not shared between threads)."""
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "con", None)
        if con is None:
            with self._lock:
                con = self._con.cursor()
                self._cursors.append(con)
            con.execute("SET TimeZone = 'UTC'")
            self._local.con = con
        return con

    def parse(self, table: Table, text: bytes | memoryview, header: pa.Table) -> Parsed:
        """Parse ``text`` (lines joined by newlines, one per ``header`` row)."""
        return self._parse(table, text, lambda _lines: header)

    def parse_block(
        self, table: Table, text: bytes | memoryview, run: str, segment: int, header: EntryHeader
    ) -> Parsed:
        """Parse ``text``, lines that share one ``header`` (an import block): the rows'
        header is made for as many lines as the parser found."""
        return self._parse(
            table,
            text,
            lambda lines: entries_to_header(
                run, segment, [Entry(msgspec.structs.replace(header, records=lines), b"", 0)]
            ),
        )

    def _parse(
        self, table: Table, text: bytes | memoryview, header_for: Callable[[int], pa.Table]
    ) -> Parsed:
        spec = table.native_spec()
        rows, buffers, extra, status, bad, notes = spec.parse(text)
        header = header_for(len(status))
        if len(status) != header.num_rows:
            raise SpoolCorrupt(
                f"table {table.name}: {len(status)} lines, headers for {header.num_rows}"
            )
        kinds = table._kinds()
        paths = spec.paths()
        keys = {
            p: _array(ARROW_TYPES[kinds[p]], rows, b) for p, b in zip(paths, buffers, strict=True)
        }
        if not table.identity:  # the record id of other tables hashes the line
            lines = pc.split_pattern(pa.array([bytes(text)], pa.large_binary()), "\n").flatten()
            header = header.append_column("line", lines.cast(pa.large_string()))
        if rows != header.num_rows:
            codes = pa.Array.from_buffers(pa.uint8(), len(status), [None, pa.py_buffer(status)])
            stored = pc.equal(codes, 0)
            header = header.filter(stored)
        extra_array = _array(pa.string(), rows, extra)
        return Parsed(table, header, keys, extra_array, bad, notes, len(status))

    def finish(self, parsed: Parsed) -> pa.Table:
        """The table's rows: the envelope, then the columns as parsed."""
        table = parsed.table
        header = parsed.header
        values = self._payload(parsed)
        own_time = _first([parsed.keys[k] for k in TIME_KEYS])
        envelope = {
            "time": pc.coalesce(own_time, header["received_at"]),
            "received_at": header["received_at"],
            "source": header["source"],
            "stream": header["stream"],
            "kind": header["kind"],
            "type": pc.coalesce(_first([parsed.keys[k] for k in TYPE_KEYS]), header["hdr_type"]),
        }
        schema = table.schema
        if table.identity and not self.record_ids:
            schema = table.stored_schema
        else:
            envelope["record_id"] = self._record_ids(parsed, own_time, values, envelope)
        given = {**values, **envelope, "extra": parsed.extra}
        arrays = [given[f.name] for f in schema]
        typed = [
            a if a.type == f.type else a.cast(f.type) for a, f in zip(arrays, schema, strict=True)
        ]
        return pa.Table.from_arrays(typed, schema=schema)

    def _record_ids(
        self,
        parsed: Parsed,
        own_time: pa.Array,
        values: dict[str, pa.Array],
        envelope: dict[str, pa.Array],
    ) -> pa.Array:
        """The record id of each row (:meth:`Table.record_id_sql`), computed in DuckDB."""
        table = parsed.table
        if table.identity:
            given = {**values, **envelope}
            relation = pa.table({name: given[name] for name in table.identity})
        else:
            relation = parsed.header.append_column("own_time", own_time.is_valid())
        con = self._connection()
        con.register("parsed", relation)
        try:
            return con.execute(table.record_id_sql("parsed")).fetch_arrow_table()["record_id"]
        finally:
            con.unregister("parsed")

    @staticmethod
    def _payload(parsed: Parsed) -> dict[str, pa.Array]:
        """Each column: the first of its keys that has a value."""
        out: dict[str, pa.Array] = {}
        for column in parsed.table.columns:
            value = _first([parsed.keys[k] for k in column.keys])
            out[column.name] = (
                value if value.type == column.arrow_type else value.cast(column.arrow_type)
            )
        return out

    def convert(self, run: str, segment: int, entries: Sequence[Entry]) -> dict[str, pa.Table]:
        by_table: dict[str, list[Entry]] = defaultdict(list)
        for entry in entries:
            by_table[entry.header.table].append(entry)
        out: dict[str, pa.Table] = {}
        for name, group in by_table.items():
            table = self.tables[name]
            text = b"\n".join(e.body for e in group)
            parsed = self.parse(table, text, entries_to_header(run, segment, group))
            for found, emit, event in (
                (parsed.bad, log.error, "writer: lines that are not JSON objects were skipped"),
                (parsed.notes, log.warning, "writer: values of the wrong type kept in extra"),
            ):
                if found:
                    emit(event, segment=f"{run}-{segment}", table=name, lines=len(found),
                         first=found[0][1])  # fmt: skip
            out[name] = self.finish(parsed)
        return out

    def close(self) -> None:
        for con in self._cursors:
            con.close()
        self._con.close()


def _first(arrays: list[pa.Array]) -> pa.Array:
    """Per row, the first of ``arrays`` that has a value."""
    return arrays[0] if len(arrays) == 1 else pc.coalesce(*arrays)


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
        self._converter = Converter(
            tables, record_ids=any(sink.needs_record_id for sink in self.sinks)
        )
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._data_failures: dict[Path, int] = {}
        self.max_data_failures = 5
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
        deadline = time.monotonic() + 60
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
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
                while not await loop.run_in_executor(None, self._deliver_safely, seg):
                    if self._data_failures.get(seg.path, 0) >= self.max_data_failures:
                        await loop.run_in_executor(None, self._quarantine, seg)
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
                    await loop.run_in_executor(None, self._maintain)
            finally:
                self._busy = False

    def _deliver_safely(self, seg: Segment) -> bool:
        """:meth:`_deliver`, where a failure of the spool's own disk (reading the segment,
        recording a confirmation, deleting it) means "try again later", never the end of
        the writer."""
        try:
            return self._deliver(seg)
        except OSError as exc:
            self.metrics.sink_errors.labels("spool").inc()
            log.error(
                "writer: spool I/O failed; batch kept",
                segment=seg.path.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False

    def _deliver(self, seg: Segment) -> bool:
        """Write one segment to every sink that lacks it; True when all have it."""
        entries = Spool.read(seg)  # an OSError here is the disk's, not the segment's
        faults.check("writer.after_read")
        try:
            tables = self._converter.convert(seg.run, seg.seq, entries)
        except Exception as exc:  # retried, then set aside; never dropped
            self.metrics.sink_errors.labels("converter").inc()
            self._data_failures[seg.path] = self._data_failures.get(seg.path, 0) + 1
            log.error(
                "writer: cannot convert segment",
                segment=seg.path.name,
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        faults.check("writer.after_convert")
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
                if not isinstance(exc, OSError | SinkError):
                    # Not an outage but the batch's data (a value the sink cannot take):
                    # retried, then set aside, so it cannot hold up every later batch.
                    self._data_failures[seg.path] = self._data_failures.get(seg.path, 0) + 1
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error(
                    "writer: sink failed; batch kept",
                    sink=sink.name,
                    segment=seg.seq,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            faults.check("writer.after_sink_write")
            self.metrics.batch_seconds.labels(sink.name).observe(time.perf_counter() - started)
            for table_name, table in tables.items():
                self.metrics.stored.labels(sink.name, table_name).inc(table.num_rows)
            self.spool.ack(seg, sink.name)
            faults.check("writer.after_ack")
        if ok:
            self.spool.remove(seg)
            faults.check("writer.after_remove")
            log.debug("writer: batch stored", segment=seg.seq, rows=batch.num_rows)
        del batch, tables, entries
        release_memory()
        return ok

    def _quarantine(self, seg: Segment) -> None:
        """Set a segment that cannot be converted aside, so later batches flow again."""
        self._data_failures.pop(seg.path, None)
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
