"""``kraken_grpc``: Kraken's broker contract over gRPC, so an unmodified Kraken collector
(or any client generated from ``kraken.proto``) sends its messages to rtclake.

Both contracts are served on one address (grpcio's asyncio server, on the service's
event loop):

- ``kraken.KrakenService/ProcessKrakenRequest``: each request is one message, stored by
  :func:`rtclake.messages.message_line` (a JSON-object payload keeps its keys; any other
  payload is kept as bytes) with its ``collector_name``, ``content_type`` and
  ``metadata`` (a JSON object as text) in the record. The stream is the configured one,
  or the collector's name made a stream name (``webhook``, ``mqtt``, ``camera``).
- ``kraken.KrakenMessage/Send`` (the older contract): ``payload`` (text) is the message,
  ``provider`` the collector (and the stream), ``kind`` goes into the metadata.

**Guarantee.** A call is answered only once its record is durable in the spool (and the
brokers that match it answered or ran out of time): an answer means stored. Refusals
are gRPC statuses, and nothing of a refused call is stored: ``INVALID_ARGUMENT``
(a request that is not the contract's message, such as a ``string`` field that is not
UTF-8; metadata that is not a JSON object; a record its table refuses; a bad stream name),
``UNAVAILABLE`` (the spool is full or its disk fails; trailing metadata ``retry-after``
in seconds), ``RESOURCE_EXHAUSTED`` (a message larger than the whole spool; one larger
than ``max_message_bytes`` is refused by gRPC itself, with the same status).

**Answers.** ``ProcessKrakenRequest`` answers the reply the brokers chose
(:mod:`rtclake.brokers`), addressed back to the caller's collector as Kraken's brokers
do (``collector_name`` of the request, so Kraken's WebSocket collector passes it to its
client); with no reply, the default: ``collector_name`` ``"rtclake"``, ``content_type``
``application/json``, ``metadata`` ``{"record_id": ID}`` and ``payload``
``{"accepted":1,"record_id":ID}`` (``{"accepted":0}`` when an intake-stage processor
dropped the record; a collector does not forward it: Kraken's WebSocket
collector forwards only answers addressed to ``"websocket"``). ``Send`` answers
``status`` 1, as Kraken's broker does, unless a broker replied a status (an integer, or a
JSON object with an integer ``"status"``). ``record_id`` is the record's id in the lake.

**Deadlines.** Kraken's collector waits as long as its client allows; a caller that sets
a gRPC deadline gets its answer before it: the brokers get what is left of it (less
:data:`REPLY_MARGIN`), then the default reply goes. A caller that gives up does not stop
its record being stored.

**Retries.** Every call is one record. With the value of the first ``id_keys`` key
(``message_id``) in the request's metadata, with the collector's name, as its
idempotency key, a client that retries with the same ``message_id`` is stored once;
without one, the record id rule of HTTP ingest applies: a payload with its own time
(``time``, ``timestamp``, ``ts``) sent twice is stored once, one without is stored
again.

Reports ``rtclake_records_received_total`` and ``rtclake_records_rejected_total`` under
the source's name.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
import orjson
import structlog
from google.protobuf.message import DecodeError

from rtclake.errors import ConfigError, InputError, PayloadTooLarge, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.integrations.kraken import contract
from rtclake.messages import JSON_TYPE, Reply, message_line
from rtclake.sources.base import Records, Source
from rtclake.tables import Table

log = structlog.get_logger(__name__)

DEFAULT_COLLECTOR = "rtclake"  # collector_name of the default reply: addressed to no one
SENT = 1  # KrakenMessageResponse.status: Kraken's broker answers 1 to every Send
REPLY_MARGIN = 0.05  # seconds of a caller's deadline kept for the answer to travel
STOP_GRACE = 10.0  # seconds calls in flight get to finish when rtclake stops

_NOT_STREAM = re.compile(r"[^A-Za-z0-9_.:\-]+")


def stream_name(collector: str, fallback: str = "kraken") -> str:
    """A valid stream name for a collector's name: characters outside letters, digits
    and ``_.:-`` become ``_``; 128 characters at most, starting with a letter or digit."""
    name = _NOT_STREAM.sub("_", collector).lstrip("_.:-")[:128]
    return name or fallback


def parse_metadata(text: str) -> dict[str, Any]:
    """The request's ``metadata``: a JSON object as text (empty: ``{}``); raises
    :class:`InputError` otherwise."""
    if not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError("bad_metadata", f"metadata is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise InputError(
            "bad_metadata",
            f"metadata must be a JSON object as text, not {kinds.get(type(value), 'a number')}",
        )
    return value


def send_status(reply: Reply | None) -> int:
    """``Send``'s answer: the brokers' reply when it is a status (an integer, or a JSON
    object's integer ``"status"``, in int32), else :data:`SENT`."""
    if reply is None:
        return SENT
    value = reply.json_value()
    if isinstance(value, dict):
        value = value.get("status")
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return SENT


class KrakenGrpc(Source):
    """A gRPC server speaking Kraken's broker contract (current and older)."""

    def __init__(
        self,
        intake: Intake,
        *,
        name: str = "kraken",
        listen: str,
        stream: str | None = None,
        table: Table | None = None,
        max_message_bytes: int,
        id_keys: Sequence[str] = ("message_id",),
    ) -> None:
        self.name = name
        self.intake = intake
        self.listen = listen
        self.stream = stream
        self.table = table
        self.max_message_bytes = max_message_bytes
        self.id_keys = tuple(id_keys)
        self.port: int | None = None  # the port bound, once started
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        limit = self.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # one server per port: a second rtclake must fail, not share it silently
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(self._handlers())
        try:
            self.port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise ConfigError(
                f"sources.{self.name}.listen: cannot listen on {self.listen!r} (in use, or"
                f" not an address of this host): {exc}"
            ) from exc
        await server.start()
        self._server = server
        log.info("kraken gRPC server listening", source=self.name, listen=self.listen,
                 port=self.port)  # fmt: skip

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE)
            self._server = None

    def _handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        # Requests arrive as bytes and are parsed by the handlers, so a request that is
        # not the contract's message is refused as bad input (not an UNKNOWN error).
        current: grpc.RpcMethodHandler[bytes, Any] = grpc.unary_unary_rpc_method_handler(
            self.process, response_serializer=contract.KrakenResponse.SerializeToString
        )
        older: grpc.RpcMethodHandler[bytes, Any] = grpc.unary_unary_rpc_method_handler(
            self.send, response_serializer=contract.KrakenMessageResponse.SerializeToString
        )
        return (
            grpc.method_handlers_generic_handler(contract.SERVICE, {contract.PROCESS: current}),
            grpc.method_handlers_generic_handler(contract.OLD_SERVICE, {contract.SEND: older}),
        )

    async def process(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """``ProcessKrakenRequest``: store the message, then answer the brokers' reply or
        the default."""
        request = await self._parse(context, contract.KrakenRequest, raw)
        collector: str = request.collector_name
        try:
            metadata = parse_metadata(request.metadata)
            stream = self.stream or stream_name(collector)
            table = self.table or self.intake.table_for(stream)
            line = message_line(
                request.payload,
                content_type=request.content_type or None,
                metadata=metadata or None,
                collector=collector or None,
            )
            records = self.intake.validate(line, table, lines=True)
        except InputError as exc:
            await self._refuse(context, exc)
        taken = await self._take(context, stream, table, records, self._idem(collector, metadata))
        rid = taken.record_ids[0] if taken.record_ids else None
        reply = None if taken.reply is None else Reply.of(taken.reply)
        if reply is None:
            ids = {"record_id": rid} if rid else {}
            return contract.KrakenResponse(
                collector_name=DEFAULT_COLLECTOR,
                content_type=JSON_TYPE,
                metadata=orjson.dumps(ids).decode(),
                # 0 when an intake-stage processor dropped the record (HTTP says so too)
                payload=orjson.dumps({"accepted": taken.records, **ids}),
            )
        meta = {"record_id": rid, **reply.metadata} if rid else reply.metadata
        return contract.KrakenResponse(
            collector_name=collector,
            content_type=reply.content_type,
            metadata=orjson.dumps(meta, default=str).decode(),
            payload=reply.payload,
        )

    async def send(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """``Send`` (the older contract): store the payload, then answer status 1."""
        request = await self._parse(context, contract.KrakenMessageRequest, raw)
        provider: str = request.provider
        try:
            stream = self.stream or stream_name(provider)
            table = self.table or self.intake.table_for(stream)
            line = message_line(
                request.payload.encode(),
                metadata={"kind": request.kind} if request.kind else None,
                collector=provider or None,
            )
            records = self.intake.validate(line, table, lines=True)
        except InputError as exc:
            await self._refuse(context, exc)
        taken = await self._take(context, stream, table, records, None)
        return contract.KrakenMessageResponse(status=send_status(taken.reply))

    async def _parse(
        self, context: grpc.aio.ServicerContext[Any, Any], message: Any, raw: bytes
    ) -> Any:
        """``raw`` as the contract's ``message``; a request that is not one (corrupt, or a
        ``string`` field that is not UTF-8) is refused with ``INVALID_ARGUMENT``."""
        try:
            return message.FromString(raw)
        except DecodeError as exc:
            name = message.DESCRIPTOR.full_name
            await self._refuse(context, InputError("bad_request", f"not a {name}: {exc}"))

    def _idem(self, collector: str, metadata: dict[str, Any]) -> str | None:
        """The call's idempotency key: the sender's message id; without one, None (the
        record id rule then takes the record's text when it has its own time, else its
        place in the spool, as for HTTP ingest)."""
        for key in self.id_keys:
            value = metadata.get(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= 256):
                return f"{collector}:{value}"
        return None

    async def _take(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        stream: str,
        table: Table,
        records: Records,
        idem: str | None,
    ) -> Any:
        """Hand the record to the intake and wait until it is durable (and the brokers
        answered, within the caller's deadline); the storing goes on if the caller
        leaves."""
        remaining = context.time_remaining()
        within = None if remaining is None else max(0.0, remaining - REPLY_MARGIN)
        task = asyncio.ensure_future(
            self.intake.take(self.name, stream, table, records, idem=idem, within=within, ids=True)
        )
        task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)
        except (SpoolUnavailable, PayloadTooLarge) as exc:
            await self._refuse(context, exc)

    async def _refuse(
        self, context: grpc.aio.ServicerContext[Any, Any], exc: InputError | SpoolUnavailable
    ) -> NoReturn:
        self.intake.metrics.rejected.labels(self.name, exc.reason).inc()
        if isinstance(exc, SpoolUnavailable):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{exc.reason}: {exc.message}",
                trailing_metadata=(("retry-after", str(exc.retry_after)),),
            )
        code = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if isinstance(exc, PayloadTooLarge)
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        await context.abort(code, f"{exc.reason}: {exc.message}")


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Consume the outcome of a take whose caller left (else asyncio logs it as lost)."""
    if not task.cancelled():
        task.exception()
