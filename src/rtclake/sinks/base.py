"""The sink contract.

A sink receives batches from the writer, one spool segment at a time, in order. Its four
duties are those of openvidu-livekit's ``DatabaseClient``: prepare the destination, write
a batch, do periodic maintenance, close.

Delivery is at least once: after a crash, or when another sink of the same batch failed,
a batch is delivered again. ``write`` must therefore be idempotent by ``record_id`` (the
same batch written twice leaves the same visible rows). Tables with an ``identity`` carry
``record_id`` only when some sink of the batch needs it (:attr:`Sink.needs_record_id`).
``write`` returns only once the batch is durable in the destination; raising
:class:`rtclake.errors.SinkError` (or any ``OSError``) leaves the batch in the spool to be
retried.

When batches wait, several consecutive ones of a run may come at once
(:meth:`Sink.write_group`), which the lake stores in one commit.

A record the destination refuses for good (as the sink classifies its error: a constraint,
a 400 for that document) must not block the batch: the sink stores the rest and raises
:class:`Rejected` naming the refused rows. The delivery writes them to the
``dead_letters`` table (with the sink, the reason and the time) and counts the batch as
confirmed by that sink. Any other exception is the batch's data: retried a few times, then
the spool segment is set aside (``spool/quarantine/``), for ``rtclake import`` to deliver
later to the sinks that lack it.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from rtclake.errors import ConfigError
from rtclake.tables import OUTBOX

if TYPE_CHECKING:
    from rtclake.registry import BuildContext


@dataclass(frozen=True)
class Batch:
    """The records of one spool segment, as one Arrow table per lake table."""

    node: str
    run: str
    segment: int
    tables: dict[str, pa.Table]
    #: What sinks made of some of the tables beforehand, away from the writer's thread
    #: (:meth:`Sink.prepare`), by (sink name, table name).
    prepared: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: The file an import's batch comes from (its ``segment`` is then the offset after
    #: the block), for the lake's ledger.
    origin: str | None = None

    @property
    def name(self) -> str:
        """A name unique to this batch on this node, the same when it is replayed."""
        return f"{self.node}-{self.run}-{self.segment:012d}"

    @property
    def num_rows(self) -> int:
        return sum(t.num_rows for t in self.tables.values())


def group_name(batches: Sequence[Batch]) -> str:
    """How the log names a batch, or a group of them (first to last)."""
    if len(batches) == 1:
        return batches[0].name
    return f"{batches[0].name}..{batches[-1].segment:012d}"


class Sink(ABC):
    """Base class of every sink. Methods run on the writer's thread."""

    name: str = "sink"
    #: Whether rows other sinks refuse for good are written here (the ``dead_letters``
    #: table); the lake says True.
    takes_dead_letters: bool = False
    #: Whether rows of tables with an ``identity`` must carry ``record_id``; a sink that
    #: derives it from those columns (the lake) says False and spares the writer the MD5s.
    needs_record_id: bool = True

    def start(self) -> None:  # noqa: B027 - a sink may have nothing to prepare
        """Prepare the destination (create folders, tables, indexes). Called once."""

    def prepare(self, table: str, rows: pa.Table) -> Any:
        """Work on one table's rows of a batch that can be done before the batch is
        written, off the writer's thread and beside other batches' (an import converts
        two blocks at once): the lake encodes its Parquet files here. What it returns
        reaches :meth:`write` as ``batch.prepared[(self.name, table)]``; None: nothing."""
        return None

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Store ``batch`` durably, idempotently by ``record_id``."""

    def write_group(self, batches: Sequence[Batch]) -> None:
        """Store consecutive batches of one run, in order, as :meth:`write` stores one
        (durable when it returns; a retry may bring them again, grouped otherwise). The
        writer and imports hand over a group when batches wait (a backlog): a sink whose
        every write has a fixed cost (the lake's commit) stores them in one go. By
        default each is written in turn; a record refused for good (:class:`Rejected`)
        fails the group, and the batches are then delivered one at a time."""
        for batch in batches:
            self.write(batch)

    def taken(self, batch: Batch) -> dict[str, int]:
        """How many rows of each table of ``batch`` this sink takes: what
        ``rtclake_records_stored_total{sink,table}`` counts once it holds the batch (less
        the rows it refused). Every row by default; a sink that takes some tables, or only
        the ``outbox`` rows addressed to it, counts those (:func:`rows_taken`)."""
        return {name: table.num_rows for name, table in batch.tables.items()}

    def maintain(self) -> None:  # noqa: B027 - maintenance is optional
        """Periodic housekeeping (compaction, expiry, fixing stale entities)."""

    def close(self) -> None:  # noqa: B027 - a sink may hold nothing to release
        """Release connections and files."""


class Rejected(Exception):
    """Raised by :meth:`Sink.write` once every other row of the batch is stored: ``rows``
    maps a table to the refused rows, each ``(row index in batch.tables[table], reason)``.

    ``outage``, the reason, when rows were given up on because the destination is out
    (``give_up_after``) rather than refused by it: the delivery then counts the write as
    failed (``rtclake_sink_up`` 0, ``/healthz`` degraded), though the batch is done."""

    def __init__(
        self, rows: Mapping[str, Sequence[tuple[int, str]]], *, outage: str | None = None
    ) -> None:
        self.rows = {table: list(refused) for table, refused in rows.items() if refused}
        self.outage = outage
        count = sum(len(refused) for refused in self.rows.values())
        super().__init__(f"{count} records refused for good")

    @classmethod
    def everything(cls, batch: Batch, reason: str) -> Rejected:
        """Every row of ``batch`` refused, for one reason."""
        return cls(
            {name: [(i, reason) for i in range(t.num_rows)] for name, t in batch.tables.items()}
        )


def json_bytes(value: Any) -> bytes:
    """A row as the JSON sinks send it: times in RFC 3339 with ``Z``, a :class:`BigNumber`
    as written, anything else JSON cannot hold as its text."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_UTC_Z)


def _json_default(value: Any) -> Any:
    if isinstance(value, BigNumber):
        return orjson.Fragment(value.text)
    return str(value)


class BigNumber:
    """A JSON number a float or a 64-bit integer cannot hold (``1e400``, 400 digits), as
    written. Such a record is well-formed (the lake and PostgreSQL keep it as it came), so
    a sink must not fail on it: :func:`json_bytes` writes it back unchanged, and a sink
    that needs values sees this instead of a number (an infinity would be a different
    number, and orjson refuses to read one at all)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"BigNumber({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BigNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def json_value(text: str | bytes) -> Any:
    """The value of a JSON column's text (``extra``, ``notify``, ...), with every number
    kept: one beyond a float's or a 64-bit integer's range is a :class:`BigNumber`.
    Raises ``json.JSONDecodeError`` (a ``ValueError``) for text that is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # orjson reads no number past a double's range ("number is infinity when parsed
        # as double"); Python's parser, slower, only for such a text, hands each over
        return json.loads(text, parse_float=_float, parse_int=_int, parse_constant=_not_json)


def json_as_written(text: str | bytes) -> orjson.Fragment:
    """A JSON column's text for a sink that sends JSON: put into its JSON as it is (each
    number as written, none read into a float and back), once checked to be JSON."""
    json_value(text)
    return orjson.Fragment(text)


def _float(text: str) -> float | BigNumber:
    number = float(text)
    return number if math.isfinite(number) else BigNumber(text)


def _int(text: str) -> int | BigNumber:
    # (int() of a long enough text is refused by Python itself: 4300 digits)
    if len(text) > 20:
        return BigNumber(text)
    number = int(text)
    return number if -(2**63) <= number < 2**64 else BigNumber(text)


def _not_json(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def addressed(sinks: str | None, sink: str) -> bool:
    """Whether an ``outbox`` row's ``sinks`` (its JSON text), or an alert's ``notify``,
    names ``sink``."""
    if not sinks:
        return False
    names = json_value(sinks)
    return isinstance(names, list) and sink in names


def rows_taken(batch: Batch, names: Iterable[str], sink: str) -> dict[str, int]:
    """:meth:`Sink.taken` of a sink that takes every row of the tables ``names`` but, of
    ``outbox``, the rows addressed to it."""
    counts = {}
    for name in names:
        if name not in batch.tables:
            continue
        table = batch.tables[name]
        if name == OUTBOX.name and "sinks" in table.column_names:
            counts[name] = sum(addressed(text, sink) for text in table["sinks"].to_pylist())
        else:
            counts[name] = table.num_rows
    return counts


def check_tables(names: Iterable[str] | None, ctx: BuildContext) -> None:
    """Refuse, at start, a sink's ``tables`` naming a table this installation lacks."""
    unknown = [name for name in names or () if name not in ctx.tables]
    if unknown:
        known = ", ".join(ctx.tables.names())
        raise ConfigError(f"sinks.{ctx.name}.tables: unknown tables {unknown} (known: {known})")


def gave_up(outage: Exception, since: float, now: float, limit: float) -> str | None:
    """The dead-letter reason once an outage that began at ``since`` has lasted
    ``limit`` seconds (``give_up_after``; 0: never), else None: the batch waits."""
    if not limit or now - since < limit:
        return None
    return f"gave up after {limit:g} s of outage: {outage}"
