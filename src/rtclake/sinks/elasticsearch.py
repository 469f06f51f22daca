"""The elasticsearch sink: records as Elasticsearch (or OpenSearch) documents in daily
indices, written with ``_bulk`` so a replay overwrites what it wrote before.

What it accepts: the rows of the tables listed in ``tables`` (default every table but
``dead_letters``; of ``outbox``, the rows a broker addressed to this sink). A row becomes
one document: its columns (times as RFC 3339 dates in UTC, JSON columns and ``extra`` as
objects, BLOB columns as base64), ``_id`` its record id, in the index named by ``index``
from the table and the record's ``time`` in UTC (``rtclake-{table}-%Y.%m.%d``:
``rtclake-telemetry-2026.11.20``, daily indices as Sorabeat's ``sorabeat-YYYY.MM.DD``).
At start (and before the first write, while it has not succeeded) an index template per
table (``_index_template``, named after the index pattern) gives new indices typed
mappings from the table's schema: ``keyword`` for ids and strings, ``date`` for times,
``double``, ``long``, ``boolean``, ``binary``, JSON columns kept unindexed in ``_source``,
``extra`` as ``flattened`` (Elasticsearch) or ``flat_object`` (OpenSearch).

``flavor: elasticsearch`` talks through the official ``elasticsearch`` client (which
requires Elasticsearch: its product header and compatibility media types);
``flavor: opensearch`` through ``opensearch-py``, as the official client refuses any
other server. The requests are the same ``_bulk`` and ``_index_template`` of both.

What it guarantees: at least once into the cluster, once per ``_id``: the ``index``
action overwrites a document of the same ``_id`` (a replayed batch leaves the same
documents), or with ``action: create`` a 409 (the ``_id`` exists: written before) counts
as written. ``_bulk`` answers once the documents are in the translog, which is durable.
No answer, a 429, a 5xx, 401/403 or any other failed request is an outage:
:class:`~rtclake.errors.SinkError`, the batch stays in the spool and is retried with
backoff. Per document, a 2xx is stored; a 429, 5xx, 404 (no index, auto-creation off),
403 (a read-only index) or 409 on ``index`` is retried the same way, and the retry of the
batch sends only the documents not answered yet. A 400, 413 or 422 for a document
(``mapper_parsing_exception``, ``document_parsing_exception``, ``illegal_argument_exception``,
...) refuses it for good: it goes to ``dead_letters`` with the status, the error type and
the reason, once the rest of the batch is stored.

What it reports: the delivery's metrics under the sink's name
(``rtclake_batch_write_seconds{sink}``, ``rtclake_sink_errors_total{sink}``,
``rtclake_records_stored_total{sink,table}``, ``rtclake_dead_letters_total{sink,table}``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from rtclake.errors import ConfigError, SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink, json_bytes, rows_taken
from rtclake.sinks.webhook import records
from rtclake.tables import DEAD_LETTERS, Table, TableRegistry

Flavor = Literal["elasticsearch", "opensearch"]
ExtraMapping = Literal["flattened", "flat_object", "object", "disabled"]

# What _bulk answers for each item; the rest of an item's answer is not read.
FILTER_PATH = "errors,items.*.status,items.*.error"
# Per-document statuses that refuse the document for good (its content is at fault).
REFUSED = {400, 413, 422}
# Characters an index name cannot hold (Elasticsearch's and OpenSearch's rule).
_BAD_INDEX_CHARS = set('\\/*?"<>| ,#:')
_DIRECTIVE = re.compile(r"%[-_0^#]?[A-Za-z]")
# Longest keyword indexed; longer strings stay in _source only (a keyword term is at
# most 32766 bytes, which 8191 characters of UTF-8 cannot exceed).
IGNORE_ABOVE = 8191


class ElasticsearchConfig(SinkConfig):
    """``type: elasticsearch``: one document per row, ``_id`` its record id, in an index
    per table and day; ``flavor: opensearch`` for an OpenSearch cluster."""

    flavor: Flavor = Field(
        default="elasticsearch",
        description="elasticsearch: the official elasticsearch client; opensearch: opensearch-py",
    )
    urls: list[str] = Field(
        default=["http://127.0.0.1:9200"],
        description="the cluster's nodes (http:// or https://; credentials go in api_key or"
        " username/password)",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Elasticsearch: an API key (the encoded id:key), sent as `Authorization:"
        " ApiKey` (masked)",
    )
    username: str | None = Field(default=None, description="basic authentication's user")
    password: SecretStr | None = Field(
        default=None, description="basic authentication's password (masked)"
    )
    ca_certs: str | None = Field(
        default=None, description="a CA bundle (PEM file) that signs the cluster's certificate"
    )
    verify_certs: bool = Field(default=True, description="check the cluster's TLS certificate")
    index: str = Field(
        default="rtclake-{table}-%Y.%m.%d",
        description="the index of a record: {table} is the table's name, strftime directives"
        " take the record's time in UTC (%Y.%m.%d: a daily index); lowercase",
    )
    tables: list[str] | None = Field(
        default=None,
        description="the tables written; default every table but dead_letters (of outbox,"
        " the rows addressed to this sink)",
    )
    action: Literal["index", "create"] = Field(
        default="index",
        description="index: a replay overwrites the document of the same _id; create: it is"
        " answered 409, which counts as written",
    )
    template: bool = Field(
        default=True,
        description="put an index template per table (mappings from the table's schema) at start",
    )
    template_priority: int = Field(
        default=200, ge=0, description="the templates' priority over others matching the indices"
    )
    index_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="index settings the templates give new indices, e.g."
        " {number_of_replicas: 0} on a single node",
    )
    extra: ExtraMapping | None = Field(
        default=None,
        description="the mapping of `extra`: flattened (default on Elasticsearch),"
        " flat_object (default on OpenSearch, 2.7+), object (dynamic fields), disabled"
        " (kept in _source only)",
    )
    chunk_size: int = Field(default=1000, gt=0, description="documents per _bulk request at most")
    chunk_bytes: int = Field(
        default=5 * 1024 * 1024, gt=0, description="bytes of a _bulk request's body at most"
    )
    timeout: float = Field(default=30.0, gt=0, description="seconds one request may take")

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


# Mappings


_KIND_MAPPINGS: dict[str, dict[str, Any]] = {
    "id": {"type": "keyword", "ignore_above": IGNORE_ABOVE},
    "string": {"type": "keyword", "ignore_above": IGNORE_ABOVE},
    "time": {"type": "date"},
    "float": {"type": "double"},
    "int": {"type": "long"},
    "bool": {"type": "boolean"},
    "binary": {"type": "binary"},
    # any JSON value (an object, a list, a scalar): kept in _source, not indexed
    "json": {"type": "object", "enabled": False},
}
_EXTRA_MAPPINGS: dict[str, dict[str, Any]] = {
    "flattened": {"type": "flattened"},
    "flat_object": {"type": "flat_object"},
    "object": {"type": "object", "dynamic": True},
    "disabled": {"type": "object", "enabled": False},
}
_ENVELOPE_KINDS = {"record_id": "id", "time": "time", "received_at": "time", "source": "string",
                   "stream": "string", "kind": "string", "type": "string"}  # fmt: skip


def mappings(table: Table, extra: ExtraMapping) -> dict[str, Any]:
    """The mappings of ``table``'s documents: a property per column of its schema."""
    kinds = _ENVELOPE_KINDS | {c.name: c.kind for c in table.columns}
    properties: dict[str, Any] = {}
    for name in table.schema.names:
        if name == "extra":
            properties[name] = dict(_EXTRA_MAPPINGS[extra])
        else:
            properties[name] = dict(_KIND_MAPPINGS[kinds.get(name, "json")])
    return {"properties": properties}


# Index names


def index_name(pattern: str, table: str, time: dt.datetime) -> str:
    """The index of a record of ``table`` at ``time`` (UTC)."""
    return time.astimezone(dt.UTC).strftime(pattern.replace("{table}", table))


def index_glob(pattern: str, table: str) -> str:
    """The index pattern matching every index of ``table`` (strftime directives as ``*``)."""
    text = pattern.replace("{table}", table).replace("%%", "\0")
    # directives joined by punctuation (%Y.%m.%d) make one wildcard
    return re.sub(r"\*([^a-z0-9*]*\*)*", "*", _DIRECTIVE.sub("*", text)).replace("\0", "%")


def template_name(pattern: str, table: str) -> str:
    """The index template's name: the glob without its wildcards (``rtclake-telemetry``)."""
    return re.sub(r"[-._]*\*[-._]*", "-", index_glob(pattern, table)).strip("-._") or table


def check_pattern(pattern: str, tables: Sequence[str]) -> str | None:
    """What is wrong with an index pattern for ``tables``, or None."""
    if len(tables) > 1 and "{table}" not in pattern:
        return "must hold {table} when more than one table is written"
    sample = index_name(
        pattern, tables[0] if tables else "t", dt.datetime(2026, 11, 20, 12, 34, 56)
    )
    if sample != sample.lower():
        return f"makes {sample!r}: index names are lowercase"
    bad = sorted(_BAD_INDEX_CHARS & set(sample))
    if bad or sample[:1] in "-_+." or len(sample.encode()) > 255:
        return f"makes {sample!r}: not an index name (no {''.join(bad) or '-_+. first'})"
    return None


# Documents


@dataclass(frozen=True)
class Item:
    """One document of a batch: the row it comes from and its two NDJSON lines."""

    table: str
    row: int
    lines: bytes


# Client calls, by flavor


class _Client:
    """The two requests the sink makes, through the flavor's official client, with every
    failure of a request as :class:`SinkError`."""

    def __init__(self, config: ElasticsearchConfig) -> None:
        self.config = config
        self.flavor = config.flavor
        auth: dict[str, Any] = {}
        tls: dict[str, Any] = {}
        if config.ca_certs:
            tls["ca_certs"] = config.ca_certs
        if not config.verify_certs:
            tls |= {"verify_certs": False, "ssl_show_warn": False}
        retries = len(config.urls) - 1  # another node on no answer; the delivery backs off
        if self.flavor == "elasticsearch":
            from elasticsearch import Elasticsearch

            if config.api_key is not None:
                auth["api_key"] = config.api_key.get_secret_value()
            if config.username is not None:
                password = config.password.get_secret_value() if config.password else ""
                auth["basic_auth"] = (config.username, password)
            self.client: Any = Elasticsearch(
                config.urls, request_timeout=config.timeout, max_retries=retries,
                retry_on_timeout=False, **auth, **tls,
            )  # fmt: skip
        else:
            from opensearchpy import OpenSearch

            if config.username is not None:
                password = config.password.get_secret_value() if config.password else ""
                auth["http_auth"] = (config.username, password)
            self.client = OpenSearch(
                config.urls, timeout=config.timeout, max_retries=retries,
                retry_on_timeout=False, **auth, **tls,
            )  # fmt: skip

    def close(self) -> None:
        self.client.close()

    def _errors(self) -> tuple[type[BaseException], ...]:
        if self.flavor == "elasticsearch":
            import elastic_transport
            import elasticsearch

            return (elastic_transport.TransportError, elasticsearch.ApiError,
                    elasticsearch.SerializationError)  # fmt: skip
        import opensearchpy

        return (opensearchpy.OpenSearchException,)

    def _failed(self, what: str, exc: BaseException) -> SinkError:
        meta = getattr(exc, "meta", None)
        status = getattr(meta, "status", None) or getattr(exc, "status_code", None)
        answer = getattr(exc, "body", None) or getattr(exc, "info", None)
        detail = str(exc)
        if isinstance(answer, dict) and answer.get("error"):
            detail = _reason(answer["error"])
        text = f"{self.flavor}: {what} failed: {type(exc).__name__}"
        if isinstance(status, int):
            text += f" {status}"
        text += f": {detail[:300]}"
        if type(exc).__name__ == "UnsupportedProductError":
            text += " (not Elasticsearch: an OpenSearch cluster takes `flavor: opensearch`)"
        return SinkError(text)

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.client.indices.put_index_template(name=name, body=body)
        except self._errors() as exc:
            raise self._failed(f"index template {name}", exc) from exc

    def bulk(self, body: bytes) -> dict[str, Any]:
        try:
            if self.flavor == "elasticsearch":
                answer = self.client.bulk(operations=body, filter_path=FILTER_PATH)
            else:
                ndjson = {"content-type": "application/x-ndjson"}
                answer = self.client.bulk(body=body, filter_path=FILTER_PATH, headers=ndjson)
        except self._errors() as exc:
            raise self._failed("_bulk", exc) from exc
        result = answer.body if hasattr(answer, "body") else answer
        if not isinstance(result, dict):
            raise SinkError(f"{self.flavor}: _bulk answered {str(result)[:200]!r}")
        return result


# The sink


class ElasticsearchSink(Sink):
    """Writes rows as documents with ``_bulk`` (see the module doc)."""

    def __init__(self, config: ElasticsearchConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.needs_record_id = True  # every document's _id
        self.table_names = config.tables or [t for t in tables.names() if t != DEAD_LETTERS.name]
        self.extra: ExtraMapping = config.extra or (
            "flattened" if config.flavor == "elasticsearch" else "flat_object"
        )
        self._client: _Client | None = None
        self._templated = not config.template
        # what the earlier tries of a batch that met an outage stored (or refused), by
        # (table, row): its retry sends the rest
        self._batch = ""
        self._done: set[tuple[str, int]] = set()
        self._refused: dict[str, list[tuple[int, str]]] = {}

    # lifecycle

    def start(self) -> None:
        if self._client is None:
            self._client = _Client(self.config)
        self._ensure_templates()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def templates(self) -> dict[str, dict[str, Any]]:
        """The index templates the sink puts, by name."""
        out = {}
        for name in self.table_names:
            if name not in self.tables:
                continue
            template: dict[str, Any] = {"mappings": mappings(self.tables[name], self.extra)}
            if self.config.index_settings:
                template["settings"] = dict(self.config.index_settings)
            out[template_name(self.config.index, name)] = {
                "index_patterns": [index_glob(self.config.index, name)],
                "priority": self.config.template_priority,
                "template": template,
                "_meta": {"managed_by": "rtclake", "table": name},
            }
        return out

    def _ensure_templates(self) -> None:
        if self._templated:
            return
        assert self._client is not None
        for name, body in self.templates().items():
            self._client.put_template(name, body)
        self._templated = True

    # documents

    def items(self, batch: Batch) -> Iterator[Item]:
        """The documents of ``batch``, in the order of its tables and rows."""
        pattern, verb = self.config.index, self.config.action
        for name in self.table_names:
            if name not in batch.tables:
                continue
            for row, record in records(batch, self.tables, name, self.name, as_written=True):
                record_id = record["record_id"]
                index = index_name(pattern, name, record["time"])
                action = json_bytes({verb: {"_index": index, "_id": record_id}})
                yield Item(name, row, action + b"\n" + json_bytes(record) + b"\n")

    def _chunks(self, items: list[Item]) -> Iterator[list[Item]]:
        chunk: list[Item] = []
        size = 0
        for item in items:
            if chunk and (len(chunk) >= self.config.chunk_size
                          or size + len(item.lines) > self.config.chunk_bytes):  # fmt: skip
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += len(item.lines)
        if chunk:
            yield chunk

    # writing

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.table_names, self.name)

    def write(self, batch: Batch) -> None:
        if self._client is None:
            self.start()
        self._ensure_templates()
        assert self._client is not None
        if batch.name != self._batch:
            self._batch, self._done, self._refused = batch.name, set(), {}
        todo = [i for i in self.items(batch) if (i.table, i.row) not in self._done]
        retry: list[str] = []
        for chunk in self._chunks(todo):
            answer = self._client.bulk(b"".join(item.lines for item in chunk))
            results = answer.get("items") or []
            if len(results) != len(chunk):
                raise SinkError(
                    f"{self.config.flavor}: _bulk answered {len(results)} items for {len(chunk)}"
                )
            for item, result in zip(chunk, results, strict=True):
                verdict = self._classify(result)
                if verdict is None:
                    self._done.add((item.table, item.row))
                elif verdict[0]:
                    self._done.add((item.table, item.row))
                    self._refused.setdefault(item.table, []).append((item.row, verdict[1]))
                else:
                    retry.append(verdict[1])
        if retry:
            raise SinkError(
                f"{self.config.flavor}: {len(retry)} of {len(todo)} documents to retry,"
                f" e.g. {retry[0]}"
            )
        # done with the batch: a later write of it (a replay) sends it all again
        refused, self._batch, self._done, self._refused = self._refused, "", set(), {}
        if refused:
            raise Rejected(refused)

    def _classify(self, result: dict[str, Any]) -> tuple[bool, str] | None:
        """None: stored; (True, reason): refused for good; (False, reason): retried."""
        outcome: dict[str, Any] = next(iter(result.values()), {}) if result else {}
        status = int(outcome.get("status") or 0)
        if 200 <= status < 300:
            return None
        if status == 409 and self.config.action == "create":
            return None  # the _id is there: written before
        reason = f"{self.config.flavor} {status}: {_reason(outcome.get('error'))}"[:500]
        return (status in REFUSED, reason)


def _reason(error: Any) -> str:
    """An item's error as ``type: reason (caused by type: reason)``."""
    if not isinstance(error, dict):
        return str(error)
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict):
        text += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    return text


def build(config: ElasticsearchConfig, ctx: BuildContext) -> ElasticsearchSink:
    where = f"sinks.{ctx.name}"
    unknown = [name for name in config.tables or () if name not in ctx.tables]
    if unknown:
        known = ", ".join(ctx.tables.names())
        raise ConfigError(f"{where}.tables: unknown tables {unknown} (known: {known})")
    sink = ElasticsearchSink(config, ctx.tables, ctx.name)
    problem = check_pattern(config.index, sink.table_names)
    if problem:
        raise ConfigError(f"{where}.index: {config.index!r} {problem}")
    if not config.urls:
        raise ConfigError(f"{where}.urls: name at least one node")
    for url in config.urls:
        if not re.match(r"https?://[^/@]+(/|$)", url):
            raise ConfigError(
                f"{where}.urls: {url.split('@')[-1]!r} is not http(s)://host:port without"
                " credentials (those go in api_key or username/password)"
            )
    if config.api_key is not None and config.username is not None:
        raise ConfigError(f"{where}: api_key or username/password, not both")
    if config.flavor == "opensearch" and config.api_key is not None:
        raise ConfigError(f"{where}.api_key: OpenSearch takes username/password")
    if config.flavor == "opensearch" and config.extra == "flattened":
        raise ConfigError(f"{where}.extra: OpenSearch has flat_object, not flattened")
    if config.flavor == "elasticsearch" and config.extra == "flat_object":
        raise ConfigError(f"{where}.extra: Elasticsearch has flattened, not flat_object")
    return sink


ELASTICSEARCH = ComponentType(
    "sink", "elasticsearch", ElasticsearchConfig, build,
    "Records into Elasticsearch or OpenSearch: _bulk by record id, daily indices, templates.",
)  # fmt: skip
