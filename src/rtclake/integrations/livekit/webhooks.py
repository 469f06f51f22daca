"""LiveKit's webhooks, verified, then recorded into ``livekit_events``.

``POST /livekit/webhook`` (the path is configurable) takes what LiveKit's webhook
notifier sends: ``Content-Type: application/webhook+json``, a protojson ``WebhookEvent``
body, and an ``Authorization`` header holding a JWT signed with an API key's secret
(:mod:`.keys`). The signature, the token's time window (``nbf``/``exp``, with
``clock_skew`` seconds of tolerance) and the body's SHA-256 are checked on the raw bytes
before anything is parsed; a failure is answered 401 with ``{"error", "message"}`` and
nothing is stored. A verified event is stored once per ``id`` (LiveKit redelivers on
failure): its ``createdAt`` becomes the record's time, and the key that signed it is kept
as ``api_key``; the zero values LiveKit's protojson omits are put back where the lake
reads them (an audio track's type, :mod:`.defaults`), the body kept as sent otherwise.
It is answered 200 ``{}`` once durable in the spool.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import msgspec
from google.protobuf import json_format
from livekit.protocol import webhook
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from rtclake.errors import InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.integrations.livekit.defaults import fill_defaults, number_paths
from rtclake.integrations.livekit.keys import SignatureError, verify
from rtclake.sources.base import Records, Source, parse_object
from rtclake.tables import Table
from rtclake.web.http import JSON, json_error, read_body, refusal, refusals_documented

SOURCE = "livekit_webhook"
_decode_str = msgspec.json.Decoder(str).decode
_decode_int = msgspec.json.Decoder(int).decode
_OURS = ("time", "_api_key")  # keys the stored line sets
_WEBHOOK = webhook.WebhookEvent.DESCRIPTOR
_OBJECTS = frozenset(name for field in _WEBHOOK.fields if field.message_type is not None
                     for name in (field.json_name, field.name))  # fmt: skip


def _text(raw: msgspec.Raw | None) -> str | None:
    if raw is None:
        return None
    try:
        return _decode_str(raw)
    except msgspec.DecodeError:
        return None


def _seconds(raw: msgspec.Raw | None) -> int | None:
    """protojson's int64 (a string of digits, or a number) as an integer."""
    if raw is None:
        return None
    text = _text(raw)
    try:
        value = int(text) if text is not None else _decode_int(raw)
    except (ValueError, msgspec.DecodeError):
        return None
    return value if 0 < value < 2**40 else None


def _with_defaults(body: bytes, fields: dict[str, msgspec.Raw], table: Table) -> dict[str, object]:
    """``fields`` with the zero values LiveKit's protojson omits (see :mod:`.defaults`):
    an audio track's type is AUDIO, a room of no one has 0 participants. Only the
    top-level objects that gain a value are decoded and merged; the rest stay as sent.
    A body that is not a WebhookEvent is kept as it is."""
    try:
        json_format.Parse(body, webhook.WebhookEvent(), ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError):
        return dict(fields)
    values: dict[str, object] = {
        key: msgspec.json.decode(raw) if key in _OBJECTS else raw for key, raw in fields.items()
    }
    changed = fill_defaults(values, _WEBHOOK, number_paths(_WEBHOOK, table), lists=False)
    return {**fields, **{key: values[key] for key in changed}}


def event_line(body: bytes, table: Table, api_key: str) -> tuple[Records, str]:
    """A verified webhook body as the line stored, and its event id."""
    fields = parse_object(body)
    event, event_id = _text(fields.get("event")), _text(fields.get("id"))
    if not event:
        raise InputError("missing_field", 'the webhook has no "event" string')
    if not event_id:
        raise InputError("missing_field", 'the webhook has no "id" string')
    line: dict[str, object] = {}
    created = _seconds(fields.get("createdAt"))
    if created is not None:
        line["time"] = created
    elif fields.get("createdAt") is not None:  # never timed at its arrival instead
        shown = bytes(fields["createdAt"]).decode(errors="replace")[:40]
        raise InputError(
            "invalid_record",
            f"createdAt {shown} is not a time: give seconds since the epoch (protojson's"
            ' int64, "1718093120")',
        )
    line["_api_key"] = api_key
    values = _with_defaults(body, fields, table)
    line.update((k, v) for k, v in values.items() if k not in _OURS)
    # the raw values keep the sender's layout: one line for the spool
    encoded = msgspec.json.format(msgspec.json.encode(line), indent=-1)
    try:
        has_extra = table.checker()(encoded)
    except RecursionError as exc:
        raise InputError("too_deep", "JSON nested too deeply") from exc
    except msgspec.MsgspecError as exc:
        raise InputError("invalid_record", str(exc)) from exc
    extra = ([0] if has_extra else []) if table.sparse_extra else None
    return Records(encoded, 1, extra), event_id


class LiveKitWebhook(Source):
    """The endpoint receiving LiveKit's webhooks (see the module doc)."""

    name = "livekit_webhook"
    source = SOURCE

    def __init__(
        self,
        intake: Intake,
        table: Table,
        *,
        keys: Mapping[str, str],
        clock_skew: float,
        max_body: int,
        path: str,
    ) -> None:
        self.intake = intake
        self.metrics = intake.metrics
        self.table = table
        self.keys = dict(keys)
        self.clock_skew = clock_skew
        self.max_body = max_body
        self.path = path

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.receive, methods=["POST"])]

    @refusals_documented
    async def receive(self, request: Request) -> Response:
        """
        summary: Record a LiveKit webhook, verified before it is parsed.
        description: >
          The Authorization header must hold LiveKit's JWT (HS256 with the secret of the
          API key in iss, within nbf/exp, its sha256 claim the base64 SHA-256 of the raw
          body). Stored in livekit_events, once per event id.
        requestBody:
          content:
            application/webhook+json: {schema: {type: object, required: [event, id]}}
        responses:
          200: {description: 'Durable. Body: {}'}
          401: {description: 'Not signed by a configured key, expired, or the body was
            changed. Body: {"error", "message"}'}
        """
        try:
            body = await read_body(request, self.max_body)
            try:
                api_key = verify(request.headers.get("authorization"), body, self.keys,
                                 self.clock_skew)  # fmt: skip
            except SignatureError as exc:
                self.metrics.rejected.labels(self.source, exc.reason).inc()
                return json_error(401, exc.reason, exc.message)
            received_us = time.time_ns() // 1000
            records, event_id = event_line(body, self.table, api_key)
            await self.intake.take(
                self.source, "webhook", self.table, records, idem=event_id[:256],
                received_us=received_us,
            )  # fmt: skip
        except (InputError, SpoolUnavailable) as exc:
            return refusal(self.metrics, self.source, exc)
        return Response(b"{}", 200, media_type=JSON)
