"""The webhook sink: records as JSON, POSTed to a URL.

What it accepts: the rows of the ``alerts`` table whose ``notify`` names this sink, the
rows of the ``outbox`` table addressed to it (a broker's ``ctx.emit(record,
sinks=[name])``, whatever ``tables`` says), and every row of the other tables listed in
``tables``. One POST carries rows of one table of
one batch, at most ``max_records`` of them: ``{"table": ..., "batch": ..., "records":
[...]}``; a record is the row as JSON (times in RFC 3339, JSON columns and ``extra`` as
objects, BLOB columns as base64 text) with its ``record_id`` (an alert also has its
``id``), by which a receiver drops a replay.

What it guarantees: at least once. A 2xx answer delivers the POST. No answer (connection
refused, a timeout), a 5xx, 408 or 429 is an outage: :class:`~rtclake.errors.SinkError`,
so the batch stays in the spool and is retried with backoff; the POSTs of it already
answered are not sent again while the process runs. Any other answer (4xx, a redirect)
refuses its records for good: they go to the ``dead_letters`` table with the status and
the start of the answer. The writer takes batches in order for every sink, so a receiver
that stays down would hold up the lake too: once it has been out for ``give_up_after``
seconds, the undelivered records of the batch at hand go to ``dead_letters``, and so do
those of each later batch whose first POST fails, until the receiver answers again (0:
never give up).

What it reports: the delivery's metrics under the sink's name
(``rtclake_sink_errors_total{sink}``, ``rtclake_dead_letters_total{sink,table}``, ...).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pydantic import Field, SecretStr

from rtclake.config import Duration
from rtclake.errors import SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import (
    Batch,
    Rejected,
    Sink,
    addressed,
    check_tables,
    gave_up,
    json_as_written,
    json_bytes,
    json_value,
    rows_taken,
)
from rtclake.tables import ALERTS, OUTBOX, TableRegistry

if TYPE_CHECKING:
    import httpx

Refusals = dict[str, list[tuple[int, str]]]
# Answers that say "not now" rather than "never": retried.
_TRANSIENT = {408, 425, 429}


class HttpSinkConfig(SinkConfig):
    """What the HTTP sinks share."""

    url: SecretStr = Field(description="where to POST (masked in `rtclake config`)")
    timeout: float = Field(default=10.0, gt=0, description="seconds one POST may take")
    give_up_after: Duration = Field(
        default=900.0,
        ge=0,
        description="seconds the receiver may be out before undelivered records go to"
        " dead_letters (until it answers again), so the spool flows; 0: retry for ever",
    )


class WebhookConfig(HttpSinkConfig):
    """``type: webhook``."""

    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="sent with every POST, e.g. Authorization (masked)"
    )
    tables: list[str] = Field(
        default=["alerts"],
        description="the tables whose rows are sent; of alerts, the rows whose notify"
        " names this sink (the outbox rows addressed to it are sent in any case)",
    )
    max_records: int = Field(default=500, gt=0, description="records per POST at most")


class Poster:
    """POSTs for one HTTP sink: one client, the answer's classification, what of the
    current batch was answered already, and since when the receiver has been out (until
    it answers again: a long outage gives up on each later batch at its first try)."""

    def __init__(
        self,
        config: HttpSinkConfig,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.headers = {"content-type": "application/json", **(headers or {})}
        self._client: httpx.Client | None = None
        self._batch = ""
        self._answered: set[str] = set()
        self._refused: Refusals = {}
        self._outage_since: float | None = None

    def start(self) -> None:
        import httpx  # here, not at import: `rtclake import` and `query` load the registry

        self._client = httpx.Client(
            timeout=self.config.timeout, headers=self.headers, follow_redirects=False
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def begin(self, batch: Batch) -> None:
        """Start (or retry) ``batch``: what a retry of the same batch already did stays."""
        if batch.name != self._batch:
            self._batch = batch.name
            self._answered, self._refused = set(), {}

    def send(self, key: str, body: Any, table: str, rows: list[int]) -> None:
        """POST ``body`` as JSON, unless part ``key`` of this batch was answered already;
        ``rows`` of ``table`` are refused for good on a refusing answer. Raises
        :class:`SinkError` for an outage."""
        if key in self._answered:
            return
        import httpx

        assert self._client is not None, "start() first"
        try:
            answer = self._client.post(self.config.url.get_secret_value(), content=json_bytes(body))
        except httpx.HTTPError as exc:  # no answer: connection refused, reset, timeout
            raise SinkError(f"POST failed: {type(exc).__name__}: {exc}") from exc
        status = answer.status_code
        if status >= 500 or status in _TRANSIENT:
            raise SinkError(f"POST answered {status}: {answer.text[:200]}")
        self._outage_since = None
        if not 200 <= status < 300:
            reason = f"POST answered {status}: {answer.text[:200]}"
            self._refused.setdefault(table, []).extend((row, reason) for row in rows)
        self._answered.add(key)

    def finish(self, pending: dict[str, list[int]], outage: SinkError | None) -> None:
        """After the parts of the batch were tried: raise the outage (while it has lasted
        less than ``give_up_after``), or :class:`Rejected` naming what was refused (and,
        once given up, what is still ``pending``), or return: all delivered."""
        refused = {table: list(rows) for table, rows in self._refused.items()}
        given_up: str | None = None
        if outage is not None:
            now = self.clock()
            if self._outage_since is None:
                self._outage_since = now
            given_up = gave_up(outage, self._outage_since, now, self.config.give_up_after)
            if given_up is None:
                raise outage
            for table, rows in pending.items():
                refused.setdefault(table, []).extend((row, given_up) for row in rows)
        if refused:
            raise Rejected(refused, outage=given_up)


def records(
    batch: Batch, tables: TableRegistry, name: str, sink: str | None = None,
    *, as_written: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:  # fmt: skip
    """``(row index, record)`` pairs of ``batch.tables[name]``: each row as JSON-ready
    values, the table's JSON columns and ``extra`` read (:func:`json_value`: every number
    kept, one beyond a float's range too) or, ``as_written``, kept as their JSON text
    for a sink that sends JSON (:func:`json_as_written`: nothing read into a float and
    back). Of the ``outbox`` table, a ``sink`` gets only the rows addressed to it (its
    name in ``sinks``)."""
    table: pa.Table = batch.tables[name]
    parsed = {"extra"}
    binary: set[str] = set()
    if name in tables:
        parsed |= {c.name for c in tables[name].columns if c.kind == "json"}
        binary = {c.name for c in tables[name].columns if c.kind == "binary"}
    read = json_as_written if as_written else json_value
    for index, row in enumerate(table.to_pylist()):
        if sink is not None and name == OUTBOX.name and not addressed(row.get("sinks"), sink):
            continue
        for column in parsed & row.keys():
            if isinstance(row[column], str):
                row[column] = read(row[column])
        for column in binary & row.keys():  # bytes as JSON: base64
            if isinstance(row[column], bytes):
                row[column] = base64.b64encode(row[column]).decode("ascii")
        yield index, row


def alerts_for(
    batch: Batch, tables: TableRegistry, sink: str, *, as_written: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """The rows of the ``alerts`` table in ``batch`` whose ``notify`` names ``sink``."""
    named = alerts_naming(batch, sink)
    if not named:
        return []
    rows = records(batch, tables, ALERTS.name, as_written=as_written)
    return [(index, row) for index, row in rows if index in named]


def alerts_naming(batch: Batch, sink: str) -> set[int]:
    """The indices of the rows of the ``alerts`` table in ``batch`` whose ``notify``
    names ``sink``."""
    table = batch.tables.get(ALERTS.name)
    if table is None or "notify" not in table.column_names:
        return set()
    return {
        index for index, text in enumerate(table["notify"].to_pylist()) if addressed(text, sink)
    }


def outbox_for(batch: Batch, tables: TableRegistry, sink: str) -> list[tuple[int, dict[str, Any]]]:
    """The rows of the ``outbox`` table in ``batch`` (records a broker addressed to
    sinks) whose ``sinks`` names ``sink``."""
    if OUTBOX.name not in batch.tables:
        return []
    return list(records(batch, tables, OUTBOX.name, sink))


class Webhook(Sink):
    """POSTs the rows of some tables (the alerts naming it, the outbox rows addressed to
    it) as JSON to a URL."""

    def __init__(self, config: WebhookConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        # the writer derives record ids of tables with an identity only for sinks that ask
        self.needs_record_id = any(tables[t].identity for t in config.tables if t in tables)
        headers = {key: value.get_secret_value() for key, value in config.headers.items()}
        self.poster = Poster(config, headers)

    def start(self) -> None:
        self.poster.start()

    def close(self) -> None:
        self.poster.close()

    @property
    def table_names(self) -> list[str]:
        """The tables it posts rows of: those of ``tables``, and ``outbox`` for the rows
        a broker addressed to it."""
        names = list(self.config.tables)
        return names if OUTBOX.name in names else [*names, OUTBOX.name]

    def taken(self, batch: Batch) -> dict[str, int]:
        others = [name for name in self.table_names if name != ALERTS.name]
        counts = rows_taken(batch, others, self.name)
        if ALERTS.name in self.config.tables and ALERTS.name in batch.tables:
            counts[ALERTS.name] = len(alerts_naming(batch, self.name))
        return counts

    def write(self, batch: Batch) -> None:
        self.poster.begin(batch)
        pending: dict[str, list[int]] = {}
        outage: SinkError | None = None
        for name in self.table_names:
            if name not in batch.tables:
                continue
            if name == ALERTS.name:
                rows = alerts_for(batch, self.tables, self.name, as_written=True)
            else:
                rows = list(records(batch, self.tables, name, self.name, as_written=True))
            size = self.config.max_records
            for start in range(0, len(rows), size):
                part = rows[start : start + size]
                indices = [index for index, _ in part]
                if outage is not None:  # the receiver is down: the rest waits for the retry
                    pending.setdefault(name, []).extend(indices)
                    continue
                body = {"table": name, "batch": batch.name, "records": [r for _, r in part]}
                try:
                    self.poster.send(f"{name}:{start}", body, name, indices)
                except SinkError as exc:
                    outage = exc
                    pending.setdefault(name, []).extend(indices)
        self.poster.finish(pending, outage)


def build(config: WebhookConfig, ctx: BuildContext) -> Webhook:
    check_tables(config.tables, ctx)
    return Webhook(config, ctx.tables, ctx.name)


WEBHOOK = ComponentType(
    "sink", "webhook", WebhookConfig, build, "Records as JSON, POSTed to a URL (alerts, ...)."
)
