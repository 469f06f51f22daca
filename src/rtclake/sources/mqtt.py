"""The MQTT source: subscribes to topic filters on a broker (Mosquitto, EMQX, ...) and
stores every message it receives as a record.

**What it accepts.** Each message on the configured topic filters becomes one record of
the source's stream (``stream``, default: the source's name) in ``table`` (default: the
router's table for the stream, ``telemetry`` unless routed), made by
:func:`rtclake.messages.message_line`: a JSON object keeps its keys (so its ``time`` and
``device_id`` are typed as over HTTP); any other payload (binary, text, a JSON array) is
kept as bytes (the ``payload`` column). The topic goes to ``topic``, MQTT 5's content
type to ``content_type``, MQTT 5's user properties to ``metadata``.

**What it guarantees.** The client (paho-mqtt, in manual acknowledgement mode) holds a
persistent session: a fixed client id, clean start off and a session expiry interval
(MQTT 5; with 3.1.1, clean session off), so the broker keeps the subscription and queues
what is published while rtclake is down. Up to its own queue limit: Mosquitto's
``max_queued_messages`` (1000 by default) counts what waits beyond the messages in flight,
also while rtclake is connected but slower than the publishers, and beyond it Mosquitto
drops messages; size it for the outage to bridge. A QoS 1 message is acknowledged (PUBACK) only
after :meth:`rtclake.intake.Intake.take` returned for it, that is once it is fsync'd in the
spool, and acknowledgements leave in the order the messages arrived (as MQTT requires).
Until then the broker keeps it and delivers it again after a reconnect. A message that
arrived on a connection that has since closed is stored but not acknowledged (its packet
id belongs to that connection; the broker delivers it again on the next one). When the
spool cannot take a message (full, disk failing) it is not acknowledged and is tried
again until it is stored; nothing is dropped. A JSON object that its table refuses (a
``time`` that is not a time, a ``device_id`` of the wrong type) is stored as bytes, as it
came, with the reason in ``metadata._invalid`` and a warning naming the topic: it could
never be stored as it is, a message that is never acknowledged would be redelivered
forever and hold a slot of the session's in-flight window, and dropping it would lose
data. Only a message that cannot be stored at all (larger than the whole spool) is
acknowledged without being stored, counted in ``rtclake_records_rejected`` and logged.
QoS 0 messages are stored the same way (the broker never redelivers them).

**A redelivery is stored once.** QoS 1 means at least once: the broker sends a message
again when it has not seen its PUBACK (rtclake was killed between storing and
acknowledging, the connection dropped), and a publisher sends it again when it has not
seen the broker's. Each message gets an idempotency key, and records with the same key
have the same record id, which the query views show once:

- the publisher's own message id when it sets one (the MQTT 5 user property
  ``message_id_property``, default ``message-id``): ``id:`` + topic + the id;
- else the topic and the SHA-256 of the payload, looked up in a small store,
  ``DATA_DIR/NAME.mqtt-seen.sqlite3`` (SQLite in WAL mode, ``synchronous=FULL``), which
  maps that hash to the key its first delivery got and when. A message the broker marks
  as a redelivery (DUP set) takes the stored key whatever its age: the broker resends
  only what it delivered before, even days later when rtclake was down that long. A
  message without DUP takes it only within ``dedupe_window`` seconds of the first (the
  publisher's retry, which the broker forwards as a new message); after the window the
  same payload on the same topic is a new reading and gets a new key (the hash and its
  arrival time), which replaces the stored one. A consequence: identical payloads on one
  topic within the window are stored once; a device that repeats a reading verbatim
  (without a time or a message id) needs a shorter window, and ``0`` matches broker
  redeliveries only.

The store is written in one transaction per batch of messages, and the transaction is
committed *before* the batch's records are appended to the spool: after a crash anywhere
between the two, the redelivery finds the key its first delivery was stored with (or
nothing was stored under it). An entry is kept while its message may still come again:
at least ``dedupe_window`` seconds, and until the message was acknowledged (or the
broker answered without the session, which ends every redelivery), at most
``session_expiry`` seconds. The store holds about 70 bytes per message of the window.

**What it reports.** ``rtclake_records_received{source}`` (stored),
``rtclake_records_rejected{source,reason}`` (could not be stored: acknowledged and
dropped), ``rtclake_source_connected{source}`` (1 while connected) and
``rtclake_source_connections{source}`` (connections made: more than one means
reconnects, which back off exponentially from ``reconnect_min`` to ``reconnect_max``
seconds).

paho-mqtt runs its network loop on a thread of its own; every message is handed to the
service's event loop (``call_soon_threadsafe``), which stores it and sends its PUBACK.
At most ``max_in_flight`` messages are held at once (MQTT 5's Receive Maximum tells the
broker; QoS 0 messages wait in the network thread, which stops reading the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import msgspec
import structlog
from pydantic import Field, SecretStr, field_validator

from rtclake.errors import ConfigError, InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.messages import BYTES_TYPE, CONTENT_TYPE, message_line, message_record
from rtclake.metrics import Metrics
from rtclake.registry import BuildContext, ComponentType, SourceConfig
from rtclake.sources.base import Records, Source
from rtclake.tables import Table

if TYPE_CHECKING:  # paho-mqtt (and the dnspython it loads) is imported when a source starts
    from paho.mqtt.client import Client, MQTTMessage
    from paho.mqtt.reasoncodes import ReasonCode

log = structlog.get_logger(__name__)

_BATCH = 1000  # most messages per transaction of the store
_IDLE = 1.0  # seconds: acknowledged keys are written at least this often
_PRUNE_EVERY = 10.0  # seconds between two prunings of the store
_RETRY_MAX = 5.0  # seconds: longest wait before trying the spool again
_encode = msgspec.json.Encoder().encode


class MqttConfig(SourceConfig):
    """``type: mqtt``: what it promises, and how a redelivery is told apart, is in
    :mod:`rtclake.sources.mqtt`."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="the broker: mqtt://HOST[:PORT] (1883), or mqtts://HOST[:PORT] for TLS (8883)",
    )
    topics: list[str] = Field(min_length=1, description='topic filters, e.g. ["sensors/#"]')
    qos: int = Field(
        default=1,
        ge=0,
        le=1,
        description="subscription QoS: 1 (acknowledged after the message is durable) or 0",
    )
    stream: str | None = Field(
        default=None, description="the records' stream; default: the source's name"
    )
    table: str | None = Field(
        default=None, description="the records' table; default: the router's for the stream"
    )
    client_id: str | None = Field(
        default=None,
        description="the session's client id (keep it fixed); default: rtclake-NODE-NAME",
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT version")
    session_expiry: int = Field(
        default=7 * 86400,
        ge=1,
        le=0xFFFFFFFE,
        description="seconds the broker keeps the session (its subscriptions and queued"
        " messages) while rtclake is away (MQTT 5; with 3.1.1 the broker decides) and the"
        " longest an unacknowledged message's entry is kept in the dedupe store",
    )
    username: str | None = Field(default=None, description="the user name, if the broker asks")
    password: SecretStr | None = Field(default=None, description="the user's password")
    ca_file: Path | None = Field(
        default=None, description="CA certificates for mqtts:// (default: the system's)"
    )
    keepalive: int = Field(default=60, ge=5, description="seconds between keep-alive pings")
    reconnect_min: int = Field(
        default=1, ge=1, description="seconds before the first reconnection attempt"
    )
    reconnect_max: int = Field(
        default=60, ge=1, description="longest wait between reconnection attempts (doubling)"
    )
    message_id_property: str = Field(
        default="message-id",
        description="the MQTT 5 user property that carries a publisher's message id (the"
        " record's idempotency key when present)",
    )
    dedupe_window: float = Field(
        default=3600.0,
        ge=0,
        description="seconds within which the same payload on the same topic, without a"
        " message id, is a retry and stored once (a redelivery the broker marks DUP: at any"
        " age); 0: only broker redeliveries",
    )
    max_in_flight: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="messages received and not yet stored at once (MQTT 5: Receive Maximum)",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("topics")
    @classmethod
    def _topic_filters(cls, topics: list[str]) -> list[str]:
        for topic in topics:
            if why := filter_error(topic):
                raise ValueError(f"{topic!r}: {why}")
        return topics


def filter_error(topic: str) -> str | None:
    """Why ``topic`` is not an MQTT topic filter (MQTT 5.0, 4.7), or None. The broker
    would refuse it only once connected, and paho's thread stops on it: refused here, in
    the configuration."""
    if not topic:
        return "an empty topic filter"
    if "\0" in topic:
        return "a NUL character"
    if len(topic.encode()) > 65535:
        return "longer than 65,535 bytes"
    levels = topic.split("/")
    for at, level in enumerate(levels):
        if "#" in level and (level != "#" or at != len(levels) - 1):
            return "'#' must be a whole level, and the last (e.g. sensors/#)"
        if "+" in level and level != "+":
            return "'+' must be a whole level (e.g. sensors/+/temperature)"
    return None


@dataclass(eq=False)
class _Delivery:
    """One message as received, until it is stored and acknowledged."""

    mid: int
    qos: int
    dup: bool
    topic: str
    payload: bytes
    content_type: str | None
    properties: dict[str, str]
    connection: int  # the connection it arrived on
    received_us: int
    key: bytes | None = None  # topic + payload hash (None: the publisher's id is the key)
    idem: str | None = None
    settled: bool = False  # stored (or refused for good): may be acknowledged


class SeenStore:
    """The dedupe store (see the module docs): topic + payload hash -> the idempotency
    key of its first delivery and when. Used from one thread at a time."""

    def __init__(self, path: Path, *, window: float, keep: float) -> None:
        import sqlite3

        self.window_us = int(window * 1e6)
        self.keep_us = int(max(window, keep) * 1e6)
        self._last_prune = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS seen (key BLOB PRIMARY KEY, first_us INTEGER NOT NULL,"
            " done INTEGER NOT NULL) WITHOUT ROWID"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS seen_first ON seen (first_us)")

    @staticmethod
    def key(topic: str, payload: bytes) -> bytes:
        """The store's key of a message: 16 bytes of SHA-256 of topic and payload hash."""
        return hashlib.sha256(
            topic.encode("utf-8", "surrogateescape") + b"\0" + hashlib.sha256(payload).digest()
        ).digest()[:16]

    def assign(
        self,
        messages: list[tuple[bytes, bool]],
        done: Iterable[tuple[bytes, str]] = (),
        *,
        session_lost: bool = False,
        now_us: int | None = None,
    ) -> list[str]:
        """One transaction: mark ``done`` entries (acknowledged: no redelivery will come),
        or all of them when the broker lost the session; give each of ``messages`` (key,
        DUP flag) its idempotency key; prune now and then; commit (fsync)."""
        now = time.time_ns() // 1000 if now_us is None else now_us
        db = self.db
        idems = []
        db.execute("BEGIN IMMEDIATE")
        try:
            if session_lost:
                db.execute("UPDATE seen SET done = 1 WHERE done = 0")
            db.executemany(
                "UPDATE seen SET done = 1 WHERE key = ? AND first_us = ?",
                [(k, int(idem.rsplit(":", 1)[1])) for k, idem in done],
            )
            for key, dup in messages:
                row = db.execute("SELECT first_us FROM seen WHERE key = ?", (key,)).fetchone()
                if row is not None and (dup or now - row[0] < self.window_us):
                    first = row[0]
                    db.execute("UPDATE seen SET done = 0 WHERE key = ?", (key,))
                else:
                    first = now
                    db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, 0)", (key, now))
                idems.append(f"h:{key.hex()}:{first}")
            if time.monotonic() - self._last_prune >= _PRUNE_EVERY:
                self._last_prune = time.monotonic()
                db.execute(
                    "DELETE FROM seen WHERE first_us < ? AND (done = 1 OR first_us < ?)",
                    (now - self.window_us, now - self.keep_us),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return idems

    def close(self) -> None:
        self.db.close()


@dataclass
class _Broker:
    """Where and how to connect, from the URL and the settings."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def of(cls, config: MqttConfig, name: str) -> _Broker:
        url = urlsplit(config.url)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            raise ConfigError(
                f"sources.{name}.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT],"
                f" got {config.url!r}"
            )
        if url.username is not None or url.password is not None:
            raise ConfigError(
                f"sources.{name}.url: give the user and password as username and password"
                " (the password is a secret: `rtclake config` masks it), not in the URL"
            )
        tls = url.scheme == "mqtts"
        try:
            port = url.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"sources.{name}.url: {exc}") from exc
        password = config.password.get_secret_value() if config.password else None
        return cls(url.hostname, port, tls, config.username, password)


@dataclass
class _State:
    """What the network thread shares with the event loop (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    live: int | None = None  # the id of the open connection, None while there is none
    connections: int = 0


class MqttSource(Source):
    """Subscribes to ``config.topics`` and stores each message (see the module docs)."""

    def __init__(
        self,
        config: MqttConfig,
        intake: Intake,
        table: Table,
        *,
        name: str,
        stream: str,
        client_id: str,
        store_path: Path,
    ) -> None:
        self.name = name
        self.config = config
        self.intake = intake
        self.metrics: Metrics = intake.metrics
        self.table = table
        self.stream = stream
        self.client_id = client_id
        self.store_path = store_path
        self.broker = _Broker.of(config, name)
        self._state = _State()
        self._client: Client | None = None
        self._store: SeenStore | None = None
        self._db_thread: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Delivery] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._storing: set[asyncio.Task[None]] = set()
        self._unacked: dict[int, deque[_Delivery]] = {}  # per connection, in arrival order
        self._done: list[tuple[bytes, str]] = []  # acknowledged, for the store
        self._session_lost = False
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        # What the network thread hands over, in order; one wake-up of the event loop
        # for all that arrives before the loop takes it.
        self._handed: deque[_Delivery | tuple[int, bool]] = deque()
        self._handed_lock = threading.Lock()
        self._stopping = threading.Event()
        self._spool_waiting = False

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the network thread (it connects, and reconnects)."""
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix=f"rtclake-{self.name}")
        cfg = self.config
        self._store = await self._loop.run_in_executor(
            self._db_thread,
            lambda: SeenStore(self.store_path, window=cfg.dedupe_window, keep=cfg.session_expiry),
        )
        self._worker = asyncio.create_task(self._run(), name=self.name)
        self._client = client = self._make_client()
        b = self.broker
        if cfg.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = cfg.session_expiry
            props.ReceiveMaximum = cfg.max_in_flight
            client.connect_async(b.host, b.port, cfg.keepalive, clean_start=False, properties=props)
        else:
            client.connect_async(b.host, b.port, cfg.keepalive)
        client.loop_start()
        self.metrics.source_connected.labels(self.name).set(0)
        log.info(
            "mqtt: connecting", source=self.name, broker=f"{b.host}:{b.port}",
            client_id=self.client_id, topics=cfg.topics,
        )  # fmt: skip

    async def stop(self) -> None:
        """Store what arrived (up to 10 s), acknowledge it, disconnect (the session stays
        with the broker, which keeps what comes meanwhile)."""
        self._stopping.set()
        self._wake.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        if self._storing:
            await asyncio.wait(self._storing, timeout=10)
        client, self._client = self._client, None
        if client is not None:
            with self._state.lock:
                self._state.live = None  # no acknowledgement after the DISCONNECT
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        for task in self._storing:
            task.cancel()
        await asyncio.gather(*self._storing, return_exceptions=True)
        if self._store is not None and self._db_thread is not None:
            store, self._store = self._store, None
            done, self._done = self._done, []
            with contextlib.suppress(Exception):  # only marks: the next run prunes later
                await self._loop_of().run_in_executor(self._db_thread, store.assign, [], done)
            await self._loop_of().run_in_executor(self._db_thread, store.close)
            self._db_thread.shutdown()
        self.metrics.source_connected.labels(self.name).set(0)

    def _loop_of(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    # -- the network thread ------------------------------------------------------------

    def _make_client(self) -> Client:
        from paho.mqtt.client import Client, MQTTv5, MQTTv311
        from paho.mqtt.enums import CallbackAPIVersion

        cfg, b = self.config, self.broker
        v5 = cfg.protocol == "5"
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTv5 if v5 else MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if b.tls:
            import ssl

            client.tls_set_context(ssl.create_default_context(cafile=cfg.ca_file))
        client.reconnect_delay_set(cfg.reconnect_min, max(cfg.reconnect_min, cfg.reconnect_max))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: Client, _: Any, flags: Any, reason: ReasonCode, __: Any) -> None:
        if reason.is_failure:
            log.error("mqtt: the broker refused the connection", source=self.name,
                      reason=str(reason), client_id=self.client_id)  # fmt: skip
            return
        with self._state.lock:
            self._state.connections += 1
            self._state.live = connection = self._state.connections
        self.metrics.source_connected.labels(self.name).set(1)
        self.metrics.source_connections.labels(self.name).inc()
        session = bool(flags.session_present)
        log.info("mqtt: connected", source=self.name, session_present=session)
        qos = self.config.qos
        if self.config.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions

            # Retained messages only for a new subscription, not again on every reconnect.
            options = SubscribeOptions(qos=qos, retainHandling=1)
            client.subscribe([(topic, options) for topic in self.config.topics])
        else:
            client.subscribe([(topic, qos) for topic in self.config.topics])
        self._hand_over((connection, session))

    def _on_connect_fail(self, _: Client, __: Any) -> None:
        log.warning("mqtt: cannot reach the broker; retrying", source=self.name,
                    broker=f"{self.broker.host}:{self.broker.port}")  # fmt: skip

    def _on_disconnect(self, _: Client, __: Any, ___: Any, reason: ReasonCode, ____: Any) -> None:
        with self._state.lock:
            was = self._state.live
            self._state.live = None
        self.metrics.source_connected.labels(self.name).set(0)
        if was is not None and not self._stopping.is_set():
            log.warning("mqtt: disconnected; reconnecting", source=self.name, reason=str(reason))

    def _on_subscribe(
        self, _: Client, __: Any, ___: int, reasons: list[ReasonCode], ____: Any
    ) -> None:
        for topic, reason in zip(self.config.topics, reasons, strict=False):
            if reason.is_failure:
                log.error("mqtt: subscription refused", source=self.name, topic=topic,
                          reason=str(reason))  # fmt: skip

    def _on_message(self, _: Client, __: Any, message: MQTTMessage) -> None:
        connection = self._state.live  # set by this thread (stop() only clears it)
        if connection is None or self._stopping.is_set():
            return  # not acknowledged: the broker delivers it again
        # At most max_in_flight messages held: waiting here stops reading the socket.
        while not self._slots.acquire(timeout=0.5):
            if self._stopping.is_set():
                return
        props = message.properties
        content_type = getattr(props, "ContentType", None) or None
        user = dict(getattr(props, "UserProperty", None) or ())
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")
        delivery = _Delivery(
            message.mid, message.qos, bool(message.dup), topic, bytes(message.payload),
            content_type, user, connection, time.time_ns() // 1000,
        )  # fmt: skip
        self._hand_over(delivery)

    def _hand_over(self, item: _Delivery | tuple[int, bool]) -> None:
        with self._handed_lock:
            self._handed.append(item)
            if len(self._handed) > 1:
                return  # the loop is woken already
        self._loop_of().call_soon_threadsafe(self._take_handed)

    # -- the event loop ----------------------------------------------------------------

    def _take_handed(self) -> None:
        with self._handed_lock:
            items = list(self._handed)
            self._handed.clear()
        for item in items:
            if isinstance(item, _Delivery):
                self._arrived(item)
            else:
                self._connected(*item)

    def _connected(self, connection: int, session_present: bool) -> None:
        # Messages of earlier connections can no longer be acknowledged.
        self._unacked = {connection: deque()}
        if not session_present:
            self._session_lost = True  # nothing unacknowledged will come again

    def _arrived(self, d: _Delivery) -> None:
        message_id = d.properties.get(self.config.message_id_property)
        if message_id is not None:
            d.idem = f"id:{d.topic}\x1f{message_id}"
        else:
            d.key = SeenStore.key(d.topic, d.payload)
        if d.qos:
            self._unacked.setdefault(d.connection, deque()).append(d)
        self._queue.append(d)
        self._wake.set()

    async def _run(self) -> None:
        """Batches of arrived messages: their keys from the store (one transaction, before
        any of them is spooled), then one storing task per message."""
        while True:
            if not self._queue:
                if self._stopping.is_set():
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE)
            batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            hashed = [d for d in batch if d.key is not None]
            if hashed or self._done or self._session_lost:
                await self._assign(hashed)
            for d in batch:
                task = asyncio.create_task(self._store_one(d))
                self._storing.add(task)
                task.add_done_callback(self._storing.discard)

    async def _assign(self, hashed: list[_Delivery]) -> None:
        """Give ``hashed`` their idempotency keys (committed before they are spooled)."""
        import sqlite3

        store = self._store
        assert store is not None
        keys = [(d.key, d.dup) for d in hashed if d.key is not None]
        backoff = 0.1
        while True:
            done, lost = self._done, self._session_lost
            self._done, self._session_lost = [], False
            assign = functools.partial(store.assign, keys, done, session_lost=lost)
            try:
                idems = await self._loop_of().run_in_executor(self._db_thread, assign)
            except sqlite3.Error as exc:  # its disk: nothing is spooled until it works
                self._done, self._session_lost = done + self._done, lost or self._session_lost
                self.metrics.source_errors.labels(self.name).inc()
                log.error("mqtt: cannot write the dedupe store; retrying", source=self.name,
                          path=str(self.store_path), error=str(exc))  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                continue
            for d, idem in zip(hashed, idems, strict=True):
                d.idem = idem
            return

    async def _store_one(self, d: _Delivery) -> None:
        """Spool ``d`` (again and again while the spool cannot take it), then settle it."""
        try:
            try:
                records = self._records(d)
            except InputError as exc:
                self._refused(d, exc)
                self._settle(d)
                return
            backoff = 0.1
            while True:
                try:
                    await self.intake.take(
                        self.name, self.stream, self.table, records, idem=d.idem,
                        received_us=d.received_us,
                    )  # fmt: skip
                except SpoolUnavailable as exc:
                    if not self._spool_waiting:
                        self._spool_waiting = True
                        log.warning("mqtt: the spool cannot take messages; holding them",
                                    source=self.name, reason=exc.reason)  # fmt: skip
                    wait = min(max(float(exc.retry_after), 0.05), _RETRY_MAX)
                except InputError as exc:  # too large for the spool: it never fits
                    self._refused(d, exc)
                    break
                except Exception as exc:  # a bug: keep the message, keep trying
                    self.metrics.source_errors.labels(self.name).inc()
                    log.error("mqtt: storing a message failed; retrying", source=self.name,
                              topic=d.topic, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                    wait = backoff = min(backoff * 2, _RETRY_MAX)
                else:
                    if self._spool_waiting:
                        self._spool_waiting = False
                        log.info("mqtt: the spool takes messages again", source=self.name)
                    break
                if self._stopping.is_set():
                    return  # not acknowledged: the broker keeps it for the next run
                await asyncio.sleep(wait)
            self._settle(d)
        finally:
            self._slots.release()

    def _refused(self, d: _Delivery, exc: InputError) -> None:
        self.metrics.rejected.labels(self.name, exc.reason).inc()
        log.error("mqtt: message cannot be stored; acknowledged without storing it",
                  source=self.name, topic=d.topic, reason=exc.reason, error=str(exc),
                  bytes=len(d.payload))  # fmt: skip

    def _records(self, d: _Delivery) -> Records:
        """``d`` as one validated record; a JSON object its table refuses, as bytes."""
        metadata = dict(d.properties) or None
        line = message_line(
            d.payload, content_type=d.content_type, topic=d.topic, metadata=metadata
        )
        try:
            return self.intake.validate(line, self.table, lines=True)
        except InputError as exc:
            log.warning("mqtt: message refused by its table; stored as bytes",
                        source=self.name, topic=d.topic, reason=exc.reason,
                        error=str(exc))  # fmt: skip
            record = message_record(
                d.payload, content_type=BYTES_TYPE, topic=d.topic,
                metadata={**(metadata or {}), "_invalid": str(exc)},
            )  # fmt: skip
            if d.content_type:
                record[CONTENT_TYPE] = d.content_type
            else:
                del record[CONTENT_TYPE]
            return self.intake.validate(_encode(record), self.table, lines=True)

    def _settle(self, d: _Delivery) -> None:
        """``d`` is stored: acknowledge it and every stored message before it (in order)."""
        d.settled = True
        if not d.qos:
            if d.key is not None and d.idem is not None:
                self._done.append((d.key, d.idem))
            return
        queue = self._unacked.get(d.connection)
        while queue and queue[0].settled:
            first = queue.popleft()
            if self._ack(first) and first.key is not None and first.idem is not None:
                self._done.append((first.key, first.idem))

    def _ack(self, d: _Delivery) -> bool:
        """Send the PUBACK of ``d`` if its connection is still the open one."""
        client = self._client
        with self._state.lock:
            if client is None or self._state.live != d.connection:
                return False
            return client.ack(d.mid, d.qos) == 0  # MQTT_ERR_SUCCESS


def build(config: MqttConfig, ctx: BuildContext) -> MqttSource:
    """The ``mqtt`` source of the configuration ``config`` names ``ctx.name``."""
    assert ctx.intake is not None
    stream = config.stream or ctx.name
    if config.table is not None:
        if config.table not in ctx.tables:
            known = ", ".join(ctx.tables.names())
            raise ConfigError(f"sources.{ctx.name}.table: unknown table {config.table!r}"
                              f" (known: {known})")  # fmt: skip
        table = ctx.tables[config.table]
    else:
        try:
            table = ctx.intake.table_for(stream)
        except InputError as exc:
            raise ConfigError(f"sources.{ctx.name}.stream: {exc}") from exc
    return MqttSource(
        config,
        ctx.intake,
        table,
        name=ctx.name,
        stream=stream,
        client_id=config.client_id or f"rtclake-{ctx.node}-{ctx.name}",
        store_path=ctx.data_dir / f"{ctx.name}.mqtt-seen.sqlite3",
    )


MQTT = ComponentType(
    "source",
    "mqtt",
    MqttConfig,
    build,
    "Subscribes to topic filters on an MQTT broker (QoS 1, a persistent session): each"
    " message a record, acknowledged to the broker once durable, a redelivery stored once.",
)
