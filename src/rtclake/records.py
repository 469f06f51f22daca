"""The record envelope: one typed record, as a lake row holds it.

Sources hand the spool JSON Lines (the fast, columnar path); the writer's converter
(:class:`rtclake.convert.Converter`) gives every record its envelope. This
module is the envelope as a Python object, for code that handles records one at a time
(per-record sinks, user brokers, tests), and the definition of the record id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pyarrow as pa

from rtclake.tables import ENVELOPE

_ENVELOPE_NAMES = frozenset(f.name for f in ENVELOPE)


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record: where it came from, what it is, when, who it concerns, and its payload.

    ``ids`` holds the identifiers its table declares (``device_id``; ``channel_id``,
    ``session_id``, ``connection_id``, ``client_id``, ``track_id``, ...), ``payload``
    the keys the table has no column for (its ``extra``).
    """

    record_id: str
    time: dt.datetime  # UTC, microseconds
    received_at: dt.datetime
    source: str
    stream: str
    kind: str
    type: str | None = None
    table: str = ""
    ids: dict[str, Any] = msgspec.field(default_factory=dict)
    payload: dict[str, Any] = msgspec.field(default_factory=dict)

    @classmethod
    def from_row(cls, table: str, row: dict[str, Any]) -> Record:
        extra = row.get("extra")
        payload = orjson.loads(extra) if isinstance(extra, str | bytes) else (extra or {})
        ids = {k: v for k, v in row.items() if k not in _ENVELOPE_NAMES and k != "extra"}
        return cls(
            record_id=row["record_id"],
            time=row["time"],
            received_at=row["received_at"],
            source=row["source"],
            stream=row["stream"],
            kind=row["kind"],
            type=row.get("type"),
            table=table,
            ids=ids,
            payload=payload,
        )


def records(table_name: str, table: pa.Table) -> Iterator[Record]:
    """The rows of a batch's Arrow table as :class:`Record` objects."""
    for row in table.to_pylist():
        yield Record.from_row(table_name, row)


def record_id(source: str, stream: str, key: str) -> str:
    """The stable id of a record: MD5 (hex) of source, stream and its identity key,
    joined by the unit separator (U+001F).

    The identity key is, in order of preference: ``IDEMPOTENCY-KEY:LINE`` when the
    sender gave an idempotency key; the record's JSON text as sent (without surrounding
    whitespace) when it carries its own time (``time``, ``timestamp`` or ``ts``); else
    its spool position
    ``RUN:SEGMENT:ENTRY:LINE``, which a replay after a crash reproduces. The writer
    computes the same in SQL.
    """
    return hashlib.md5(
        "\x1f".join((source, stream, key)).encode(), usedforsecurity=False
    ).hexdigest()
