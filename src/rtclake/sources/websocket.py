"""The WebSocket source: each text or binary frame is a record, acknowledged on the same
socket once it is durable, with a broker's reply when there is one.

``GET /ws/{stream}`` upgrades to a WebSocket (the path is configurable; ``{stream}`` names
the stream, which the router maps to a table, ``telemetry`` by default). With
``server.ingest_token`` set, the client sends it as ``Authorization: Bearer TOKEN`` or,
where it cannot set headers (a browser), as ``?token=TOKEN``; without it the upgrade is
refused (403).

Frames (see :mod:`rtclake.messages`): a text frame holding a JSON object is a record with
its keys; any other text is kept as bytes with ``content_type`` ``text/plain``; a binary
frame is kept as bytes (``payload``), with ``content_type`` ``application/octet-stream``.

Answers: frames are numbered from 1 on each connection. For each, in order, one text
frame of JSON:

- ``{"ack": N, "record_id": "..."}`` once frame N is durable, with ``"reply": ...`` when
  a broker replied (JSON as its value, text as a string, other bytes as
  ``{"base64", "content_type"}``);
- ``{"error": REASON, "message": "...", "frame": N}`` when frame N was refused (bad input:
  nothing of it is stored; ``spool_full``/``disk_full``: send it again after
  ``retry_after`` seconds). The connection stays open.

Frames are read while earlier ones are being stored (up to ``max_in_flight`` per
connection), so a client that does not wait for each ack gets the throughput of the
spool's group commit. A frame larger than ``max_frame_bytes`` closes the connection
(1009, message too big) without storing it, once the frames before it are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Iterable
from typing import Any

import orjson
import structlog
from pydantic import Field
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtclake.errors import ConfigError, InputError, SpoolUnavailable
from rtclake.intake import Intake, Taken
from rtclake.messages import BYTES_TYPE, TEXT_TYPE, json_object, message_line
from rtclake.registry import BuildContext, ComponentType, SourceConfig
from rtclake.sources.base import Source

log = structlog.get_logger(__name__)


class WebSocketConfig(SourceConfig):
    """``type: websocket``: records from WebSocket frames, acknowledged on the socket."""

    path: str = Field(
        default="/ws/{stream}",
        description="the path to upgrade on; {stream} names the stream (or give `stream`)",
    )
    stream: str | None = Field(
        default=None, description="the stream of every frame, for a path without {stream}"
    )
    max_frame_bytes: int = Field(
        default=1 << 20, gt=0, description="a larger frame closes the connection (1009)"
    )
    max_in_flight: int = Field(
        default=64, ge=1, description="frames of one connection being stored at once"
    )


class WebSocketSource(Source):
    """The WebSocket endpoint."""

    def __init__(self, config: WebSocketConfig, intake: Intake, token: str | None, name: str):
        if not config.path.startswith("/"):
            raise ConfigError(f"sources.{name}.path: {config.path!r} must start with '/'")
        if "{stream}" not in config.path and not config.stream:
            raise ConfigError(f"sources.{name}: a path without {{stream}} needs `stream`")
        if config.stream is not None:
            try:
                intake.table_for(config.stream)
            except InputError as exc:
                raise ConfigError(f"sources.{name}.stream: {exc}") from exc
        self.name = self.source = name
        self.config = config
        self.intake = intake
        self.metrics = intake.metrics
        self.token = token

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute(self.config.path, self.handle)]

    def _authorized(self, websocket: WebSocket) -> bool:
        if self.token is None:
            return True
        scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
        # As bytes: a header's come back from Latin-1 (Starlette's decoding), the query's
        # from its percent-decoded UTF-8 text.
        if scheme.lower() == "bearer":
            sent: bytes | None = value.strip().encode("latin-1", "replace")
        else:
            query = websocket.query_params.get("token")
            sent = None if query is None else query.encode("utf-8", "replace")
        return sent is not None and hmac.compare_digest(sent, self.token.encode())

    async def handle(self, websocket: WebSocket) -> None:
        if not self._authorized(websocket):
            self.metrics.rejected.labels(self.source, "unauthorized").inc()
            await websocket.close(code=1008)  # before accept: the upgrade answers 403
            return
        stream = self.config.stream or websocket.path_params.get("stream", "")
        try:
            table = self.intake.table_for(stream)
        except InputError as exc:
            self.metrics.rejected.labels(self.source, exc.reason).inc()
            await websocket.close(code=1008, reason=exc.message[:120])
            return
        await websocket.accept()
        pending: asyncio.Queue[tuple[int, asyncio.Task[Taken] | InputError] | None]
        pending = asyncio.Queue(self.config.max_in_flight)
        answers = asyncio.create_task(self._answer(websocket, pending))
        number = 0
        too_big = False
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data: bytes | None = message.get("bytes")
                text: str | None = message.get("text")
                payload = data if data is not None else (text or "").encode()
                number += 1
                if len(payload) > self.config.max_frame_bytes:
                    self.metrics.rejected.labels(self.source, "too_large").inc()
                    too_big = True
                    break
                await pending.put((number, self._take(stream, table, payload, data is not None)))
        except WebSocketDisconnect:
            pass
        finally:
            await pending.put(None)
            await answers  # the frames before are answered first
        if too_big:
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=1009)

    def _take(
        self, stream: str, table: Any, payload: bytes, binary: bool
    ) -> asyncio.Task[Taken] | InputError:
        if binary:
            content_type: str | None = BYTES_TYPE
        else:
            content_type = None if json_object(payload) is not None else TEXT_TYPE
        line = message_line(payload, content_type=content_type)
        try:
            records = self.intake.validate(line, table, lines=True)
        except InputError as exc:
            self.metrics.rejected.labels(self.source, exc.reason).inc()
            return exc
        return asyncio.create_task(self.intake.take(self.source, stream, table, records, ids=True))

    async def _answer(
        self,
        websocket: WebSocket,
        pending: asyncio.Queue[tuple[int, asyncio.Task[Taken] | InputError] | None],
    ) -> None:
        """Send each frame's answer, in order, as its record becomes durable."""
        open_ = True
        while (item := await pending.get()) is not None:
            number, work = item
            answer: dict[str, Any]
            if isinstance(work, InputError):
                answer = {**work.to_dict(), "frame": number}
            else:
                try:
                    taken = await work
                except SpoolUnavailable as exc:
                    self.metrics.rejected.labels(self.source, exc.reason).inc()
                    answer = {"error": exc.reason, "message": exc.message, "frame": number,
                              "retry_after": exc.retry_after}  # fmt: skip
                except Exception as exc:  # never lose the connection's other answers
                    log.error("websocket: a frame could not be stored", frame=number,
                              error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                    answer = {"error": "internal", "message": "not stored", "frame": number}
                else:
                    answer = self._ack(number, taken)
            if open_:
                try:
                    await websocket.send_text(orjson.dumps(answer, default=str).decode())
                except (WebSocketDisconnect, RuntimeError):
                    open_ = False  # the client left: its frames are stored all the same

    @staticmethod
    def _ack(number: int, taken: Taken) -> dict[str, Any]:
        """The answer to a durable frame (an intake-stage processor may have dropped
        its record: then there is no record id)."""
        answer: dict[str, Any] = {"ack": number}
        answer["record_id"] = taken.record_ids[0] if taken.record_ids else None
        if taken.reply is not None:
            try:
                answer["reply"] = taken.reply.json_value()
            except Exception as exc:  # a reply that cannot be sent: the ack still goes
                log.error("websocket: a reply could not be sent", frame=number, error=str(exc))
        return answer


SERVER_FRAME_LIMIT = 16 * 1024 * 1024  # uvicorn's own ws_max_size when not told otherwise


def server_frame_limit(sources: Iterable[Source]) -> int:
    """The largest frame the HTTP server (uvicorn's ``ws_max_size``) must let through:
    beyond each source's ``max_frame_bytes``, so the source refuses it itself (1009,
    once the frames before are answered); never below uvicorn's default."""
    frames = [s.config.max_frame_bytes + 1 for s in sources if isinstance(s, WebSocketSource)]
    return max([SERVER_FRAME_LIMIT, *frames])


def build(config: WebSocketConfig, ctx: BuildContext) -> WebSocketSource:
    assert ctx.intake is not None
    token = ctx.settings.server.ingest_token
    return WebSocketSource(
        config, ctx.intake, token.get_secret_value() if token else None, ctx.name
    )


WEBSOCKET = ComponentType(
    "source", "websocket", WebSocketConfig, build,
    "Records from WebSocket frames, each acknowledged on the socket once durable.",
)  # fmt: skip
