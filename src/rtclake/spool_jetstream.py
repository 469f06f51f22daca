"""The replicated spool: a NATS JetStream stream in place of the local write-ahead log
(``spool.backend: jetstream``; docs/SPOOL-JETSTREAM.md).

Ingest side (:class:`JetStreamSpool`, what :class:`~rtclake.intake.Intake` appends to):
each spool entry, framed as :mod:`rtclake.spool` frames it (header, body, CRC), is one
message on ``{subject_prefix}.{table}``, and :meth:`JetStreamSpool.append` returns once
the stream's PubAck came back: the entry is then stored as the stream's settings make
durable (``replicas`` servers of a cluster, file storage), so the sender's 2xx survives the
loss of this node's disk. Every message carries a ``Nats-Msg-Id``: for an entry with an
idempotency key, a digest of source, stream, table, key and body, so a sender's retry
within the stream's ``duplicate_window`` is dropped by JetStream (the PubAck says
``duplicate``); otherwise the entry's position, so a publish this process repeats after a
lost PubAck is dropped too. The position ``RUN:0:N`` (this process's run id and the
entry's number) is the ``RUN:SEGMENT:ENTRY`` of the record id rule
(:func:`rtclake.records.record_id`): it travels in the ``Rtclake-Position`` header, so a
redelivered entry gives its records the same ids, and ``last_position`` is known right
after the append, as the intake's broker code needs.

Writer side (:class:`JetStreamWriter`): a durable pull consumer (``consumer``) that every
writer node shares, on a work-queue stream (a message leaves the stream once
acknowledged). A batch is what the consumer hands over until ``batch_messages`` entries,
``spool.segment_max_bytes`` / ``segment_max_records``, or ``spool.flush_interval`` after
its oldest entry was stored. It goes through the store-stage processors, the converter
and the delivery like a local segment, and its messages are acknowledged only after every
sink confirmed it (the lake: its commit). A failure keeps the batch and retries it with
backoff, touching its messages (``+WPI``) so they are not redelivered meanwhile; a batch
that fails for its data five times is copied to the quarantine stream
``{stream}-quarantine`` (subjects ``{subject_prefix}-quarantine.{table}``, with the reason
in ``Rtclake-Reason``) and then acknowledged. A crash before the acknowledgement
redelivers the messages after ``ack_wait`` seconds; the lake then finds their record ids
and stores nothing twice.

The stream and the consumer are shared by every node: a node creates them when missing
and never changes them. With ``manage_stream``, a node whose settings differ from theirs
is refused at start, naming both values; a shared setting is changed on the server
(docs/SPOOL-JETSTREAM.md, "Changing a shared setting"). A writer renews what it holds by
the consumer's own ``ack_wait``, read from the server while it holds messages, so a
smaller value set by anyone does not redeliver a batch being committed.

The lake's ledger names each batch ``(node, js-STREAM-RUN, n)``: the writer process's own
run, whose batches it commits in order, so the ledger's "skip what a run committed" rule
holds; a redelivered entry comes in a later batch (or another writer's) and is caught by
the lake's write-time de-duplication by record id, not by the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
import pyarrow as pa
import structlog
from nats.aio.client import Client
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from rtclake import faults
from rtclake.config import SpoolConfig
from rtclake.derive import Pending
from rtclake.errors import ConfigError, PayloadTooLarge, SpoolFull, SpoolUnavailable
from rtclake.memory import release_memory
from rtclake.sinks.base import Batch
from rtclake.spool import FRAME, MAGIC, Entry, EntryHeader, Segment, Spool, frame
from rtclake.writer import Writer

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = structlog.get_logger(__name__)

MSG_ID = "Nats-Msg-Id"
POSITION = "Rtclake-Position"  # RUN:SEGMENT:ENTRY, the entry's place for record ids
REASON = "Rtclake-Reason"  # why a quarantined copy was set aside
ORIGIN = "Rtclake-Origin"  # STREAM:SEQUENCE of a quarantined copy's original
# Room left under the server's max_payload for the headers.
HEADROOM = 1024
# Seconds a sender is asked to wait when JetStream does not answer or is full.
RETRY_AFTER = 2
# JetStream's error codes for a stream at its limits.
FULL_CODES = {10077, 10078}  # maximum bytes / messages exceeded
# Seconds at most between two reads of the consumer's ack_wait by a writer holding
# messages: a smaller ack_wait set meanwhile is followed within this.
ACK_WAIT_CHECK = 1.0

_decode_header = msgspec.json.Decoder(EntryHeader).decode


class JetStreamUnavailable(SpoolUnavailable):
    """JetStream did not acknowledge the entry (no server, no stream leader, no PubAck in
    ``spool.jetstream.timeout``); nothing was acknowledged to the sender."""

    reason = "jetstream_unavailable"


def unframe(data: bytes) -> tuple[EntryHeader, bytes] | None:
    """The header and body of one framed entry (a message's payload), or None if the
    bytes are not exactly one valid entry."""
    if len(data) < FRAME.size:
        return None
    magic, head_len, body_len, crc = FRAME.unpack_from(data, 0)
    start = FRAME.size
    if magic != MAGIC or start + head_len + body_len != len(data):
        return None
    head = data[start : start + head_len]
    body = data[start + head_len :]
    if zlib.crc32(body, zlib.crc32(head)) != crc:
        return None
    try:
        return _decode_header(head), body
    except msgspec.MsgspecError:
        return None


def parse_position(text: str | None) -> tuple[str, int, int] | None:
    """``RUN:SEGMENT:ENTRY`` as its parts, or None."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def message_id(header: EntryHeader, body: bytes, position: str) -> str:
    """The ``Nats-Msg-Id`` of an entry: the same for a sender's retry of the same records
    under the same idempotency key (JetStream drops the copy), else the entry's position
    (the same for this process's own retry of a publish)."""
    if header.idem is None:
        return position
    key = "\x1f".join((header.source, header.stream, header.table, header.idem)).encode()
    digest = hashlib.md5(key, usedforsecurity=False)
    digest.update(hashlib.md5(body, usedforsecurity=False).digest())
    return "idem-" + digest.hexdigest()


def _text(exc: BaseException) -> str:
    if isinstance(exc, APIError):
        return f"{exc.description} (code {exc.code}, err_code {exc.err_code})"
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else text or name


def _shown(value: object) -> str:
    """A stream's or consumer's setting as an operator writes it."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _differences(*settings: tuple[str, object, object]) -> list[str]:
    """``name HAVE (this node: WANTED)`` for each setting whose values differ; seconds
    are compared to the microsecond (the server keeps nanoseconds)."""
    found = []
    for name, have, wanted in settings:
        if isinstance(have, float | int) and isinstance(wanted, float | int):
            same = abs(have - wanted) < 1e-6
        else:
            same = have == wanted
        if not same:
            found.append(f"{name} {_shown(have)} (this node: {_shown(wanted)})")
    return found


def _refusal(what: str, differences: list[str]) -> str:
    return (
        f"spool.jetstream: the shared {what} has other settings than this node's:"
        f" {'; '.join(differences)}; nothing was changed: give this node the shared"
        " values, or change them on the server for every node (docs/SPOOL-JETSTREAM.md,"
        ' "Changing a shared setting")'
    )


def _header_value(text: str) -> str:
    """A NATS header value: one line, bounded."""
    return " ".join(text.split())[:1000]


class JetStreamSpool(Spool):
    """The spool as a JetStream stream (see the module doc). Offers what the intake, the
    service and ``/healthz`` use of :class:`~rtclake.spool.Spool`; the writer's side is
    :class:`JetStreamWriter` (the segment methods of the local spool raise)."""

    def __init__(self, config: SpoolConfig, *, node: str) -> None:
        # The local spool's state is not built: nothing here touches a disk.
        js = config.jetstream
        self.config = js
        self.node = node
        self.max_bytes = js.max_bytes or config.max_bytes
        self.segment_max_bytes = config.segment_max_bytes
        self.segment_max_records = config.segment_max_records
        self.flush_interval = config.flush_interval
        self.stream = js.stream
        self.prefix = js.subject_prefix
        self.quarantine_stream = f"{js.stream}-quarantine"
        self.quarantine_prefix = f"{js.subject_prefix}-quarantine"
        self.run_id = "js" + secrets.token_hex(6)
        self.last_position = ""
        self.on_sync: Callable[[float], None] | None = None
        self.max_payload = 1024 * 1024  # the server's, read at connect
        self.ack_wait = js.ack_wait  # the consumer's, read at subscribe and while holding
        self._entries = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_records = 0
        self._failure: SpoolUnavailable | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stream_bytes = 0
        self._stream_messages = 0
        self._stats: asyncio.Task[None] | None = None
        self._closed = False
        self._fetch_failing = False
        self._last_error: Exception | None = None  # the connection's, for the start's error

    # -- state -------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes the stream holds (entries not yet stored by a writer), as last read."""
        return self._stream_bytes

    @property
    def segment_count(self) -> int:
        """Entries the stream holds, as last read."""
        return self._stream_messages

    def disk_free_bytes(self) -> int | None:
        return None  # no local disk is involved

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def failure(self) -> SpoolUnavailable | None:
        if self._failure is None and self._nc is not None and not self.connected:
            return JetStreamUnavailable(
                "not connected to NATS; reconnecting", retry_after=RETRY_AFTER
            )
        return self._failure

    def health(self) -> dict[str, object]:
        failure = self.failure
        state: dict[str, object] = {
            "writable": failure is None,
            "spool_bytes": self.used_bytes,
            "spool_segments": self.segment_count,
            "spool_backend": "jetstream",
            "stream": self.stream,
        }
        if failure is not None:
            state["reason"] = failure.reason
            state["message"] = failure.message
        return state

    @property
    def pending_records(self) -> int:
        """Records published and not yet acknowledged by the stream."""
        return self._in_flight_records

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and check the stream (:meth:`_ensure_stream`; created if missing
        unless ``manage_stream`` is off)."""
        servers = [s.strip() for s in self.config.url.get_secret_value().split(",") if s.strip()]
        nc = Client()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers,
                    name=f"rtclake-spool-{self.node}",
                    connect_timeout=max(1, min(round(self.config.timeout), 5)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    # no buffering while disconnected: a publish then fails at once (503),
                    # and nothing refused reaches the stream later
                    pending_size=0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.config.timeout,
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            why = _text(self._last_error or exc)
            raise JetStreamUnavailable(
                f"spool.jetstream: cannot reach NATS ({len(servers)} server(s)): {why}",
                retry_after=RETRY_AFTER,
            ) from exc
        self._nc = nc
        self.max_payload = nc.max_payload
        self._js = nc.jetstream(timeout=self.config.timeout)
        await self._ensure_stream(
            self.stream, f"{self.prefix}.>", RetentionPolicy.WORK_QUEUE, self.config.max_age
        )
        await self._refresh()
        self._stats = asyncio.create_task(self._stats_loop(), name="spool-jetstream-stats")
        log.info(
            "spool: JetStream stream ready",
            stream=self.stream,
            subjects=f"{self.prefix}.>",
            replicas=self.config.replicas,
            max_bytes=self.max_bytes,
        )

    async def _ensure_stream(
        self, name: str, subjects: str, retention: RetentionPolicy, max_age: float
    ) -> None:
        """Create the stream if it is missing; refuse to start (:class:`ConfigError`) if
        it exists with other limits than this node's. The stream is shared by every
        node: changing it at one node's start had changed it under all the others (the
        last node started won), so a deliberate change is made on the stream itself
        (docs/SPOOL-JETSTREAM.md, "Changing a shared setting")."""
        assert self._js is not None
        wanted = StreamConfig(
            name=name,
            subjects=[subjects],
            retention=retention,
            discard=DiscardPolicy.NEW,
            max_bytes=self.max_bytes,
            max_age=max_age or None,
            storage=StorageType(self.config.storage),
            num_replicas=self.config.replicas,
            duplicate_window=self.config.duplicate_window,
        )
        try:
            try:
                info = await self._js.stream_info(name)
            except NotFoundError:
                if not self.config.manage_stream:
                    raise ConfigError(
                        f"spool.jetstream: stream {name} does not exist (manage_stream is off:"
                        f" create it: {retention.value} retention, subjects {subjects})"
                    ) from None
                await self._js.add_stream(wanted)
                log.info("spool: JetStream stream created", stream=name, subjects=subjects)
                return
        except APIError as exc:
            raise ConfigError(f"spool.jetstream: stream {name}: {_text(exc)}") from exc
        have = info.config
        if have.retention != retention:
            raise ConfigError(
                f"spool.jetstream: stream {name} has {_shown(have.retention)} retention;"
                f" rtclake needs {retention.value}"
            )
        if not self.config.manage_stream:
            return  # the operator's stream, as it is
        differences = _differences(
            ("subjects", have.subjects, wanted.subjects),
            ("max_bytes", have.max_bytes, wanted.max_bytes),
            ("max_age", have.max_age or 0.0, max_age),
            ("replicas", have.num_replicas, wanted.num_replicas),
            ("duplicate_window", have.duplicate_window, wanted.duplicate_window),
            ("discard", have.discard, wanted.discard),
            ("storage", have.storage, wanted.storage),
        )
        if differences:
            raise ConfigError(_refusal(f"stream {name}", differences))

    async def close(self) -> None:
        """Wait for the publishes in flight, then close the connection."""
        if self._closed:
            return
        self._closed = True
        await self.flush()
        if self._stats is not None:
            self._stats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats
        nc, self._nc, self._js, self._sub = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        log.debug("spool: NATS connection error", error=_text(exc))

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("spool: disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.warning("spool: reconnected to NATS")
        await self._refresh()

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            await self._refresh()

    async def _refresh(self) -> None:
        """Read the stream's size (for ``/healthz`` and the metrics) and its limit."""
        if self._js is None or not self.connected:
            return
        try:
            info = await self._js.stream_info(self.stream)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.debug("spool: cannot read the stream's state", error=_text(exc))
            return
        self._stream_bytes = info.state.bytes
        self._stream_messages = info.state.messages
        if info.config.max_bytes and info.config.max_bytes > 0:
            # the stream's limit is what refuses entries, whoever set it
            self.max_bytes = info.config.max_bytes
        self._recovered()  # the stream answers: /healthz may send senders here again

    def _recovered(self) -> None:
        if self._failure is not None:
            log.warning("spool: JetStream answers again")
            self._failure = None

    # -- appending ---------------------------------------------------------------------

    def check_room(self, size: int) -> None:
        """Raise :class:`PayloadTooLarge` if an entry of ``size`` bytes cannot be one
        message (the server's ``max_payload``) or would not fit in the empty stream."""
        if size + HEADROOM > self.max_payload:
            raise PayloadTooLarge(
                "too_large",
                f"the records take {size} bytes as one JetStream message, more than the NATS"
                f" server's max_payload ({self.max_payload} bytes, less {HEADROOM} for"
                " headers); send them in smaller requests",
            )
        if size > self.max_bytes:
            raise PayloadTooLarge(
                "too_large",
                f"the records take {size} bytes in the spool, more than its limit"
                f" ({self.max_bytes} bytes); send them in smaller requests",
            )

    async def append(self, header: EntryHeader, body: bytes) -> None:
        """Publish one entry and return once the stream acknowledged it."""
        await self.append_nowait(header, body)

    def append_nowait(self, header: EntryHeader, body: bytes) -> asyncio.Future[None]:
        """Publish one entry; the returned future completes when the stream acknowledged
        it (raises :class:`SpoolFull`, :class:`JetStreamUnavailable`)."""
        if self._closed or self._js is None:
            raise RuntimeError("spool is closed")
        data = frame(header, body)
        self.check_room(len(data))
        self._entries += 1
        position = f"{self.run_id}:0:{self._entries}"
        self.last_position = position
        headers = {MSG_ID: message_id(header, body, position), POSITION: position}
        subject = f"{self.prefix}.{header.table}"
        task = asyncio.create_task(self._publish(subject, data, headers, header.records))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str], records: int
    ) -> None:
        assert self._js is not None
        js = self._js
        self._in_flight_records += records
        deadline = time.monotonic() + self.config.timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    ack = await js.publish(
                        subject, data, timeout=max(remaining, 0.05), headers=dict(headers)
                    )
                except NoStreamResponseError as exc:
                    # no stream leader now (an election, a restart): the same message id
                    # again, which the stream drops if the first copy did arrive
                    if time.monotonic() + 0.25 < deadline:
                        await asyncio.sleep(0.25)
                        continue
                    raise self._unavailable(exc) from exc
                except ServiceUnavailableError as exc:
                    if exc.err_code in FULL_CODES:
                        await self._refresh()
                        raise SpoolFull(
                            self._stream_bytes, self.max_bytes, retry_after=RETRY_AFTER
                        ) from exc
                    raise self._unavailable(exc) from exc
                except APIError as exc:
                    raise self._unavailable(exc) from exc
                except (nats.errors.Error, OSError, TimeoutError) as exc:
                    raise self._unavailable(exc) from exc
                break
        finally:
            self._in_flight_records -= records
        self._recovered()
        if ack.duplicate:
            log.debug("spool: entry was in the stream already", msg_id=headers[MSG_ID])

    def _unavailable(self, exc: BaseException) -> JetStreamUnavailable:
        why = (
            "not connected to NATS"
            if isinstance(
                exc, nats.errors.OutboundBufferLimitError | nats.errors.ConnectionClosedError
            )
            else _text(exc)
        )
        error = JetStreamUnavailable(
            f"JetStream did not acknowledge the entry ({why}); retry later",
            retry_after=RETRY_AFTER,
        )
        if self._failure is None:
            log.error("spool: JetStream refuses entries", stream=self.stream, error=_text(exc))
        self._failure = error
        return error

    def cut(self) -> None:
        """Nothing to cut: a batch is what a writer fetches."""

    async def flush(self) -> None:
        """Wait for the publishes in flight (their errors go to their callers)."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.config.timeout + 1)

    # -- the local spool's writer side does not apply -----------------------------------

    def sealed_waiting(self) -> int:
        return 0

    async def next_sealed(self) -> Segment:
        raise NotImplementedError("a JetStream spool has no segments: JetStreamWriter fetches")

    @staticmethod
    def read(seg: Segment) -> list[Entry]:
        raise NotImplementedError("a JetStream spool has no segments")

    @staticmethod
    def acked_sinks(seg: Segment) -> set[str]:
        raise NotImplementedError("a JetStream spool has no segments")

    def ack(self, seg: Segment, sink: str) -> None:
        raise NotImplementedError("a JetStream spool has no segments")

    def quarantine(self, seg: Segment) -> Path:
        raise NotImplementedError("a JetStream spool has no segments")

    def remove(self, seg: Segment) -> None:
        raise NotImplementedError("a JetStream spool has no segments")

    # -- the consumer (JetStreamWriter's) ----------------------------------------------

    async def subscribe(self) -> None:
        """Create the quarantine stream and the durable pull consumer if they are
        missing, and bind to the consumer. An existing consumer is not changed: with
        ``manage_stream``, one whose settings are not this node's is refused (as a
        stream is); without it, it is used as it is. Either way the writer renews by the
        consumer's own ``ack_wait`` (:meth:`read_ack_wait`)."""
        assert self._js is not None
        await self._ensure_stream(
            self.quarantine_stream, f"{self.quarantine_prefix}.>", RetentionPolicy.LIMITS, 0.0
        )
        name = self.config.consumer
        wanted = ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait,
            max_deliver=-1,  # never give up on an entry: a redelivery is harmless
            max_ack_pending=max(16 * self.config.batch_messages, 1000),
            filter_subject=f"{self.prefix}.>",
        )
        try:
            try:
                info = await self._js.consumer_info(self.stream, name)
            except NotFoundError:
                info = await self._js.add_consumer(self.stream, wanted)
                log.info("spool: JetStream consumer created", consumer=name, stream=self.stream)
            have = info.config
            if have.ack_policy != AckPolicy.EXPLICIT:
                raise ConfigError(
                    f"spool.jetstream: consumer {name} of {self.stream} has"
                    f" {_shown(have.ack_policy)} acknowledgements; rtclake needs explicit"
                )
            if self.config.manage_stream:
                differences = _differences(
                    ("ack_wait", have.ack_wait, wanted.ack_wait),
                    ("filter_subject", have.filter_subject, wanted.filter_subject),
                )
                if differences:
                    raise ConfigError(_refusal(f"consumer {name} of {self.stream}", differences))
            self.ack_wait = have.ack_wait or self.config.ack_wait
            self._sub = await self._js.pull_subscribe_bind(name, self.stream)
        except APIError as exc:
            raise ConfigError(
                f"spool.jetstream: consumer {name} of {self.stream}: {_text(exc)}"
            ) from exc
        log.info("spool: JetStream consumer ready", consumer=name, ack_wait=self.ack_wait)

    async def read_ack_wait(self) -> float:
        """The consumer's ``ack_wait`` as the server has it now (the last one read when
        the server does not answer). The consumer is shared: an operator may change it
        while this node runs, and it is the consumer's value, not this node's setting,
        that decides when JetStream redelivers what this node holds."""
        if self._js is None or not self.connected:
            return self.ack_wait
        try:
            info = await self._js.consumer_info(
                self.stream, self.config.consumer, timeout=min(self.config.timeout, ACK_WAIT_CHECK)
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.debug("spool: cannot read the consumer's ack_wait", error=_text(exc))
            return self.ack_wait
        found = info.config.ack_wait
        if found and abs(found - self.ack_wait) >= 1e-6:
            log.warning(
                "spool: the consumer's ack_wait changed; renewing by it",
                consumer=self.config.consumer,
                ack_wait=found,
                was=self.ack_wait,
            )
            self.ack_wait = found
        return self.ack_wait

    async def fetch(self, want: int, timeout: float) -> list[Msg]:
        """Up to ``want`` messages, waiting at most ``timeout`` seconds for the first."""
        try:
            if self._sub is None:
                await self.subscribe()
            assert self._sub is not None
            msgs = await self._sub.fetch(want, timeout=timeout)
        except TimeoutError:  # nothing came (nats' TimeoutError is one too)
            return []
        except (nats.errors.Error, OSError, ConfigError) as exc:
            if not self._fetch_failing:
                log.error("spool: cannot fetch from JetStream; retrying", error=_text(exc))
            self._fetch_failing = True
            if isinstance(exc, NotFoundError):  # the consumer is gone: create it again
                self._sub = None
            await asyncio.sleep(min(timeout, 1.0))
            return []
        if self._fetch_failing:
            log.warning("spool: fetching from JetStream again")
            self._fetch_failing = False
        return msgs

    async def ack_messages(self, msgs: list[Msg]) -> None:
        """Acknowledge ``msgs`` (they leave the stream) and flush the acknowledgements."""
        assert self._nc is not None
        for msg in msgs:
            await msg.ack()
        await self._nc.flush(timeout=max(1, round(self.config.timeout)))

    async def nak_messages(self, msgs: list[Msg]) -> None:
        """Hand ``msgs`` back for redelivery now (to any writer)."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()

    async def touch(self, msgs: list[Msg]) -> None:
        """Tell JetStream ``msgs`` are still being worked on (their ``ack_wait`` restarts)."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def quarantine_messages(self, msgs: list[Msg], reason: str) -> None:
        """Copy ``msgs`` to the quarantine stream (with the reason), then acknowledge
        them; raises if a copy is not acknowledged (nothing is acknowledged then)."""
        assert self._js is not None
        for msg in msgs:
            headers = dict(msg.headers or {})
            headers[REASON] = _header_value(reason)
            headers[ORIGIN] = f"{self.stream}:{msg.metadata.sequence.stream}"
            table = msg.subject[len(self.prefix) + 1 :] or "unknown"
            await self._js.publish(f"{self.quarantine_prefix}.{table}", msg.data, headers=headers)
        await self.ack_messages(msgs)


@dataclass(eq=False)
class Held:
    """A batch of messages a writer took: their entries by position run, what is done."""

    seq: int
    messages: list[Msg] = field(default_factory=list)
    groups: dict[tuple[str, int], list[Entry]] = field(default_factory=dict)
    records: int = 0
    size: int = 0
    confirmed: set[str] = field(default_factory=set)  # sinks that hold the batch
    pending: Pending | None = None  # derived tables' new states, adopted after the ack
    reason: str = ""  # the last data failure


class JetStreamWriter(Writer):
    """The writer of a JetStream spool: fetches batches from the durable consumer,
    delivers them like :class:`~rtclake.writer.Writer` delivers segments, acknowledges
    their messages once every sink confirmed. With ``spool.jetstream.consume: false`` it
    does nothing (an ingest-only node)."""

    def __init__(self, spool: Spool, *args: Any, **kwargs: Any) -> None:
        if not isinstance(spool, JetStreamSpool):
            raise TypeError("JetStreamWriter needs a JetStreamSpool")
        super().__init__(spool, *args, **kwargs)
        self.js = spool
        self.consume = spool.config.consume
        self.batch_run = f"js-{spool.stream}-{secrets.token_hex(6)}"
        self._seq = 0
        self._current: list[Msg] = []  # messages taken and not yet acknowledged
        self._stopping = False
        self._keep_alive: asyncio.Task[None] | None = None
        self._message_size = 256 * 1024  # bytes per message, as seen (a cautious start)

    async def start(self) -> None:
        if not self.consume:
            log.info("writer: off on this node (spool.jetstream.consume is false)")
            return
        await self.js.subscribe()
        await super().start()
        self._keep_alive = asyncio.create_task(self._touch_loop(), name="writer-keep-alive")

    @property
    def idle(self) -> bool:
        return not self._busy and not self._current

    async def drain(self, timeout: float) -> bool:
        """Stop taking batches; finish the one being stored (within ``timeout``) and hand
        back the messages gathered for the next one. What the stream holds stays there
        for the next writer: nothing needs to be drained from this node."""
        await self.js.flush()
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._busy:
            return False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        taken, self._current = self._current, []
        if taken:
            await self.js.nak_messages(taken)
        return True

    async def stop(self) -> None:
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keep_alive
        await super().stop()

    async def _touch_loop(self) -> None:
        """Renew the held messages every third of the consumer's ``ack_wait``, read
        from the server every round while messages are held (a round: that third, at
        most :data:`ACK_WAIT_CHECK`). The period had come from this node's own setting:
        a consumer whose ``ack_wait`` another node or an operator had made smaller
        redelivered batches while they were being committed, to other writers."""
        renewed = float("-inf")  # what is taken after an idle spell is renewed at once
        while True:
            await asyncio.sleep(min(max(self.js.ack_wait / 3, 0.2), ACK_WAIT_CHECK))
            if not self._current:
                continue
            every = max(await self.js.read_ack_wait() / 3, 0.2)
            if time.monotonic() - renewed >= every:
                await self.js.touch(list(self._current))
                renewed = time.monotonic()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                held = await self._gather()
                if held is None:
                    continue
                self._busy = True
                try:
                    await self._store(held)
                finally:
                    self._busy = False
                    self._current = []
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the writer never dies; its batch is redelivered
                self.metrics.writer_errors.labels("spool").inc()
                log.error("writer: batch failed; handed back", error=_text(exc))
                taken, self._current = self._current, []
                await self.js.nak_messages(taken)
                await asyncio.sleep(self.retry_initial)

    async def _gather(self) -> Held | None:
        """The next batch: messages until a limit or ``flush_interval`` after the oldest
        one was stored; None when none came within a second."""
        js = self.js
        held = Held(self._seq + 1)
        deadline: float | None = None  # wall clock
        while not self._stopping:
            room = js.config.batch_messages - len(held.messages)
            if (
                room <= 0
                or held.size >= js.segment_max_bytes
                or held.records >= js.segment_max_records
            ):
                break
            wait = 1.0 if deadline is None else min(deadline - time.time(), 1.0)
            if wait <= 0:
                break
            # As many as fit in the batch's bytes at the sizes seen so far: the server
            # sends a fetch at once, and a client that lags more than its max_pending
            # (64 MiB) behind is cut off as a slow consumer.
            want = min(room, max(1, (js.segment_max_bytes - held.size) // self._message_size))
            msgs = await js.fetch(want, max(wait, 0.01))
            if not msgs and deadline is None:
                return None
            if msgs:
                seen = sum(len(m.data) for m in msgs) // len(msgs)
                self._message_size = max(64, (self._message_size + seen) // 2)
            for msg in msgs:
                await self._take(held, msg)
                if deadline is None and held.messages:
                    stored = msg.metadata.timestamp.timestamp()
                    deadline = min(stored, time.time()) + js.flush_interval
        if not held.messages:
            return None
        self._seq = held.seq
        return held

    async def _take(self, held: Held, msg: Msg) -> None:
        """Add one message to ``held``, or quarantine it at once if it is not an entry."""
        found = unframe(msg.data)
        position = parse_position((msg.headers or {}).get(POSITION))
        if found is None or position is None:
            reason = "not an rtclake spool entry (frame, CRC or Rtclake-Position header)"
            log.error(
                "writer: message quarantined", seq=msg.metadata.sequence.stream, reason=reason
            )
            await self.js.quarantine_messages([msg], reason)
            self.metrics.quarantined.inc()
            return
        header, body = found
        run, segment, index = position
        held.groups.setdefault((run, segment), []).append(Entry(header, body, index))
        held.messages.append(msg)
        held.records += header.records
        held.size += len(msg.data)
        self._current.append(msg)

    async def _store(self, held: Held) -> None:
        loop = asyncio.get_running_loop()
        work = self.delivery.executor  # convert and deliver on the sinks' thread
        delay = self.retry_initial
        failures = 0
        while True:
            done, data_error = await loop.run_in_executor(work, self._deliver_safely_held, held)
            if done:
                break
            failures += data_error
            if failures >= self.max_data_failures:
                await self.js.quarantine_messages(held.messages, held.reason or "data")
                self.metrics.quarantined.inc()
                log.error(
                    "writer: batch quarantined; inspect the quarantine stream and re-ingest",
                    stream=self.js.quarantine_stream,
                    messages=len(held.messages),
                    reason=held.reason,
                )
                return
            if self._stopping:  # hand it back: another writer (or the next run) takes it
                await self.js.nak_messages(held.messages)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max)
        faults.check("jetstream.before_ack")
        try:
            await self.js.ack_messages(held.messages)
        except Exception as exc:  # stored: a redelivery is found in the lake
            log.warning("writer: acknowledgement failed; JetStream redelivers", error=_text(exc))
        faults.check("jetstream.after_ack")
        if held.pending is not None:
            await loop.run_in_executor(work, self.derivations.commit, held.pending)
        if time.monotonic() - self._last_maintenance >= self.maintenance_interval:
            self._last_maintenance = time.monotonic()
            await loop.run_in_executor(None, self.delivery.maintain)

    def _deliver_safely_held(self, held: Held) -> tuple[bool, bool]:
        try:
            return self._deliver_held(held)
        except OSError as exc:
            self.metrics.writer_errors.labels("spool").inc()
            log.error("writer: batch failed; kept", error=_text(exc))
            return False, False

    def _deliver_held(self, held: Held) -> tuple[bool, bool]:
        """Convert and deliver one batch to every sink that lacks it; (every sink has it,
        a sink or the converter refused its data)."""
        faults.check("writer.after_read")
        parts: dict[str, list[pa.Table]] = {}
        try:
            for (run, segment), entries in held.groups.items():
                if self.process is not None:
                    entries = self.process(entries, run, segment)
                for name, table in self._converter.convert(run, segment, entries).items():
                    parts.setdefault(name, []).append(table)
            tables = {
                name: found[0]
                if len(found) == 1
                else pa.concat_tables(found, promote_options="default")
                for name, found in parts.items()
            }
        except Exception as exc:  # retried, then set aside; never dropped
            self.metrics.writer_errors.labels("convert").inc()
            held.reason = f"cannot convert: {type(exc).__name__}: {exc}"
            log.error("writer: cannot convert batch", batch=held.seq, error=held.reason)
            return False, True
        faults.check("writer.after_convert")
        derived, pending = self.derivations.derive(tables)
        batch = Batch(self.node, self.batch_run, held.seq, {**tables, **derived})
        outcome = self.delivery.deliver(batch, set(held.confirmed), held.confirmed.add)
        if outcome.data_error:
            held.reason = "a sink refused the batch's data"
        if outcome.done:
            held.pending = pending
            log.info(
                "writer: batch stored",
                batch=batch.name,
                entries=len(held.messages),
                rows={name: table.num_rows for name, table in batch.tables.items()},
            )
        del batch, tables, parts
        release_memory()
        return outcome.done, outcome.data_error
