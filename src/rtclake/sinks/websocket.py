"""The websocket sink: records pushed to a WebSocket receiver as JSON text messages.

What it accepts: the rows of the tables listed in ``tables`` (default: every table but
``dead_letters``; of ``outbox``, the rows a broker addressed to this sink). A record is
the row as JSON (times in RFC 3339, JSON columns and ``extra`` as objects, BLOB columns as
base64 text) with its ``record_id``. With ``chunk: 1`` (the default, one message per
record as Kraken's WebSocket adapter sends one message per payload) a message is
``{"record_id": ..., "table": ..., "batch": ..., "record": {...}}``; with a larger
``chunk`` it is ``{"table": ..., "batch": ..., "records": [...]}`` holding up to that many
records of one table and at most ``max_message_bytes``. The sink keeps one connection
(``url``, ``ws://`` or ``wss://``, with ``headers`` at the handshake) and opens a new one
when it dropped, at the next try of the delivery, which backs off between tries.

What it guarantees: at least once, by record id. The receiver drops a replay by its
``record_id``: a replayed batch (the writer delivers at least once) sends the same ids
again. Messages go out in groups of ``window``; a group counts as delivered when

- ``ack: false`` (default): the receiver answered a WebSocket ping sent after the group,
  which its WebSocket layer does only after reading every message before the ping (the
  receiver has read them; whether its application kept them is its business);
- ``ack: true``: the receiver answered ``{"ack": id}`` (or a list of ids) for every record
  of the group; ``{"nack": id, "reason": "..."}`` refuses that record for good.

No connection, a dropped connection, or no confirmation within ``timeout`` is an outage:
:class:`~rtclake.errors.SinkError`, the batch stays in the spool and is retried with
backoff; the groups of it already confirmed are not sent again by that retry, the others
are sent again (same ids). Refused for good (to ``dead_letters``, with the reason): a
record whose message would exceed ``max_message_bytes``, a record the receiver nacks, and
a message after which the receiver closes the connection with 1009 (message too big; the
sink then sends the rest of the batch one message at a time, to find it). The writer takes
batches in order for every sink, so a receiver that stays down would hold up the lake
too: as with the webhook sink, once it has been out for ``give_up_after`` seconds, the
unconfirmed records of the batch at hand go to ``dead_letters``, and so do those of each
later batch whose first try fails, until the receiver answers again (0: never give up).

What it reports: the delivery's metrics under the sink's name
(``rtclake_sink_errors_total{sink}``, ``rtclake_dead_letters_total{sink,table}``, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import structlog
from pydantic import Field, SecretStr

from rtclake.config import Duration
from rtclake.errors import ConfigError, SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink, check_tables, gave_up, json_bytes, rows_taken
from rtclake.sinks.webhook import records
from rtclake.tables import DEAD_LETTERS, TableRegistry

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

log = structlog.get_logger(__name__)

MESSAGE_TOO_BIG = 1009  # the close code of a receiver refusing a message for its size


class WebSocketConfig(SinkConfig):
    """``type: websocket``."""

    url: SecretStr = Field(
        description="ws:// or wss:// URL of the receiver (masked: it may carry a token)"
    )
    tables: list[str] | None = Field(
        default=None, description="the tables to send; default every table but dead_letters"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="sent with the opening handshake, e.g. Authorization (masked)",
    )
    chunk: int = Field(
        default=1,
        gt=0,
        le=10_000,
        description="records per message: 1 sends {record_id, table, batch, record};"
        " more sends {table, batch, records}",
    )
    max_message_bytes: int = Field(
        default=1_048_576,
        gt=0,
        description="the receiver's message size limit (websockets' default 1 MiB): a"
        " record whose message would be larger goes to dead_letters",
    )
    ack: bool = Field(
        default=False,
        description='wait for the receiver\'s {"ack": id} of every record ({"nack": id,'
        ' "reason": ...} refuses it for good); false: a pong after the messages confirms',
    )
    window: int = Field(
        default=500, gt=0, description="messages sent before waiting for their confirmation"
    )
    timeout: float = Field(
        default=10.0, gt=0, description="seconds to connect, and to wait for a confirmation"
    )
    give_up_after: Duration = Field(
        default=900.0,
        ge=0,
        description="seconds the receiver may be out before undelivered records go to"
        " dead_letters (until it answers again), so the spool flows; 0: retry for ever",
    )
    proxy: str | None = Field(
        default=None,
        description="an http:// or socks5:// proxy to connect through; default none"
        " (proxy environment variables are not read)",
    )


@dataclass(frozen=True)
class Message:
    """One message: the rows of one table it carries, their record ids, its JSON."""

    table: str
    rows: list[int]
    ids: list[str]
    body: bytes


class _TooBig(Exception):
    """The receiver closed the connection with 1009 (message too big)."""


class WebSocketSink(Sink):
    """Pushes rows of some tables to a WebSocket receiver (see the module doc)."""

    def __init__(self, config: WebSocketConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.table_names = config.tables or [t for t in tables.names() if t != DEAD_LETTERS.name]
        self.needs_record_id = True  # every message carries the record ids
        self._ws: ClientConnection | None = None
        self._stack: ExitStack | None = None  # holds the connection as its context
        # what of the batch at hand was done already (kept across its retries)
        self._batch = ""
        self._confirmed: set[int] = set()
        self._refused: dict[str, dict[int, str]] = {}
        self._careful = False  # after a 1009: one message at a time
        self._outage_since: float | None = None  # until the receiver answers again
        self.clock: Callable[[], float] = time.monotonic

    # -- connection -------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._connection()
        except SinkError as exc:  # the first write connects (or counts the outage)
            log.warning("websocket: receiver unreachable at start", sink=self.name,
                        error=str(exc))  # fmt: skip

    def close(self) -> None:
        self._drop()

    def _connection(self) -> ClientConnection:
        if self._ws is not None:
            return self._ws
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        headers = {key: value.get_secret_value() for key, value in self.config.headers.items()}
        stack = ExitStack()
        try:
            self._ws = stack.enter_context(connect(
                self.config.url.get_secret_value(),
                additional_headers=headers or None,
                open_timeout=self.config.timeout,
                close_timeout=min(self.config.timeout, 5.0),
                proxy=self.config.proxy,
                max_queue=None,  # the receiver's messages never stop pongs from being read
            ))  # fmt: skip
        except (WebSocketException, OSError) as exc:
            stack.close()
            raise SinkError(f"websocket: cannot connect: {type(exc).__name__}: {exc}") from exc
        self._stack = stack
        return self._ws

    def _drop(self) -> None:
        stack, self._stack, self._ws = self._stack, None, None
        if stack is not None:
            try:
                stack.close()  # closes the connection
            except Exception as exc:
                log.debug("websocket: close failed", sink=self.name, error=str(exc))

    # -- writing ----------------------------------------------------------------------------

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.table_names, self.name)

    def write(self, batch: Batch) -> None:
        if batch.name != self._batch:
            self._batch, self._confirmed, self._refused = batch.name, set(), {}
            self._careful = False
        messages = self._messages(batch)
        given_up: str | None = None
        try:
            self._deliver(messages)
        except SinkError as outage:
            now = self.clock()
            if self._outage_since is None:
                self._outage_since = now
            given_up = gave_up(outage, self._outage_since, now, self.config.give_up_after)
            if given_up is None:
                raise
            for index, message in enumerate(messages):
                if index not in self._confirmed:
                    self._refuse(message, given_up)
        refused = {t: sorted(rows.items()) for t, rows in self._refused.items()}
        self._batch = ""  # done: a replay of this batch is sent again (receivers drop it)
        if refused:
            raise Rejected(refused, outage=given_up)

    def _deliver(self, messages: list[Message]) -> None:
        """Send what of ``messages`` was not confirmed yet, a group at a time."""
        from websockets.exceptions import WebSocketException

        pending = [i for i in range(len(messages)) if i not in self._confirmed]
        while pending:
            group = pending[: 1 if self._careful else self.config.window]
            ws = self._connection()
            try:
                self._send(ws, messages, group)
            except _TooBig:
                self._drop()
                if len(group) > 1:  # which message? one at a time from here
                    self._careful = True
                    continue
                message = messages[group[0]]
                reason = (
                    f"the receiver closed the connection with {MESSAGE_TOO_BIG} (message too"
                    f" big) at a message of {len(message.body)} bytes"
                )
                self._refuse(message, reason)
                self._confirmed.add(group[0])
            except (WebSocketException, OSError) as exc:
                self._drop()
                raise SinkError(f"websocket: {type(exc).__name__}: {exc}") from exc
            self._outage_since = None  # the receiver answers
            pending = [i for i in pending if i not in self._confirmed]

    def _messages(self, batch: Batch) -> list[Message]:
        """The messages of ``batch``, the same for each of its tries; records too large
        for a message are refused here."""
        messages: list[Message] = []
        limit, batch_name = self.config.max_message_bytes, batch.name
        for name in self.table_names:
            if name not in batch.tables or batch.tables[name].num_rows == 0:
                continue
            rows = list(records(batch, self.tables, name, self.name, as_written=True))
            if self.config.chunk == 1:
                for index, row in rows:
                    record_id = str(row["record_id"])
                    body = json_bytes({"record_id": record_id, "table": name, "batch": batch_name,
                                  "record": row})  # fmt: skip
                    message = Message(name, [index], [record_id], body)
                    if len(body) > limit:
                        self._refuse(message, _oversize(len(body), limit))
                    else:
                        messages.append(message)
                continue
            head = len(json_bytes({"table": name, "batch": batch_name, "records": []}))
            part: list[tuple[int, bytes, str]] = []
            size = head
            for index, row in rows:
                encoded = json_bytes(row)
                if head + len(encoded) > limit:
                    self._refuse(Message(name, [index], [str(row["record_id"])], b""),
                                 _oversize(head + len(encoded), limit))  # fmt: skip
                    continue
                if part and (len(part) >= self.config.chunk or size + 1 + len(encoded) > limit):
                    messages.append(_chunk(name, batch_name, part))
                    part, size = [], head
                part.append((index, encoded, str(row["record_id"])))
                size += len(encoded) + (1 if len(part) > 1 else 0)
            if part:
                messages.append(_chunk(name, batch_name, part))
        return messages

    def _refuse(self, message: Message, reason: str, ids: set[str] | None = None) -> None:
        for row, record_id in zip(message.rows, message.ids, strict=True):
            if ids is None or record_id in ids:
                self._refused.setdefault(message.table, {})[row] = reason

    def _send(self, ws: ClientConnection, messages: list[Message], group: list[int]) -> None:
        """Send the ``group`` of ``messages`` and wait for its confirmation, marking what
        was confirmed (or nacked) in ``self._confirmed``."""
        from websockets.exceptions import ConnectionClosed

        try:
            for index in group:
                ws.send(messages[index].body, text=True)
            if self.config.ack:
                self._wait_acks(ws, messages, group)
            else:
                self._wait_pong(ws)
                self._confirmed.update(group)
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == MESSAGE_TOO_BIG:
                raise _TooBig() from exc
            raise

    def _wait_pong(self, ws: ClientConnection) -> None:
        while True:  # what the receiver says unasked is read and dropped
            try:
                ws.recv(timeout=0)
            except TimeoutError:
                break
        answered = ws.ping(ack_on_close=True)
        if not answered.wait(self.config.timeout):
            raise TimeoutError(f"no pong within {self.config.timeout:g} s")
        if ws.close_code is not None:  # the event was set by the closing
            raise ws.protocol.close_exc

    def _wait_acks(self, ws: ClientConnection, messages: list[Message], group: list[int]) -> None:
        waiting: dict[str, list[int]] = {}  # record id -> messages that still wait for it
        unsettled: dict[int, set[str]] = {}
        for index in group:
            unsettled[index] = set(messages[index].ids)
            for record_id in unsettled[index]:
                waiting.setdefault(record_id, []).append(index)
        deadline = time.monotonic() + self.config.timeout
        while waiting:
            try:
                data = ws.recv(timeout=max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise TimeoutError(
                    f"no acknowledgement of {len(waiting)} records within {self.config.timeout:g} s"
                ) from None
            answer = _answer(data)
            if answer is None:
                continue
            ids, reason = answer
            for record_id in ids:
                for index in waiting.pop(record_id, ()):
                    if reason is not None:
                        self._refuse(messages[index], reason, {record_id})
                    unsettled[index].discard(record_id)
                    if not unsettled[index]:
                        self._confirmed.add(index)


def _answer(data: str | bytes) -> tuple[list[str], str | None] | None:
    """``(record ids, None)`` of an ack, ``(record ids, reason)`` of a nack, None for any
    other message."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    for key in ("ack", "nack"):
        if key in value:
            ids = value[key] if isinstance(value[key], list) else [value[key]]
            reason = None
            if key == "nack":
                reason = f"the receiver refused it: {str(value.get('reason') or 'nack')[:500]}"
            return [str(i) for i in ids], reason
    return None


def _chunk(table: str, batch: str, part: list[tuple[int, bytes, str]]) -> Message:
    head = json_bytes({"table": table, "batch": batch})[:-1]  # without the closing brace
    body = head + b',"records":[' + b",".join(encoded for _, encoded, _ in part) + b"]}"
    return Message(table, [index for index, _, _ in part], [i for _, _, i in part], body)


def _oversize(size: int, limit: int) -> str:
    return f"a message of {size} bytes is over max_message_bytes ({limit})"


def build(config: WebSocketConfig, ctx: BuildContext) -> WebSocketSink:
    check_tables(config.tables, ctx)
    scheme = config.url.get_secret_value().split(":", 1)[0].lower()
    if scheme not in ("ws", "wss"):
        raise ConfigError(f"sinks.{ctx.name}.url: a ws:// or wss:// URL, not {scheme}://")
    return WebSocketSink(config, ctx.tables, ctx.name)


WEBSOCKET_SINK = ComponentType(
    "sink", "websocket", WebSocketConfig, build,
    "Records pushed to a WebSocket receiver as JSON messages carrying their record ids.",
)  # fmt: skip
