"""The processor contract.

A processor is a small step on the path of records, as structlog's processors are on
the path of a log event: records in, records out. The chain of the configured processors
(``processors:`` in the configuration, in that order) runs at one of two points:

- ``stage = "intake"``: before the spool, on the records of one hand-over (one request,
  one file block, one poll), before the source acknowledges. What it returns is what is
  stored, and it may give the caller that waits a reply (:meth:`Context.reply`: HTTP
  ingest answers ``{"accepted": N, "reply": ...}``). Its time adds to the source's
  latency: keep it small.
- ``stage = "store"`` (the default): after the spool, on the writer's thread, on the
  records of one spool entry before they are converted. For enrichment: derived fields,
  renamed keys, records computed from others. The spool holds the input, so a replayed
  batch runs the processor again; what it emits gets the same record ids again (the
  batch, the processor and the order name them), and the query views show it once.

A processor sees only the records of its ``tables`` and ``sources`` (all by default).
It may emit new records into any table (:meth:`Context.emit`); they pass the intake's
routing and validation and are stored with the records of the same hand-over (intake)
or batch (store), ``source`` set to the processor's name. Emitted records do not pass
through the chain again.

Isolation: each call runs on a thread of its own with the processor's ``timeout`` (see
:mod:`rtclake.processors.chain`). When a processor raises, times out, or returns what its
table refuses, its input goes on unchanged to the next processor and what it emitted or
replied is dropped (counted in ``rtclake_processor_errors_total`` and logged): a failing
processor never loses a record nor stops the others. A processor that wants to drop
records returns fewer.

Record ids: a record a store-stage processor saw gets its id from its place in the spool
(or the sender's idempotency key), not from its text, so the id is the same whatever the
processor made of it on a replay. Records a processor emits get ids from the input they
came from (intake stage: the source, the idempotency key or the input's text; store
stage: the input's place in the spool), so a re-read or a replay stores them once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["intake", "store", "broker"]  # broker: rtclake.brokers
Record = dict[str, Any]


@dataclass
class Context:
    """What a processor knows of the records it is given, and how it answers."""

    table: str
    source: str
    stream: str
    stage: Stage
    emitted: list[tuple[str | None, str | None, Record]] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)

    def emit(self, record: Record, *, table: str | None = None, stream: str | None = None) -> None:
        """Store ``record`` too: in ``table``, or where the router sends ``stream``
        (default: the stream of the records being processed)."""
        self.emitted.append((table, stream, record))

    def reply(self, value: Any) -> None:
        """Give the caller that waits (intake stage) this JSON-serialisable reply; the
        first processor that replies decides (a later one is logged, not sent)."""
        self.replies.append(value)


class Processor(ABC):
    """Base class of processors. ``process`` runs on a thread of the chain."""

    name: str = "processor"
    stage: Stage = "store"
    tables: frozenset[str] | None = None  # None: every table
    sources: frozenset[str] | None = None  # None: every source
    timeout: float = 5.0

    def matches(self, table: str, source: str) -> bool:
        return (self.tables is None or table in self.tables) and (
            self.sources is None or source in self.sources
        )

    def start(self) -> None:  # noqa: B027 - a processor may have nothing to prepare
        """Prepare (open connections); called once before the first records."""

    @abstractmethod
    def process(self, records: list[Record], ctx: Context) -> Iterable[Record] | None:
        """Return the records to keep (a list, or any iterable). None keeps the records as
        they came, byte for byte (changes made to them in place are not kept)."""

    def background(self, intake: Any) -> Coroutine[Any, Any, None] | None:
        """A task to run beside the records while the service runs (a reconciler that
        writes records of its own through ``intake``, an :class:`rtclake.intake.Intake`,
        on the service's event loop); None: nothing. Cancelled at stop."""
        return None

    def close(self) -> None:  # noqa: B027 - a processor may hold nothing
        """Release what ``start`` opened."""


RecordFunction = Callable[[Record, Context], "Record | list[Record] | None"]


class RecordProcessor(Processor):
    """A processor made of a function of one record: it returns the record (changed or
    new), a list of records (none drops it), or None (keep the record as it is now)."""

    def __init__(self, function: RecordFunction, **attributes: Any) -> None:
        self.function = function
        for key, value in attributes.items():
            setattr(self, key, value)

    def process(self, records: list[Record], ctx: Context) -> list[Record]:
        out: list[Record] = []
        for record in records:
            result = self.function(record, ctx)
            if result is None:
                out.append(record)
            elif isinstance(result, dict):
                out.append(result)
            else:
                out.extend(result)
        return out


def configure(processor: Processor, name: str, config: Any) -> Processor:
    """Set what every processor's settings say (``tables``, ``sources``, ``timeout``)."""
    processor.name = name
    processor.tables = frozenset(config.tables) if config.tables is not None else processor.tables
    processor.sources = (
        frozenset(config.sources) if config.sources is not None else processor.sources
    )
    processor.timeout = config.timeout
    return processor
