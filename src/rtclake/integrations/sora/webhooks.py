"""Sora's webhooks and statistics push, recorded into the lake.

Routes (all ``POST``, JSON body, ``Content-Encoding: gzip``/``deflate`` allowed):

================================  ============================================  ===========
route                             what Sora sends there                         table
================================  ============================================  ===========
``/sora/webhooks/session``        session webhook (``session.created`` ...)     sessions
``/sora/webhooks/event``          event webhook (``connection.*``,              sora_events
                                  ``recording.*``, ...)
``/sora/webhooks/auth``           a copy of an auth webhook (see below)         sora_events
``/sora/webhooks/stats``          statistics webhook, header                    rtc_stats
                                  ``sora-stats-webhook-type: connection.rtc``
``/sora/stats-exporter``          legacy statistics exporter, header            rtc_stats
                                  ``x-sora-stats-exporter-type:
                                  connection.user-agent``
================================  ============================================  ===========

The rules are those of ``/ingest``: the body is refused above ``server.max_body_bytes``
(also after decompression); when ``server.ingest_token`` is set every route requires
``Authorization: Bearer <token>``; refused input gets a 4xx JSON ``{"error", "message"}``
and nothing of it is stored; a 2xx is sent only after the records are durable in the
spool; a full spool answers 503 (507 when its disk is full) with ``Retry-After``.

**Session, event and auth webhooks** are stored the way Sora logs them
(``session_webhook.jsonl`` and friends: ``{id, timestamp, req: {...}}``), so the tables
read ``req.*`` whichever way a webhook arrived: the bare webhook body becomes
``{"timestamp": <the body's timestamp>, "req": <body>}``. The wrapper takes the body's own
``timestamp`` (not the arrival time) and the spool entry takes the body's ``id`` as its
idempotency key, so a webhook delivered twice gets the same record id and is stored once.
(Only a body with neither ``id`` nor ``timestamp`` is wrapped with its arrival time, and
then nothing tells a retry from a new webhook.) A body that already has that log shape (a
``req`` object at the top, e.g. ``{"req": ..., "res": ...}`` forwarded by an auth server
with its answer) is stored as it is. Session and event webhooks are answered 200 ``{}``:
an empty answer changes nothing in Sora.

**Auth webhooks**: rtclake records, it does not decide who may connect. Its answer is 200
``{"allowed": false, "reason": ...}``, so a Sora whose ``auth_webhook_url`` points here by
mistake refuses connections with a clear reason instead of letting everyone in. Let the
real auth server forward a copy of each request (ideally with its answer as ``res``), or
import ``auth_webhook.jsonl`` instead.

**Statistics webhook and legacy exporter**: one request holds a whole getStats report: an
envelope (``connection_id``, ``channel_id``, ``session_id``, ``client_id``, ``role``,
``id``, ``timestamp``, ...) and ``stats: [RTCStats, ...]``. Each stat becomes one rtc_stats
line of exactly the shape of Sora's ``rtc_stats.jsonl``: the envelope, ``rtc_data`` (the
stat), ``rtc_id``, ``rtc_timestamp``, ``rtc_type`` (its ``id``, ``timestamp``, ``type``,
copied as sent), so the same report read from the log file and received here has the same
record ids. The whole report is one spool entry (one durable write per request); a stat
that is not an object with a string ``id`` and ``type`` and a numeric ``timestamp``, or
whose values have the wrong types, refuses the request with 400 naming its ``index``. The
statistics webhook is answered 200 ``{}``, the exporter 204 as Sora expects.

**HTTP/2**: Sora's legacy statistics exporter speaks only HTTP/2 (h2c with prior knowledge
for an ``http://`` collector URL, h2 over TLS for ``https://``). rtclake's server, uvicorn,
speaks HTTP/1.1 only and drops an h2c connection ("Invalid HTTP request received"), so the
exporter cannot reach ``rtclake run`` directly: put a proxy that accepts HTTP/2 and
forwards HTTP/1.1 in front of this route (nginx ``listen 5890 http2;`` + ``proxy_pass``,
envoy, h2o), which can also add the bearer token. The endpoint itself is protocol-neutral:
served by Hypercorn (which speaks h2c) it answers an h2c request 204. Sora's webhooks
(session, event, auth, stats) are HTTP/1.1 and need no proxy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from rtclake.errors import InputError, PayloadTooLarge, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.sources.base import Records, Source, parse_object
from rtclake.tables import Table, TableRegistry
from rtclake.web.http import (
    JSON,
    bearer_ok,
    decode_content,
    json_error,
    read_body,
    refusal,
    refusals_documented,
)

SOURCE = "sora_webhook"

STATS_WEBHOOK_HEADER = "sora-stats-webhook-type"
STATS_WEBHOOK_TYPE = "connection.rtc"
STATS_EXPORTER_HEADER = "x-sora-stats-exporter-type"
STATS_EXPORTER_TYPE = "connection.user-agent"

# An exploded report repeats its envelope on every stat's line; a body made of a huge
# envelope and many tiny stats would grow without bound, so the lines may be at most this
# many times the body limit.
EXPANSION = 8

# Keys each exploded line sets from its stat; an envelope key of the same name is dropped
# so that no line holds a key twice.
_STAT_KEYS = ("rtc_data", "rtc_id", "rtc_timestamp", "rtc_type")

_AUTH_ANSWER = orjson.dumps(
    {
        "allowed": False,
        "reason": "rtclake records auth webhooks and does not decide them: point Sora's"
        " auth_webhook_url at your auth server and forward a copy to rtclake",
    }
)

_decode_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
_decode_str = msgspec.json.Decoder(str).decode


class _StatHead(msgspec.Struct):
    """What every RTCStats object must carry; the values stay as sent (raw JSON)."""

    id: msgspec.Raw
    type: msgspec.Raw
    timestamp: msgspec.Raw


_decode_stat = msgspec.json.Decoder(_StatHead).decode


class StatError(InputError):
    """One stat of a report is unusable; ``index`` is its position in ``stats``."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__("invalid_stat", f"stats[{index}]: {message}")
        self.index = index

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "index": self.index}


class Parsed(NamedTuple):
    """A request turned into spool lines, and the idempotency key of its entry."""

    records: Records
    idem: str | None = None


def _compact(item: bytes) -> bytes:
    # A spooled record is one line; pretty-printed input is compacted.
    return msgspec.json.format(item, indent=-1) if b"\n" in item or b"\r" in item else item


def _first(raw: msgspec.Raw) -> bytes:
    """The first byte of a raw JSON value, which tells its type."""
    return memoryview(raw)[:1].tobytes()


def _string(raw: msgspec.Raw | None) -> str | None:
    """The value of a raw JSON string, or None if ``raw`` is absent or not a string."""
    if raw is None or _first(raw) != b'"':
        return None
    try:
        return _decode_str(raw)
    except msgspec.DecodeError:  # pragma: no cover - msgspec checked it already
        return None


def _idem(value: str | None) -> str | None:
    # The spool accepts 1-256 characters, as for the Idempotency-Key header of /ingest.
    return value if value is not None and 0 < len(value) <= 256 else None


def _check_types(table: Table, line: bytes, what: str) -> None:
    """Refuse ``line`` if a key has a type its column does not take. Its identity is not
    checked: a report's envelope has none of the stats' (each stat's line is checked
    whole)."""
    try:
        table.validator().decode(line)
    except RecursionError as exc:
        raise InputError("too_deep", f"{what}: JSON nested too deeply") from exc
    except msgspec.MsgspecError as exc:
        raise InputError("invalid_record", f"{what}: {exc}") from exc


def webhook_line(body: bytes, table: Table) -> Parsed:
    """A session, event or auth webhook body as one line of the shape Sora logs it.

    The record's identity must not depend on when it arrived: the wrapper's ``timestamp``
    is the body's (a body without one is timed at its arrival by the converter), and the
    body's ``id`` is the entry's idempotency key.
    """
    fields = parse_object(body)
    item = _compact(body.strip())
    req = fields.get("req")
    if req is not None and _first(req) == b"{":
        # Already log-shaped ({id?, timestamp, req, res?}): stored as sent.
        line = item
        idem = _idem(_string(fields.get("id")) or _string(parse_object(bytes(req)).get("id")))
        bare = False
    else:
        stamp = fields.get("timestamp")
        # without a timestamp of its own the record is timed at its arrival (received_at)
        # by the converter; its time stays out of the line, so a retry's line is the same
        when = b'"timestamp":' + bytes(stamp) + b"," if stamp is not None else b""
        line = b"{" + when + b'"req":' + item + b"}"
        idem = _idem(_string(fields.get("id")))
        bare = True
    try:
        has_extra = table.checker()(line)
    except RecursionError as exc:
        raise InputError("too_deep", "JSON nested too deeply") from exc
    except msgspec.MsgspecError as exc:
        text = str(exc)
        if bare:  # name the key as the sender wrote it, not inside our wrapper
            text = text.replace("`$.req.", "`$.").replace("`$.req`", "`$`")
        raise InputError("invalid_record", text) from exc
    extra = ([0] if has_extra else []) if table.sparse_extra else None
    return Parsed(Records(line, 1, extra), idem)


def stats_lines(body: bytes, table: Table, limit: int) -> Parsed:
    """A whole getStats report as rtc_stats lines, one per stat, as ``rtc_stats.jsonl``
    has them. Nothing is returned unless every stat is usable."""
    fields = parse_object(body)
    raw_stats = fields.pop("stats", None)
    if raw_stats is None:
        raise InputError("missing_field", 'the report has no "stats" array')
    try:
        stats = _decode_list(raw_stats)
    except RecursionError as exc:
        raise InputError("too_deep", "stats: JSON nested too deeply") from exc
    except msgspec.MsgspecError as exc:
        raise InputError("invalid_record", '"stats" must be an array of objects') from exc
    if _string(fields.get("connection_id")) is None:
        # rtc_stats rows are identified by connection, stat id and time: without the
        # connection, reports of different connections would replace each other.
        raise InputError("missing_field", 'the report needs a string "connection_id"')
    for key in _STAT_KEYS:
        fields.pop(key, None)
    envelope = _compact(msgspec.json.encode(fields))
    _check_types(table, envelope, "report envelope")
    head = envelope[:-1] + b","  # the envelope has at least connection_id
    check = table.checker()
    lines: list[bytes] = []
    flags: list[bool] = []
    size = 0
    for index, raw in enumerate(stats):
        stat = _compact(bytes(raw))
        try:
            fixed = _decode_stat(stat)
        except RecursionError as exc:
            raise StatError(index, "JSON nested too deeply") from exc
        except msgspec.ValidationError as exc:
            raise StatError(index, str(exc)) from exc
        if _string(fixed.id) is None or _string(fixed.type) is None:
            raise StatError(index, '"id" and "type" must be strings')
        timestamp = bytes(fixed.timestamp)
        if not timestamp or timestamp[:1] not in b"-0123456789":
            raise StatError(index, '"timestamp" must be a number (milliseconds since the epoch)')
        line = b"".join(
            (
                head,
                b'"rtc_data":',
                stat,
                b',"rtc_id":',
                bytes(fixed.id),
                b',"rtc_timestamp":',
                timestamp,
                b',"rtc_type":',
                bytes(fixed.type),
                b"}",
            )
        )
        size += len(line) + 1
        if size > limit * EXPANSION:
            raise PayloadTooLarge(
                "too_large",
                f"the report's {len(stats)} stats would need more than {limit * EXPANSION}"
                " bytes of lines",
            )
        try:
            flags.append(check(line))
        except RecursionError as exc:
            raise StatError(index, "JSON nested too deeply") from exc
        except msgspec.MsgspecError as exc:
            # name the key as the sender wrote it: rtc_data.X and rtc_timestamp are the
            # stat's X and timestamp
            text = (
                str(exc)
                .replace("`$.rtc_data", f"`$.stats[{index}]")
                .replace("`$.rtc_timestamp`", f"`$.stats[{index}].timestamp`")
            )
            raise StatError(index, text) from exc
        lines.append(line)
    extra = [i for i, flag in enumerate(flags) if flag] if table.sparse_extra else None
    # rtc_stats has an identity (connection, stat id, stat time): a repeated report gets
    # the same record ids without an idempotency key.
    return Parsed(Records(b"\n".join(lines), len(lines), extra))


class SoraWebhooks(Source):
    """The endpoints receiving Sora's webhooks and statistics push (see the module doc)."""

    name = "sora_webhooks"
    source = SOURCE

    def __init__(
        self,
        intake: Intake,
        tables: TableRegistry,
        *,
        max_body: int,
        token: str | None,
    ) -> None:
        self.intake = intake
        self.metrics = intake.metrics
        self.max_body = max_body
        self.token = token
        self.sessions = tables["sessions"]
        self.events = tables["sora_events"]
        self.rtc_stats = tables["rtc_stats"]

    def routes(self) -> list[BaseRoute]:
        """The Starlette routes of every endpoint."""
        return [
            Route("/sora/webhooks/session", self.session, methods=["POST"]),
            Route("/sora/webhooks/event", self.event, methods=["POST"]),
            Route("/sora/webhooks/auth", self.auth, methods=["POST"]),
            Route("/sora/webhooks/stats", self.stats_webhook, methods=["POST"]),
            Route("/sora/stats-exporter", self.stats_exporter, methods=["POST"]),
        ]

    @refusals_documented
    async def session(self, request: Request) -> Response:
        """
        summary: Record a Sora session webhook (session.created, .updated, .destroyed).
        description: >
          The webhook body is stored in the sessions table the way Sora logs it in
          session_webhook.jsonl ({timestamp, req}). Its id makes a retry a no-op.
        requestBody:
          content:
            application/json: {schema: {type: object}}
        responses:
          200: {description: 'Durable. Body: {}'}
          400: {description: 'Bad input. Body: {"error", "message"}'}
        """
        return await self._receive(
            request,
            self.sessions,
            "session_webhook",
            lambda body: webhook_line(body, self.sessions),
            lambda: Response(b"{}", 200, media_type=JSON),
        )

    @refusals_documented
    async def event(self, request: Request) -> Response:
        """
        summary: Record a Sora event webhook (connection.*, recording.*, ...).
        description: >
          The webhook body is stored in the sora_events table the way Sora logs it in
          event_webhook.jsonl ({timestamp, req}). Its id makes a retry a no-op.
        requestBody:
          content:
            application/json: {schema: {type: object}}
        responses:
          200: {description: 'Durable. Body: {}'}
          400: {description: 'Bad input. Body: {"error", "message"}'}
        """
        return await self._receive(
            request,
            self.events,
            "event_webhook",
            lambda body: webhook_line(body, self.events),
            lambda: Response(b"{}", 200, media_type=JSON),
        )

    @refusals_documented
    async def auth(self, request: Request) -> Response:
        """
        summary: Record a copy of a Sora auth webhook; never grants a connection.
        description: >
          Stored in the sora_events table like auth_webhook.jsonl ({timestamp, req}, or a
          forwarded {req, res} as sent). rtclake is not an auth server: the answer is
          {"allowed": false, "reason"}, so do not use this URL as Sora's auth_webhook_url.
        requestBody:
          content:
            application/json: {schema: {type: object}}
        responses:
          200: {description: 'Durable. Body: {"allowed": false, "reason"}'}
          400: {description: 'Bad input. Body: {"error", "message"}'}
        """
        return await self._receive(
            request,
            self.events,
            "auth_webhook",
            lambda body: webhook_line(body, self.events),
            lambda: Response(_AUTH_ANSWER, 200, media_type=JSON),
        )

    @refusals_documented
    async def stats_webhook(self, request: Request) -> Response:
        """
        summary: Record a Sora statistics webhook (a whole getStats report).
        description: >
          Requires the header sora-stats-webhook-type connection.rtc. Each element of
          stats becomes one rtc_stats row, as a line of rtc_stats.jsonl would.
        parameters:
          - {name: sora-stats-webhook-type, in: header, required: true,
             schema: {type: string, enum: [connection.rtc]}}
        requestBody:
          content:
            application/json: {schema: {type: object, required: [connection_id, stats]}}
        responses:
          200: {description: 'Durable. Body: {}'}
          400: {description: 'Bad input. Body: {"error", "message", "index"?}'}
        """
        return await self._receive(
            request,
            self.rtc_stats,
            "stats_webhook",
            lambda body: stats_lines(body, self.rtc_stats, self.max_body),
            lambda: Response(b"{}", 200, media_type=JSON),
            expect=(STATS_WEBHOOK_HEADER, STATS_WEBHOOK_TYPE),
        )

    @refusals_documented
    async def stats_exporter(self, request: Request) -> Response:
        """
        summary: Record a report of Sora's legacy statistics exporter.
        description: >
          Requires the header x-sora-stats-exporter-type connection.user-agent. Each
          element of stats becomes one rtc_stats row. Sora's exporter speaks HTTP/2 only;
          rtclake's server speaks HTTP/1.1, so an HTTP/2 proxy must sit in between.
        parameters:
          - {name: x-sora-stats-exporter-type, in: header, required: true,
             schema: {type: string, enum: [connection.user-agent]}}
        requestBody:
          content:
            application/json: {schema: {type: object, required: [connection_id, stats]}}
        responses:
          204: {description: Durable.}
          400: {description: 'Bad input. Body: {"error", "message", "index"?}'}
        """
        return await self._receive(
            request,
            self.rtc_stats,
            "stats_exporter",
            lambda body: stats_lines(body, self.rtc_stats, self.max_body),
            lambda: Response(status_code=204),
            expect=(STATS_EXPORTER_HEADER, STATS_EXPORTER_TYPE),
        )

    def _reject(self, status: int, reason: str, message: str) -> Response:
        self.metrics.rejected.labels(self.source, reason).inc()
        return json_error(status, reason, message)

    async def _receive(
        self,
        request: Request,
        table: Table,
        stream: str,
        parse: Callable[[bytes], Parsed],
        answer: Callable[[], Response],
        *,
        expect: tuple[str, str] | None = None,
    ) -> Response:
        """Check, parse, make durable, then answer; one spool entry per request."""
        if not bearer_ok(request, self.token):
            return self._reject(401, "unauthorized", "a valid bearer token is required")
        if expect is not None:
            name, value = expect
            given = request.headers.get(name)
            if given is None:
                return self._reject(
                    400, "missing_stats_type", f"header {name}: {value} is required"
                )
            if given.strip() != value:
                return self._reject(
                    400,
                    "unknown_stats_type",
                    f"header {name}: {given[:64]!r} is not supported (only {value!r})",
                )
        try:
            body = await read_body(request, self.max_body)
            body = decode_content(body, request.headers.get("content-encoding"), self.max_body)
            received_us = time.time_ns() // 1000
            parsed = parse(body)
            await self.intake.take(
                self.source, stream, table, parsed.records, idem=parsed.idem,
                received_us=received_us,
            )  # fmt: skip
        except (InputError, SpoolUnavailable) as exc:
            return refusal(self.metrics, self.source, exc)
        return answer()
