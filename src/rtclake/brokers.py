"""User brokers: code a user writes that receives records once they are durable, may reply
to the caller that waits, and may emit records (Kraken's "brokers", made safe).

A broker is a function ``handle(message, ctx)`` or a class whose instances have one
(built with the ``options`` of its configuration, with optional ``start()`` and
``close()``), named by import path in the configuration::

    processors:
      alarm:
        type: broker
        handler: "mybrokers.alarm:handle"     # module:attribute
        path: /etc/rtclake/brokers            # optional: a folder to import it from
        match: {source: sensors, topic: "sensors/+/temp"}
        priority: 10
        timeout: 2

The guide is ``docs/BROKERS.md``. How it runs (:class:`BrokerSet`, called by
:meth:`rtclake.intake.Intake.take`):

- **After durability.** The records of a hand-over are appended to the spool first; only
  then are they given to the brokers whose ``match`` they meet, one
  :class:`Message` per record. The source's acknowledgement (HTTP answer, gRPC reply,
  WebSocket ack, MQTT PUBACK) waits for the brokers, so what they emit is durable before
  the sender is told; a crash before that makes the sender retry: a record with the same
  id (the sender's key, or its own time) is stored once, and the brokers run again and
  emit the same records with the same ids.
- **Replies.** A broker returns None (no reply) or a reply: a :class:`rtclake.messages.Reply`,
  bytes, text or any JSON value. When several brokers reply to one message, the highest
  ``priority`` wins; equal priorities: the first in the configuration.
- **Emitting.** ``ctx.emit(record, table=..., stream=..., sinks=[...])`` stores a record
  through the intake like any other (routing, validation); ``sinks`` addresses it to
  named sinks through the ``outbox`` table. Brokers never call sinks themselves.
- **Isolation.** All matched brokers run at once, each call (one hand-over's records)
  on a thread of its own, their ``timeout``s counted from the same start; async handlers
  run on an event loop the broker keeps (one past its ``timeout`` is cancelled: the
  ``asyncio.CancelledError`` reaches its ``await``). A broker that raises, hangs, returns
  what cannot be sent or emits what its table refuses loses only its own output for that message
  (its reply and every record it emitted for it): the record is stored already, the
  other brokers reply. Counted in
  ``rtclake_processor_errors_total{processor, reason}`` and logged with the record id. A
  broker with ``concurrency`` calls still running past their timeout (hung) is skipped
  (``busy``) until one ends; calls in time are not limited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import fnmatch
import importlib
import inspect
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
from prometheus_client import Counter
from pydantic import Field, field_validator

from rtclake.config import Section
from rtclake.errors import ConfigError
from rtclake.messages import (
    COLLECTOR,
    CONTENT_TYPE,
    METADATA,
    PAYLOAD,
    RESERVED,
    TOPIC,
    Reply,
    payload_of,
)
from rtclake.metrics import Metrics
from rtclake.processors.base import Processor, Record
from rtclake.registry import ProcessorConfig
from rtclake.tables import OUTBOX

log = structlog.get_logger(__name__)

Patterns = str | list[str] | None


class BrokerMatch(Section):
    """What a broker handles; every given field must match (a list: any of its items)."""

    source: Patterns = Field(default=None, description="source names (the component's name)")
    table: Patterns = Field(default=None, description="table names")
    stream: Patterns = Field(default=None, description="stream names, shell patterns (sensor-*)")
    topic: Patterns = Field(
        default=None, description="MQTT topic filters (sensors/+/temp, sensors/#)"
    )
    content_type: Patterns = Field(
        default=None, description="content types, shell patterns (application/json, image/*)"
    )

    @field_validator("topic")
    @classmethod
    def _topic_filters(cls, value: Patterns) -> Patterns:
        from rtclake.sources.mqtt import filter_error

        for topic in _patterns(value) or ():
            if why := filter_error(topic):
                raise ValueError(f"{topic!r}: {why}")
        return value


class BrokerConfig(ProcessorConfig):
    """``type: broker``: a user's function or class run on each record it matches, after
    the record is durable (see docs/BROKERS.md)."""

    handler: str = Field(
        description="module:attribute of a function handle(message, ctx) or of a class"
        " whose instances have one"
    )
    path: Path | None = Field(
        default=None, description="a folder put first on the import path for the handler"
    )
    match: BrokerMatch = Field(default_factory=BrokerMatch, description="what it handles")
    priority: int = Field(
        default=0, description="when several brokers reply to a record, the highest wins"
    )
    concurrency: int = Field(
        default=4, ge=1, description="calls that may run at once (a hung call holds one)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for a class handler"
    )


def _patterns(value: Patterns) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT's rule: ``+`` one level, ``#`` (last) this level and all below; a filter
    starting with a wildcard does not match a topic starting with ``$``."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    parts, levels = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


@dataclass(frozen=True)
class Message:
    """One record as a broker gets it.

    ``data`` is the record's JSON object (without the transport's reserved keys), None
    when the payload was not a JSON object; ``payload`` the bytes as sent (a JSON object's
    are its keys re-encoded). ``record_id`` is the lake's id of the record (None for tables
    whose id comes from their columns).
    """

    data: dict[str, Any] | None
    payload: bytes
    source: str
    stream: str
    table: str
    record_id: str | None
    received_at: dt.datetime
    topic: str | None = None
    content_type: str | None = None
    collector: str | None = None
    metadata: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        record: Record,
        *,
        source: str,
        stream: str,
        table: str,
        record_id: str | None,
        received_at: dt.datetime,
    ) -> Message:
        metadata = record.get(METADATA)
        data = {k: v for k, v in record.items() if k not in RESERVED}
        return cls(
            data=None if PAYLOAD in record else data,
            payload=payload_of(record),
            source=source,
            stream=stream,
            table=table,
            record_id=record_id,
            received_at=received_at,
            topic=_text(record.get(TOPIC)),
            content_type=_text(record.get(CONTENT_TYPE)),
            collector=_text(record.get(COLLECTOR)),
            metadata=metadata if isinstance(metadata, dict) else None,
        )

    def json(self) -> Any:
        """The payload as JSON (the record's object, or the bytes decoded; raises
        ``msgspec.DecodeError`` for a payload that is not JSON)."""
        return self.data if self.data is not None else msgspec.json.decode(self.payload)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class BrokerContext:
    """What a broker's call may do besides replying: emit records, log."""

    broker: str
    message: Message
    emitted: list[tuple[str | None, str | None, Record]] = field(default_factory=list)

    def emit(
        self,
        record: Record,
        *,
        table: str | None = None,
        stream: str | None = None,
        sinks: Sequence[str] | None = None,
    ) -> None:
        """Store ``record`` too, through the intake: in ``table``, or where the router
        sends ``stream`` (default: the message's stream). ``sinks`` addresses it to those
        sinks: it goes to the ``outbox`` table unless ``table`` is given."""
        if sinks is not None:
            if isinstance(sinks, str) or not all(isinstance(s, str) for s in sinks):
                raise TypeError("sinks: a list of sink names")
            record = {**record, "_sinks": list(sinks)}
            table = table or OUTBOX.name
        self.emitted.append((table, stream, record))

    @property
    def log(self) -> Any:
        return log.bind(broker=self.broker, record_id=self.message.record_id)


class Broker(Processor):
    """A configured broker: the user's handler and what it matches."""

    stage = "broker"

    def __init__(self, handler: Any, config: BrokerConfig) -> None:
        self.handler = handler
        self.priority = config.priority
        self.concurrency = config.concurrency
        match = config.match
        self.streams = _patterns(match.stream)
        self.topics = _patterns(match.topic)
        self.content_types = _patterns(match.content_type)
        sources = _patterns(match.source)
        tables = _patterns(match.table)
        self.sources = frozenset(sources) if sources is not None else None
        self.tables = frozenset(tables) if tables is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    def process(self, records: list[Record], ctx: Any) -> None:  # not a record processor
        raise NotImplementedError("brokers run through BrokerSet")

    def start(self) -> None:
        owner = getattr(self.handler, "__self__", None)
        if owner is not None and callable(getattr(owner, "start", None)):
            owner.start()

    def close(self) -> None:
        owner = getattr(self.handler, "__self__", None)
        if owner is not None and callable(getattr(owner, "close", None)):
            owner.close()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def wants(self, message: Message) -> bool:
        """Whether ``message`` meets the stream, topic and content type patterns (source
        and table are checked by the chain)."""
        if self.streams is not None and not any(
            fnmatch.fnmatchcase(message.stream, p) for p in self.streams
        ):
            return False
        if self.topics is not None and (
            message.topic is None or not any(topic_matches(p, message.topic) for p in self.topics)
        ):
            return False
        if self.content_types is not None:
            mime = (message.content_type or "").split(";", 1)[0].strip().lower()
            if not any(fnmatch.fnmatchcase(mime, p.lower()) for p in self.content_types):
                return False
        return True

    def call(
        self,
        message: Message,
        ctx: BrokerContext,
        awaiting: Callable[[concurrent.futures.Future[Any]], None] | None = None,
    ) -> Any:
        """The handler's answer for one message (run on the call's thread). An async
        handler runs on the broker's own event loop, which lives as long as the broker,
        so it may keep async clients between calls; ``awaiting`` is given its future
        (cancelling it cancels the coroutine)."""
        result = self.handler(message, ctx)
        if inspect.isawaitable(result):
            future = asyncio.run_coroutine_threadsafe(_awaited(result), self._async_loop())
            if awaiting is not None:
                awaiting(future)
            return future.result()
        return result

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"rtclake-broker-{self.name}-loop", daemon=True
                )
                thread.start()
                self._loop = loop
            return self._loop


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def load_handler(config: BrokerConfig, name: str) -> Any:
    """The callable ``config.handler`` names: a function, or a class built with
    ``options`` whose instance's ``handle``; raises :class:`ConfigError` naming the
    broker."""
    module_name, _, attribute = config.handler.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"processors.{name}.handler: {config.handler!r} is not module:attribute"
            " (e.g. mybrokers.alarm:handle)"
        )
    folder = None if config.path is None else config.path.resolve()
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
        target: Any = module
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # a user's module: any error is a configuration error
        raise ConfigError(
            f"processors.{name}.handler: cannot load {config.handler!r}:"
            f" {type(exc).__name__}: {exc}"
        ) from exc
    found = getattr(module, "__file__", None)
    if folder is not None and (found is None or not Path(found).resolve().is_relative_to(folder)):
        # Another folder's (or the standard library's) module of the same name, imported
        # first: the broker would silently run someone else's code.
        raise ConfigError(
            f"processors.{name}.handler: module {module_name!r} is {found or 'built in'},"
            f" not in {folder} (path): a module of that name was imported first; give"
            " yours a name of its own"
        )
    if inspect.isclass(target):
        try:
            instance = target(**config.options)
        except Exception as exc:
            raise ConfigError(
                f"processors.{name}: {config.handler}({config.options}) failed:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        target = getattr(instance, "handle", None)
        if not callable(target):
            raise ConfigError(f"processors.{name}.handler: {config.handler} has no handle()")
    elif config.options:
        raise ConfigError(f"processors.{name}.options: only a class handler takes options")
    if not callable(target):
        raise ConfigError(f"processors.{name}.handler: {config.handler} is not callable")
    return target


def build_broker(config: BrokerConfig, name: str) -> Broker:
    broker = Broker(load_handler(config, name), config)
    broker.name = name
    broker.timeout = config.timeout
    return broker


@dataclass
class Outcome:
    """What the brokers made of one message: the reply chosen, and what they emitted
    (broker name, table, stream, record)."""

    reply: Reply | None = None
    emitted: list[tuple[str, str | None, str | None, Record]] = field(default_factory=list)


class _Call:
    """One broker's call over the messages of a hand-over, on a daemon thread."""

    def __init__(self, broker: Broker, messages: list[Message]) -> None:
        self.broker = broker
        self.messages = messages
        self.results: dict[int, tuple[Any, BrokerContext]] = {}
        self.errors: list[tuple[int, BaseException]] = []
        self.lock = threading.Lock()
        self.abandoned = False  # the loop stopped waiting: later results are not used
        self.finished = False
        self.hung = False  # abandoned while still running
        self.awaited: concurrent.futures.Future[Any] | None = None  # an async handler's

    def awaiting(self, future: concurrent.futures.Future[Any]) -> None:
        """An async handler's coroutine runs: cancelled when the call is (or was) hung."""
        with self.lock:
            self.awaited = future
            hung = self.hung
        if hung:
            future.cancel()

    def cancel(self) -> None:
        """The call is hung (its lock held): an async handler's coroutine is cancelled, so
        it does not hold one of the broker's ``concurrency`` calls for good. A plain
        function cannot be stopped: its thread runs on until it returns."""
        if self.awaited is not None:
            self.awaited.cancel()

    def run(self) -> None:
        for i, message in enumerate(self.messages):
            ctx = BrokerContext(self.broker.name, message)
            try:
                value = self.broker.call(message, ctx, self.awaiting)
                reply = None if value is None else Reply.of(value)
            except BaseException as exc:  # isolation: reported, never raised
                with self.lock:
                    if self.abandoned:
                        break  # nobody waits: the records left are not handed over
                    self.errors.append((i, exc))
                continue
            with self.lock:
                if self.abandoned:
                    break
                self.results[i] = (reply, ctx)


class BrokerSet:
    """Runs the brokers that match each message of a hand-over, at once, and picks the
    replies."""

    def __init__(self, brokers: Sequence[Broker], metrics: Metrics, errors: Counter) -> None:
        self.order = {b.name: n for n, b in enumerate(brokers)}
        self.errors = errors
        self._hung: dict[str, int] = dict.fromkeys(self.order, 0)  # calls past their timeout
        self._lock = threading.Lock()
        self.calls = Counter(
            "rtclake_broker_calls",
            "Messages given to each broker, by outcome (replied, none, or the failure's reason).",
            ["broker", "outcome"],
            registry=metrics.registry,
        )

    async def run(
        self,
        brokers: Sequence[Broker],
        messages: list[Message],
        *,
        within: float | None = None,
        refusal: Refusal | None = None,
    ) -> list[Outcome]:
        """One :class:`Outcome` per message, after every matched broker answered or ran
        out of time: its ``timeout``, or ``within`` seconds if that is sooner, all counted
        from the same start (the brokers run at once). ``refusal`` says why a record a
        broker emitted cannot be stored (None: it can); a broker that emitted one loses
        its reply and its other records for that message, as if it had raised."""
        outcomes = [Outcome() for _ in messages]
        calls: list[tuple[_Call, list[int], asyncio.Future[None], float]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for broker in brokers:
            wanted = [i for i, m in enumerate(messages) if broker.wants(m)]
            if not wanted:
                continue
            if self._hung_calls(broker) >= broker.concurrency:
                self._failed(broker, "busy", "its calls that timed out are still running",
                             [messages[i] for i in wanted])  # fmt: skip
                continue
            call = _Call(broker, [messages[i] for i in wanted])
            limit = broker.timeout if within is None else max(0.0, min(broker.timeout, within))
            calls.append((call, wanted, self._start(call, loop), limit))
        if not calls:
            return outcomes
        replies: list[list[tuple[int, int, Reply]]] = [[] for _ in messages]
        for call, wanted, future, limit in sorted(calls, key=lambda c: c[3]):
            broker = call.broker
            try:
                await asyncio.wait_for(
                    asyncio.shield(future), max(0.0, start + limit - loop.time())
                )
                timed_out = False
            except TimeoutError:
                timed_out = True
            with call.lock:
                call.abandoned = True
                results, errors = dict(call.results), list(call.errors)
                if timed_out and not call.finished:
                    if limit >= broker.timeout:
                        self._hang(call)
                    else:  # the caller's deadline, not the broker's: hung only past its own
                        loop.call_at(start + broker.timeout, self._hang_if_running, call)
            if timed_out:
                failed = {i for i, _ in errors}  # answered in time, with an exception
                late = [call.messages[i] for i in range(len(wanted))
                        if i not in results and i not in failed]  # fmt: skip
                self._failed(broker, "timeout", f"no answer within {limit:g} s", late)
            for i, error in errors:
                self._failed(broker, "error", error, [call.messages[i]])
            for i, (reply, ctx) in results.items():
                at = wanted[i]
                why = _refused(ctx.emitted, messages[at], refusal)
                if why is not None:
                    self._failed(broker, "invalid_emit", why, [messages[at]])
                    continue
                outcomes[at].emitted += [(broker.name, t, s, r) for t, s, r in ctx.emitted]
                if reply is not None:
                    replies[at].append((-broker.priority, self.order[broker.name], reply))
                self.calls.labels(broker.name, "none" if reply is None else "replied").inc()
        for outcome, offered in zip(outcomes, replies, strict=True):
            if offered:
                outcome.reply = min(offered, key=lambda o: (o[0], o[1]))[2]
        return outcomes

    def _hang(self, call: _Call) -> None:
        """Count ``call`` (its lock held) as hung until its thread returns."""
        call.hung = True
        with self._lock:
            self._hung[call.broker.name] += 1
        call.cancel()

    def _hang_if_running(self, call: _Call) -> None:
        with call.lock:
            if not call.finished and not call.hung:
                self._hang(call)

    def _hung_calls(self, broker: Broker) -> int:
        with self._lock:
            return self._hung[broker.name]

    def _start(self, call: _Call, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        future: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                call.run()
            finally:
                with call.lock:
                    call.finished = True
                    if call.hung:
                        with self._lock:
                            self._hung[call.broker.name] -= 1
                with contextlib.suppress(RuntimeError):  # the loop ended (shutdown)
                    loop.call_soon_threadsafe(_settle, future)

        thread = threading.Thread(target=run, name=f"rtclake-broker-{call.broker.name}")
        thread.daemon = True  # a hung broker must not hold up the end of the process
        thread.start()
        return future

    def _failed(
        self, broker: Broker, reason: str, error: object, messages: Sequence[Message]
    ) -> None:
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        for message in messages:
            self.errors.labels(broker.name, reason).inc()
            self.calls.labels(broker.name, reason).inc()
            log.error("broker failed; the record is stored, its output for it is dropped",
                      broker=broker.name, reason=reason, error=text,
                      record_id=message.record_id, source=message.source)  # fmt: skip


#: Why a record a broker emitted for a message cannot be stored (None: it can), given the
#: message, the record's table and stream (None: the router's, the message's stream) and
#: the record.
Refusal = Callable[[Message, str | None, str | None, Record], str | None]


def _refused(
    emitted: Sequence[tuple[str | None, str | None, Record]],
    message: Message,
    refusal: Refusal | None,
) -> str | None:
    """Why the first of ``emitted`` that cannot be stored is refused, or None."""
    if refusal is None:
        return None
    for table, stream, record in emitted:
        why = refusal(message, table, stream, record)
        if why is not None:
            return why
    return None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
