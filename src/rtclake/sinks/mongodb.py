"""The mongodb sink: records as MongoDB documents, written so a replay changes nothing.

What it accepts: the rows of the tables its layout takes (``layout: rtclake``: those
listed in ``tables``, default every table but ``dead_letters``, and of ``outbox`` the
rows a broker addressed to this sink; ``layout: openvidu``,
registered by the LiveKit integration: LiveKit's analytics tables, in the collections
and shapes openvidu-livekit writes, so OpenVidu's tooling reads them).

``layout: rtclake``: one collection per table (``{prefix}{table}``), one document per
row: the row's columns (times as BSON dates, JSON columns and ``extra`` as documents),
``_id`` the record id; with ``expire_after`` set, an ``expire_at`` date and a TTL index.
A number beyond a double's range (``1e400``) or a 64-bit integer's is a ``Decimal128``.

What it guarantees: at least once into MongoDB, once per ``_id``: documents go in with
unordered ``insert_many``, and a duplicate-key error (code 11000: the same ``_id``, a
replayed batch) counts as written. Any other refusal of a document (too large, a
validation rule), or a value BSON cannot hold (an integer beyond 64 bits, a number with
more digits than a ``Decimal128``), sends that row to ``dead_letters``; a network error,
a timeout or no primary is an outage: :class:`~rtclake.errors.SinkError`, the batch
stays in the spool and is retried (what went in already is then a duplicate key).

What it reports: the delivery's metrics under the sink's name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr

from rtclake.errors import ConfigError, SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, BigNumber, Rejected, Sink, check_tables, rows_taken
from rtclake.sinks.webhook import records
from rtclake.tables import DEAD_LETTERS, TableRegistry

DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class Document:
    """One document to insert: its collection, the batch row it comes from, the body."""

    collection: str
    table: str
    row: int
    body: dict[str, Any]


Indexes = list[tuple[str, list[tuple[str, int]], dict[str, Any]]]
"""``(collection, keys, options)`` of each index a layout needs."""


@dataclass
class Layout:
    """How rows become documents: the tables it takes, the documents of a batch, the
    indexes its collections need, and what it does once a batch's documents are in."""

    tables: Callable[[TableRegistry], list[str]]
    documents: Callable[[Batch, TableRegistry, MongoSinkConfig, dt.datetime], Iterator[Document]]
    indexes: Callable[[MongoSinkConfig, list[str]], Indexes]
    after: Callable[[Any, Batch, TableRegistry, dt.datetime], None] | None = None


LAYOUTS: dict[str, Callable[[], Layout]] = {}
"""Layouts besides ``rtclake`` by name, each made when a sink uses it; an integration adds
its own (:func:`register_layout`)."""


def register_layout(name: str, make: Callable[[], Layout]) -> None:
    LAYOUTS[name] = make


class MongoSinkConfig(SinkConfig):
    """Records into MongoDB (pymongo)."""

    url: SecretStr = Field(
        default=SecretStr("mongodb://127.0.0.1:27017"),
        description="a MongoDB connection string (masked in `rtclake config`)",
    )
    database: str = Field(default="rtclake", description="the database")
    layout: str = Field(
        default="rtclake",
        description="rtclake: a collection per table; openvidu: openvidu-livekit's events,"
        " stats, active_entities and last_alive (LiveKit's analytics tables)",
    )
    tables: list[str] | None = Field(
        default=None, description="rtclake layout: the tables; default every table but dead_letters"
    )
    prefix: str = Field(default="", description="rtclake layout: before each collection's name")
    expire_after: float | None = Field(
        default=None, gt=0,
        description="seconds a document lives (a TTL index); openvidu layout: default 768 h",
    )  # fmt: skip
    timeout: float = Field(default=10.0, gt=0, description="seconds to find a server and write")


def _rtclake_tables(config: MongoSinkConfig, tables: TableRegistry) -> list[str]:
    return config.tables or [name for name in tables.names() if name != DEAD_LETTERS.name]


def _rtclake_documents(batch: Batch, tables: TableRegistry, config: MongoSinkConfig,
                       now: dt.datetime, sink: str) -> Iterator[Document]:  # fmt: skip
    for name in _rtclake_tables(config, tables):
        if name not in batch.tables:
            continue
        for index, row in records(batch, tables, name, sink):
            body = {"_id": row.pop("record_id"), **row}
            if config.expire_after is not None:
                body["expire_at"] = now + dt.timedelta(seconds=config.expire_after)
            yield Document(f"{config.prefix}{name}", name, index, body)


def _rtclake_indexes(
    config: MongoSinkConfig, names: list[str]
) -> list[tuple[str, list[tuple[str, int]], dict[str, Any]]]:
    out: list[tuple[str, list[tuple[str, int]], dict[str, Any]]] = []
    for name in names:
        out.append((f"{config.prefix}{name}", [("time", 1)], {}))
        if config.expire_after is not None:
            out.append((f"{config.prefix}{name}", [("expire_at", 1)], {"expireAfterSeconds": 0}))
    return out


class MongoSink(Sink):
    """Writes documents of a layout into MongoDB (see the module doc)."""

    def __init__(self, config: MongoSinkConfig, tables: TableRegistry, name: str) -> None:
        if config.layout not in LAYOUTS and config.layout != "rtclake":
            known = ", ".join(sorted({"rtclake", *LAYOUTS}))
            raise ConfigError(f"sinks.{name}.layout: {config.layout!r} is not one of {known}")
        self.name = name
        self.config = config
        self.tables = tables
        self.needs_record_id = True
        self.layout = None if config.layout == "rtclake" else LAYOUTS[config.layout]()
        self._client: Any = None
        self._database: Any = None
        self._indexed = False

    def _documents(self, batch: Batch, now: dt.datetime) -> Iterator[Document]:
        if self.layout is None:
            return _rtclake_documents(batch, self.tables, self.config, now, self.name)
        return self.layout.documents(batch, self.tables, self.config, now)

    def _indexes(self) -> Indexes:
        if self.layout is None:
            return _rtclake_indexes(self.config, _rtclake_tables(self.config, self.tables))
        return self.layout.indexes(self.config, self.layout.tables(self.tables))

    def taken(self, batch: Batch) -> dict[str, int]:
        if self.layout is None:
            names = _rtclake_tables(self.config, self.tables)
        else:
            names = self.layout.tables(self.tables)
        return rows_taken(batch, names, self.name)

    def start(self) -> None:
        import pymongo

        timeout_ms = int(self.config.timeout * 1000)
        self._client = pymongo.MongoClient(
            self.config.url.get_secret_value(), serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms, tz_aware=True,
        )  # fmt: skip
        self._database = self._client.get_database(self.config.database,
                                                   codec_options=codec_options())  # fmt: skip
        self._ensure_indexes()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _ensure_indexes(self) -> None:
        import pymongo.errors

        if self._indexed:
            return
        try:
            for collection, keys, options in self._indexes():
                self._database[collection].create_index(keys, **options)
        except pymongo.errors.PyMongoError as exc:
            raise SinkError(f"mongodb: cannot create indexes: {exc}") from exc
        self._indexed = True

    def write(self, batch: Batch) -> None:
        if self._client is None:
            self.start()
        self._ensure_indexes()
        now = dt.datetime.now(dt.UTC)
        by_collection: dict[str, list[Document]] = {}
        for document in self._documents(batch, now):
            by_collection.setdefault(document.collection, []).append(document)
        refused: dict[str, list[tuple[int, str]]] = {}
        for collection, documents in by_collection.items():
            for document, reason in insert_once(self._database[collection], documents):
                refused.setdefault(document.table, []).append((document.row, reason))
        if self.layout is not None and self.layout.after is not None:
            import pymongo.errors

            try:
                self.layout.after(self._database, batch, self.tables, now)
            except pymongo.errors.PyMongoError as exc:
                raise SinkError(f"mongodb: {type(exc).__name__}: {exc}") from exc
        if refused:
            raise Rejected(refused)


def codec_options() -> Any:
    """How documents become BSON: dates with their zone, and a number BSON has no type
    for (an integer beyond 64 bits, a :class:`BigNumber` of JSON beyond a double's range)
    as a ``Decimal128``."""
    from bson.codec_options import CodecOptions, TypeRegistry

    return CodecOptions(tz_aware=True, type_registry=TypeRegistry(fallback_encoder=_bson))


def _bson(value: Any) -> Any:
    from bson.decimal128 import Decimal128
    from bson.errors import InvalidDocument

    if not isinstance(value, BigNumber | int):
        raise InvalidDocument(f"cannot encode {type(value).__name__}")
    text = str(value)
    try:
        return Decimal128(text)  # refuses to round: the number as it came, or none
    except ArithmeticError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise InvalidDocument(
            f"the number {shown} ({len(text)} characters) is beyond a Decimal128's 34 digits"
            " and exponent"
        ) from None


def insert_once(collection: Any, documents: Iterable[Document]) -> list[tuple[Document, str]]:
    """Insert ``documents`` unordered; a duplicate ``_id`` counts as written. Returns the
    documents refused for good with the reason; raises SinkError on an outage."""
    import bson
    import bson.errors
    import pymongo.errors

    documents = list(documents)
    if not documents:
        return []
    try:
        collection.insert_many([d.body for d in documents], ordered=False)
    except (bson.errors.InvalidDocument, OverflowError):
        # a value BSON cannot hold; pymongo encodes before it sends, and stops at the
        # first: each document is encoded alone to find them, and the others inserted
        # (those sent before count as written: duplicate keys)
        refused, rest = [], []
        for document in documents:
            try:
                bson.encode(document.body, codec_options=codec_options())
            except (bson.errors.InvalidDocument, OverflowError) as exc:
                refused.append((document, f"mongodb: not written: {exc}"[:500]))
            else:
                rest.append(document)
        if not refused:
            raise
        return refused + insert_once(collection, rest)
    except pymongo.errors.BulkWriteError as exc:
        refused = []
        for error in exc.details.get("writeErrors", ()):
            if error.get("code") == DUPLICATE_KEY:
                continue  # written before: a replay
            refused.append(
                (
                    documents[error["index"]],
                    f"mongodb {error.get('code')}: {error.get('errmsg', '')}"[:500],
                )
            )
        if exc.details.get("writeConcernErrors"):
            raise SinkError(
                f"mongodb: write concern: {exc.details['writeConcernErrors'][:1]}"
            ) from exc
        return refused
    except pymongo.errors.PyMongoError as exc:  # no server, a timeout, a network error
        raise SinkError(f"mongodb: {type(exc).__name__}: {exc}") from exc
    return []


def build(config: MongoSinkConfig, ctx: BuildContext) -> MongoSink:
    check_tables(config.tables, ctx)
    return MongoSink(config, ctx.tables, ctx.name)


MONGODB = ComponentType(
    "sink", "mongodb", MongoSinkConfig, build,
    "Records into MongoDB: a collection per table, or openvidu-livekit's layout.",
)  # fmt: skip
