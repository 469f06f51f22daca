"""The nats sink: records published to NATS, a subject per table, through JetStream when a
stream takes the subject (de-duplicated by record id).

What it accepts: the rows of the tables listed in ``tables`` (default: every table but
``dead_letters``; of ``outbox``, the rows a broker addressed to this sink). Each record is
one message on the subject ``{prefix}{table}`` (``rtclake.telemetry``): the row as JSON
(times in RFC 3339, JSON columns and ``extra`` as objects, BLOB columns as base64 text)
with its ``record_id``, which is also the message's ``Nats-Msg-Id`` header.

With ``stream`` set, the sink creates that JetStream stream when it is missing (subjects
``stream_subjects``, default ``{prefix}>``; ``duplicate_window``). A subject some stream
takes (``jetstream: auto``, the default, asks the server which one when the sink connects;
``always`` requires one) is published through JetStream, and each record waits for the
stream's PubAck; other subjects get core NATS publishes, followed by a flush.

What it guarantees: through JetStream, each record stored once: the stream drops a message
whose ``Nats-Msg-Id`` it has seen within its duplicate window (the PubAck says
``duplicate``), so a replayed batch (the writer delivers at least once) stores nothing
twice, as long as the replay comes within ``duplicate_window`` (keep it above the longest
time a batch may wait for a retry, a restart included). A PubAck means the stream stored
the message as its own settings make durable (storage, replicas, sync interval). Through
core NATS: at least once to the subscribers connected at the time, a flush confirming the
server read the messages (core NATS keeps nothing); a replay publishes again, and a
subscriber drops it by ``Nats-Msg-Id``.

No server (connection refused, a timeout, the connection lost), no PubAck in ``timeout``,
no stream for a subject that needs one, or a stream answering 503 is an outage:
:class:`~rtclake.errors.SinkError`, the batch stays in the spool and is retried with
backoff; the records of it already acknowledged are not published again by that retry.
Refused for good (to ``dead_letters``, with the reason): a message over the server's
``max_payload``, and one a stream refuses with a 400 (over its ``max_msg_size``). The
writer takes batches in order for every sink, so a server that stays down would hold up
the lake too: once it has been out for ``give_up_after`` seconds, the unacknowledged
records of the batch at hand go to ``dead_letters``, and so do those of each later batch
whose first try fails, until the server answers again (0: never give up).

What it reports: the delivery's metrics under the sink's name
(``rtclake_sink_errors_total{sink}``, ``rtclake_dead_letters_total{sink,table}``, ...);
its log says how many records of a batch a stream had already (``duplicates``).

The client (nats-py) is asyncio: the sink runs an event loop on a thread of its own and
hands it each call, so its methods keep running on the writer's delivery thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import structlog
from pydantic import Field, SecretStr

from rtclake.config import Duration
from rtclake.errors import SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink, check_tables, gave_up, json_bytes, rows_taken
from rtclake.sinks.webhook import records
from rtclake.tables import DEAD_LETTERS, TableRegistry

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = structlog.get_logger(__name__)

T = TypeVar("T")
MSG_ID = "Nats-Msg-Id"


class NATSConfig(SinkConfig):
    """``type: nats``."""

    url: SecretStr = Field(
        default=SecretStr("nats://127.0.0.1:4222"),
        description="nats://[user:password@|token@]host:port (tls:// for TLS), several"
        " separated by commas (masked)",
    )
    tables: list[str] | None = Field(
        default=None, description="the tables to publish; default every table but dead_letters"
    )
    prefix: str = Field(default="rtclake.", description="subjects are {prefix}{table}")
    jetstream: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="auto: JetStream (PubAck, de-duplication) for the subjects a stream"
        " takes, core NATS for the others; always: every subject needs a stream (none is an"
        " outage); never: core NATS only",
    )
    stream: str | None = Field(
        default=None,
        description="a JetStream stream to create when missing (left as is if it exists)",
    )
    stream_subjects: list[str] | None = Field(
        default=None, description="the subjects of a created stream; default {prefix}>"
    )
    duplicate_window: Duration = Field(
        default=600.0,
        gt=0,
        description="of a created stream: seconds a message id is remembered against replays",
    )
    timeout: float = Field(
        default=10.0, gt=0, description="seconds to connect, and to wait for a PubAck or flush"
    )
    in_flight: int = Field(
        default=256,
        gt=0,
        le=10_000,
        description="JetStream publishes awaiting their PubAck at once",
    )
    give_up_after: Duration = Field(
        default=900.0,
        ge=0,
        description="seconds the server may be out before unacknowledged records go to"
        " dead_letters (until it answers again), so the spool flows; 0: retry for ever",
    )


@dataclass(frozen=True)
class Message:
    """One record to publish: its table and row in the batch, subject, id and JSON."""

    table: str
    row: int
    subject: str
    record_id: str
    payload: bytes


class EventLoop:
    """An asyncio loop on a thread of its own; :meth:`run` hands it a coroutine and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SinkError(f"nats: no answer within {timeout:g} s") from None

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it, end its thread, close it."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():

            async def cancel_the_rest() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(5)
            except Exception as exc:
                log.debug("nats: tasks left at close", error=str(exc))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class NATSSink(Sink):
    """Publishes rows of some tables to NATS (see the module doc)."""

    def __init__(self, config: NATSConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.table_names = config.tables or [t for t in tables.names() if t != DEAD_LETTERS.name]
        self.needs_record_id = True  # the message ids are the record ids
        self.clock: Callable[[], float] = time.monotonic
        #: records a stream reported as duplicates (a replay), since the start
        self.duplicates = 0
        self._loop: EventLoop | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._through_jetstream: dict[str, bool] = {}  # subject -> JetStream?
        self._batch = ""
        self._done: set[int] = set()  # messages of the batch at hand acknowledged
        self._refused: dict[str, dict[int, str]] = {}
        self._outage_since: float | None = None

    # -- the loop and the connection --------------------------------------------------------

    def start(self) -> None:
        try:
            self._run(self._connect())
        except SinkError as exc:  # the first write connects (or counts the outage)
            log.warning("nats: server unreachable at start", sink=self.name, error=str(exc))

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._nc is not None:
            try:
                loop.run(self._disconnect(), self.config.timeout)
            except Exception as exc:
                log.debug("nats: close failed", sink=self.name, error=str(exc))
        loop.stop()

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop is None:
            self._loop = EventLoop(f"rtclake-nats-{self.name}")
        return self._loop.run(coro, timeout or 2 * self.config.timeout + 5)

    async def _connect(self) -> JetStreamContext:
        if self._nc is not None and self._nc.is_connected and self._js is not None:
            return self._js
        import nats
        from nats.js.errors import NotFoundError

        await self._disconnect()
        servers = [s.strip() for s in self.config.url.get_secret_value().split(",") if s.strip()]
        try:
            self._nc = await nats.connect(
                servers,
                name=f"rtclake-{self.name}",
                connect_timeout=self.config.timeout,
                # one connection at a time: lost, it closes and the next write connects
                # again (the delivery backs off between writes)
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=self._on_error,
            )
            self._js = self._nc.jetstream(timeout=self.config.timeout)
            if self.config.stream:
                await self._ensure_stream(self._js, self.config.stream)
            self._through_jetstream = {}
            if self.config.jetstream != "never":
                for table in self.table_names:
                    subject = self.config.prefix + table
                    try:
                        await self._js.find_stream_name_by_subject(subject)
                        self._through_jetstream[subject] = True
                    except NotFoundError:
                        self._through_jetstream[subject] = self.config.jetstream == "always"
        except _outages() as exc:
            await self._disconnect()
            raise SinkError(f"nats: cannot connect: {_text(exc)}") from exc
        return self._js

    async def _ensure_stream(self, js: JetStreamContext, name: str) -> None:
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(name)
            return
        except NotFoundError:
            pass
        subjects = self.config.stream_subjects or [self.config.prefix + ">"]
        await js.add_stream(
            StreamConfig(
                name=name, subjects=subjects, duplicate_window=self.config.duplicate_window
            )
        )
        log.info("nats: stream created", sink=self.name, stream=name, subjects=subjects)

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception as exc:
                log.debug("nats: close failed", sink=self.name, error=str(exc))

    async def _on_error(self, exc: Exception) -> None:
        # what it means reaches the delivery as a SinkError, which logs it
        log.debug("nats: connection error", sink=self.name, error=_text(exc))

    # -- writing ----------------------------------------------------------------------------

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.table_names, self.name)

    def write(self, batch: Batch) -> None:
        if batch.name != self._batch:
            self._batch, self._done, self._refused = batch.name, set(), {}
        messages = self._messages(batch)
        pending = [i for i in range(len(messages)) if i not in self._done]
        given_up: str | None = None
        try:
            timeout = self.config.timeout * (3 + len(pending) / self.config.in_flight) + 5
            duplicates = self._run(self._publish(messages, pending), timeout)
        except SinkError as outage:
            now = self.clock()
            if self._outage_since is None:
                self._outage_since = now
            given_up = gave_up(outage, self._outage_since, now, self.config.give_up_after)
            if given_up is None:
                raise
            for index in pending:
                if index not in self._done:
                    self._refuse(messages[index], given_up)
        else:
            self._outage_since = None
            self.duplicates += duplicates
            if duplicates:
                log.info("nats: replayed records the stream had already", sink=self.name,
                         batch=batch.name, duplicates=duplicates)  # fmt: skip
        refused = {t: sorted(rows.items()) for t, rows in self._refused.items()}
        self._batch = ""  # done: a replay of this batch is published again (and dropped)
        if refused:
            raise Rejected(refused, outage=given_up)

    def _messages(self, batch: Batch) -> list[Message]:
        messages = []
        for name in self.table_names:
            if name not in batch.tables or batch.tables[name].num_rows == 0:
                continue
            subject = self.config.prefix + name
            for index, row in records(batch, self.tables, name, self.name, as_written=True):
                messages.append(
                    Message(name, index, subject, str(row["record_id"]), json_bytes(row))
                )
        return messages

    def _refuse(self, message: Message, reason: str) -> None:
        self._refused.setdefault(message.table, {})[message.row] = reason

    async def _publish(self, messages: list[Message], pending: list[int]) -> int:
        """Publish ``pending`` of ``messages``; return how many a stream had already.
        Raises :class:`SinkError` for an outage once what could be published was."""
        js = await self._connect()
        assert self._nc is not None
        core = [i for i in pending if not self._through_jetstream.get(messages[i].subject)]
        streamed = [i for i in pending if self._through_jetstream.get(messages[i].subject)]
        limit = asyncio.Semaphore(self.config.in_flight)
        outages: list[BaseException] = []
        duplicates = 0

        async def one(index: int) -> None:
            nonlocal duplicates
            message = messages[index]
            async with limit:
                if outages:  # the server is out: the rest waits for the retry
                    return
                try:
                    # (not publish_async: nats-py 2.16 loses a stream's error reply there,
                    # leaving a refused message to time out as an outage)
                    ack = await js.publish(
                        message.subject, message.payload, timeout=self.config.timeout,
                        headers={MSG_ID: message.record_id},
                    )  # fmt: skip
                except Exception as exc:
                    reason = _refusal(exc)
                    if reason is not None:
                        self._refuse(message, reason)
                    elif isinstance(exc, _outages()):
                        outages.append(exc)
                        return
                    else:
                        raise
                else:
                    duplicates += bool(ack.duplicate)
                self._done.add(index)

        await asyncio.gather(*(one(index) for index in streamed))
        sent: list[int] = []
        for index in core:
            if outages:
                break
            message = messages[index]
            try:
                await self._nc.publish(
                    message.subject, message.payload, headers={MSG_ID: message.record_id}
                )
                sent.append(index)
            except Exception as exc:
                reason = _refusal(exc)
                if reason is None:
                    if not isinstance(exc, _outages()):
                        raise
                    outages.append(exc)
                    break
                self._refuse(message, reason)
                self._done.add(index)
        if sent and not outages:
            try:
                await self._nc.flush(timeout=self.config.timeout)  # type: ignore[arg-type]
                self._done.update(sent)
            except _outages() as exc:
                outages.append(exc)
        if outages:
            if self._nc is not None and not self._nc.is_connected:
                await self._disconnect()
            raise SinkError(f"nats: {_text(outages[0])}")
        return duplicates


@functools.cache
def _outages() -> tuple[type[BaseException], ...]:
    """What says the server is out (imported at first use, not with the registry)."""
    import nats.errors

    return (nats.errors.Error, OSError, TimeoutError, asyncio.TimeoutError)


def _refusal(exc: BaseException) -> str | None:
    """Why ``exc`` refuses its message for good, or None when it does not."""
    import nats.errors
    from nats.js.errors import APIError, ServiceUnavailableError

    if isinstance(exc, nats.errors.MaxPayloadError):
        return "nats: the message is over the server's max_payload"
    if (
        isinstance(exc, APIError)
        and not isinstance(exc, ServiceUnavailableError)
        and exc.code == 400
    ):
        return f"nats: the stream refused it: 400 {exc.description} (err_code {exc.err_code})"
    return None


def _text(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else text or name


def build(config: NATSConfig, ctx: BuildContext) -> NATSSink:
    check_tables(config.tables, ctx)
    return NATSSink(config, ctx.tables, ctx.name)


NATS = ComponentType(
    "sink", "nats", NATSConfig, build,
    "Records published to NATS, a subject per table; through JetStream de-duplicated by id.",
)  # fmt: skip
