"""The converter: JSON lines of one table into an Arrow table with its declared schema.

:meth:`Converter.parse` runs the C++ parser (``_jsoncols``) over a block of lines: one pass
per line, the typed payload columns (times as timestamps) and ``extra`` built directly as
Arrow buffers. :meth:`Converter.finish` adds the envelope with Arrow's compute functions
and the record ids in DuckDB. The writer converts spool segments with it, imports convert
file blocks with it.
"""

from __future__ import annotations

import binascii
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import duckdb
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from rtclake.errors import SpoolCorrupt
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import (
    ARROW_TYPES,
    TIME_KEYS,
    TYPE_KEYS,
    UTC_US,
    Table,
    TableRegistry,
    identity_gap,
)

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
    # each line's entry and its number in the entry, in NumPy (Python ranges of the
    # lines took ~4 ms a 30,000-line import block on their own, ~9 beside the parsing)
    sizes = np.asarray(counts, dtype=np.int64)
    which = np.repeat(np.arange(len(entries), dtype=np.int32), sizes)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    line_no = (np.arange(int(sizes.sum()), dtype=np.int64) - starts + 1).astype(np.int32)
    return header.take(pa.array(which)).append_column("line_no", pa.array(line_no))


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
    status: bytes = b""  # the parser's code per line (0: stored)

    @property
    def rows(self) -> int:
        return int(self.header.num_rows)


class Converter:
    """Turns JSON lines into Arrow tables with each table's declared schema.

    :meth:`parse` runs the C++ parser (``_jsoncols``) over a batch's lines: one pass per
    line, the typed payload columns (times as timestamps) and ``extra`` built directly as
    Arrow buffers; a line that is not a JSON object, or without its table's required
    identity (:attr:`rtclake.tables.Table.required_identity`), is reported and left out,
    a value of the wrong type for its column is noted and kept in ``extra``. It holds no lock and
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
        stored = None
        if rows != header.num_rows:
            codes = pa.Array.from_buffers(pa.uint8(), len(status), [None, pa.py_buffer(status)])
            stored = pc.equal(codes, 0)
            header = header.filter(stored)
        if not table.identity:  # the record id of other tables hashes the line
            lines = pc.split_pattern(pa.array([bytes(text)], pa.large_binary()), "\n").flatten()
            if stored is not None:  # a bad line may not even be UTF-8 (the parser said so)
                lines = lines.filter(stored)
            # without surrounding spaces (the rule: records.record_id), trimmed here: Arrow
            # moves offsets, where DuckDB's trim() in the record id's SQL copied every line
            # (~0.8 of ~1.2 us a 230-byte record; the writer's largest cost was that SQL)
            header = header.append_column("line", pc.utf8_trim(lines.cast(pa.large_string()), " "))
        extra_array = _array(pa.string(), rows, extra)
        parsed = Parsed(table, header, keys, extra_array, bad, notes, len(status), bytes(status))
        # A line without a value for a column of the table's required identity is a bad
        # line, as at the edges (Table.checker): an import reads files no edge checked,
        # and a spool may hold lines an older rtclake took.
        return _without_identity_gaps(parsed) if table.required_identity else parsed

    def finish(self, parsed: Parsed) -> pa.Table:
        """The table's rows: the envelope, then the columns as parsed."""
        table = parsed.table
        header = parsed.header
        values = self._payload(parsed)
        own_time = _first([parsed.keys[k] for k in TIME_KEYS])
        received = header["received_at"]
        if own_time.null_count < len(own_time):
            # A row whose time equals its arrival was timed at its arrival (it had no time
            # of its own): the lake's repeat check looks for its repeats within a window
            # either side, a scan. A record's own time equal to its arrival to the
            # microsecond (one in ~10^6 near real time: a group in ten at 100,000 records)
            # would cost that scan needlessly: its arrival is counted a microsecond later.
            clash = pc.equal(own_time, received).fill_null(False)
            if pc.any(clash).as_py():
                received = pc.if_else(clash, pc.add(received, pa.scalar(1, pa.duration("us"))),
                                      received)  # fmt: skip
        envelope = {
            "time": pc.coalesce(own_time, received),
            "received_at": received,
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
            if column.kind == "binary":
                value = _from_base64(value)
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
                (parsed.bad, log.error, "writer: bad lines skipped"),
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


def _from_base64(texts: pa.Array) -> pa.Array:
    """A ``binary`` column's bytes from its base64 text (checked at the edge; text that
    is not base64 anyway, from an import, becomes NULL). Such columns are rare and short
    (message payloads), so Python decodes them."""
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), pa.binary())
    out: list[bytes | None] = []
    for text in texts.cast(pa.binary()).to_pylist():
        try:
            out.append(None if text is None else binascii.a2b_base64(text, strict_mode=True))
        except (binascii.Error, ValueError):
            out.append(None)
    return pa.array(out, pa.binary())


def _first(arrays: list[pa.Array]) -> pa.Array:
    """Per row, the first of ``arrays`` that has a value."""
    return arrays[0] if len(arrays) == 1 else pc.coalesce(*arrays)


def _without_identity_gaps(parsed: Parsed) -> Parsed:
    """``parsed`` without the rows lacking a value for a column of the table's required
    identity; those lines join ``bad``, naming the columns."""
    table = parsed.table
    by_name = {c.name: c for c in table.columns}
    missing: list[tuple[str, pa.Array]] = []
    for name in table.required_identity:
        values = _first([parsed.keys[k] for k in by_name[name].keys])
        missing.append((name, values.is_null()))
    gaps = missing[0][1]
    for _, nulls in missing[1:]:
        gaps = pc.or_(gaps, nulls)
    if not pc.any(gaps).as_py():
        return parsed
    stored_lines = [i for i, code in enumerate(parsed.status) if code == 0]
    bad = list(parsed.bad)
    for row in pc.indices_nonzero(gaps).to_pylist():
        names = [name for name, nulls in missing if nulls[row].as_py()]
        bad.append((stored_lines[row], identity_gap(names)))
    keep = pc.invert(gaps)
    return Parsed(
        table,
        parsed.header.filter(keep),
        {path: values.filter(keep) for path, values in parsed.keys.items()},
        parsed.extra.filter(keep),
        sorted(bad),
        parsed.notes,
        parsed.lines,
        parsed.status,
    )
