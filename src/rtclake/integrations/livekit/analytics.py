"""LiveKit's analytics messages (``livekit.AnalyticsEvent``, ``livekit.AnalyticsStat`` and
their batches ``AnalyticsEvents``, ``AnalyticsStats``, the classes of the
``livekit-protocol`` package), recorded into ``livekit_analytics_events`` and
``livekit_stats``.

Routes (``POST``; the ingest token when one is set; the body limit of ``/ingest``):

- ``/livekit/analytics/events``: one ``AnalyticsEvent`` or an ``AnalyticsEvents`` batch;
- ``/livekit/analytics/stats``: one ``AnalyticsStat`` or an ``AnalyticsStats`` batch.

A body is protojson (``Content-Type: application/json``: a batch is an object with an
``events`` or ``stats`` array) or binary protobuf (``application/x-protobuf``, or
``application/protobuf``): a batch, unless ``?message=single`` says it is one message
(binary protobuf does not say which). The whole body is parsed by the generated classes
before anything is stored: a body they refuse is answered 400 with the parser's reason,
and nothing of it is kept; so are an empty body, a JSON body that is not one object, and
a message with no field set (``{}``: it says nothing; a lone ROOM_CREATED is one too, as
binary protobuf cannot tell it from nothing). An event is stored as protojson
(camelCase), whole again in ``message``, one row each, with the zero enums protojson
omits put back by name (``ROOM_CREATED`` is type 0: :mod:`.defaults`); a stat becomes one
row per stream, with the stat's envelope, the stream's counters (``int64`` as integers),
its interval (``start_time``..``end_time``, ``interval_s``) and its highest video layer.
LiveKit's ``AnalyticsRecorderService`` is a gRPC/twirp service that ``livekit-protocol``
does not generate, so it is not served.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import analytics
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from rtclake.errors import InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.integrations.livekit.defaults import Path, fill_defaults, number_paths
from rtclake.integrations.livekit.tables import LIVEKIT_ANALYTICS_EVENTS
from rtclake.sources.base import Records, Source
from rtclake.tables import Table
from rtclake.web.http import (
    JSON,
    bearer_ok,
    decode_content,
    json_error,
    read_body,
    refusal,
    refusals_documented,
)

SOURCE = "livekit_analytics"
_BINARY = ("application/x-protobuf", "application/protobuf", "application/octet-stream")
_NEEDS = {"events": "its id or type", "stats": "its id or a stream"}  # what an empty one lacks


def _batch_or_single(body: bytes, batch: type[Message], single: type[Message], field: str,
                     content_type: str, single_asked: bool) -> list[Message]:  # fmt: skip
    """The messages of a body: a batch's items, or the one message; none of them empty."""
    kind = content_type.split(";")[0].strip().lower()
    name = single.DESCRIPTOR.name
    binary = kind in _BINARY
    if kind not in (*_BINARY, "application/json", ""):
        raise InputError(
            "unsupported_media_type",
            f"Content-Type {kind!r}: send application/json (protojson) or application/x-protobuf",
        )
    if binary:
        what = f"one {batch.DESCRIPTOR.name} (or one {name} with ?message=single)"
    else:
        what = f'one {name} as a JSON object, or {{"{field}": [...]}}'
    if not (body if binary else body.strip()):
        raise InputError("empty", f"body is empty: send {what}")
    try:
        if binary:
            if single_asked:
                one = single()
                one.ParseFromString(body)
                messages = [one]
            else:
                many = batch()
                many.ParseFromString(body)
                messages = list(getattr(many, field))
        else:
            text = body.decode("utf-8")
            parsed = msgspec.json.decode(body)
            if not isinstance(parsed, dict):
                raise InputError("invalid_record", f"body is {_json_kind(parsed)}, not a JSON"
                                                   f" object: send {what}")  # fmt: skip
            if field in parsed and not single_asked:
                many = batch()
                json_format.Parse(text, many)
                messages = list(getattr(many, field))
            else:
                one = single()
                json_format.Parse(text, one)
                messages = [one]
    except (DecodeError, json_format.ParseError, msgspec.DecodeError, UnicodeDecodeError,
            RecursionError) as exc:  # fmt: skip
        full_name = single.DESCRIPTOR.full_name
        raise InputError("invalid_record", f"not a {full_name} or its batch: {exc}") from exc
    for index, message in enumerate(messages):
        # every field at its default: nothing said (binary protobuf cannot tell it from a
        # message that sets only zeros, such as a lone ROOM_CREATED, which is type 0)
        if message.ByteSize() == 0:
            raise InputError("empty", f"message {index} is empty (no field set): an {name}"
                                      f" needs at least {_NEEDS[field]}")  # fmt: skip
    return messages


def _json_kind(value: Any) -> str:
    """What a JSON value that is not an object is, as a refusal names it."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _protojson(message: Message, numbers: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """``message`` as protojson with the zero enums (and the zero numbers at ``numbers``)
    that protojson omits: a ROOM_CREATED event says so (see :mod:`.defaults`)."""
    out = json_format.MessageToDict(message)
    fill_defaults(out, message.DESCRIPTOR, numbers)
    return out


def _rfc3339(ts: Any) -> str | None:
    """A google.protobuf.Timestamp as RFC 3339 (None when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return str(ts.ToJsonString())


def event_lines(events: Sequence[Message], table: Table = LIVEKIT_ANALYTICS_EVENTS) -> list[bytes]:
    """Each AnalyticsEvent as the line stored: its protojson (read by the typed columns of
    ``table``, whose numbers are 0 rather than absent), again whole as ``message``, and its
    time."""
    lines = []
    numbers = number_paths(analytics.AnalyticsEvent.DESCRIPTOR, table)
    for event in events:
        message = _protojson(event, numbers)
        line: dict[str, Any] = {**message, "message": message}
        when = _rfc3339(event.timestamp)  # type: ignore[attr-defined]
        if when is not None:
            line["time"] = when
        lines.append(msgspec.json.encode(line))
    return lines


def stat_lines(stats: Sequence[analytics.AnalyticsStat]) -> list[bytes]:
    """Each stream of each AnalyticsStat as one row of livekit_stats."""
    lines = []
    kind_name = analytics.StreamType.Name
    for stat in stats:
        envelope = {
            "time": _rfc3339(stat.time_stamp),
            "time_stamp": _rfc3339(stat.time_stamp),  # with its nanoseconds, as text
            "stat_id": stat.id or None,
            "analytics_key": stat.analytics_key or None,
            "stream_kind": kind_name(stat.kind),
            "node": stat.node or None,
            "room_id": stat.room_id or None,
            "room_name": stat.room_name or None,
            "participant_id": stat.participant_id or None,
            "track_id": stat.track_id or None,
            "mime": stat.mime or None,
            "score": stat.score,
            "min_score": stat.min_score,
            "median_score": stat.median_score,
        }
        if envelope["time"] is None:
            envelope.pop("time")  # the arrival time, then
        for index, stream in enumerate(stat.streams):
            start, end = _rfc3339(stream.start_time), _rfc3339(stream.end_time)
            interval = None
            if start is not None and end is not None:
                seconds = (
                    stream.end_time.ToNanoseconds() - stream.start_time.ToNanoseconds()
                ) / 1e9
                interval = seconds if seconds > 0 else None
            layers = [_protojson(layer) for layer in stream.video_layers]
            row = {
                **envelope,
                "stream_index": index,
                "ssrc": stream.ssrc,
                "primary_packets": stream.primary_packets,
                "primary_bytes": stream.primary_bytes,
                "retransmit_packets": stream.retransmit_packets,
                "retransmit_bytes": stream.retransmit_bytes,
                "padding_packets": stream.padding_packets,
                "padding_bytes": stream.padding_bytes,
                "packets_lost": stream.packets_lost,
                "packets_out_of_order": stream.packets_out_of_order,
                "frames": stream.frames,
                "rtt": stream.rtt,
                "jitter": stream.jitter,
                "nacks": stream.nacks,
                "plis": stream.plis,
                "firs": stream.firs,
                "video_layer": max((layer.layer for layer in stream.video_layers), default=None),
                "video_layers": layers or None,
                "start_time": start,
                "end_time": end,
                "interval_s": interval,
            }
            lines.append(msgspec.json.encode(row))
    return lines


class LiveKitAnalytics(Source):
    """The endpoints receiving LiveKit's analytics messages (see the module doc)."""

    name = "livekit_analytics"
    source = SOURCE

    def __init__(self, intake: Intake, events: Table, stats: Table, *, max_body: int,
                 token: str | None) -> None:  # fmt: skip
        self.intake = intake
        self.metrics = intake.metrics
        self.events = events
        self.stats = stats
        self.max_body = max_body
        self.token = token

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/livekit/analytics/events", self.receive_events, methods=["POST"]),
            Route("/livekit/analytics/stats", self.receive_stats, methods=["POST"]),
        ]

    @refusals_documented
    async def receive_events(self, request: Request) -> Response:
        """
        summary: Record LiveKit AnalyticsEvent messages (one, or an AnalyticsEvents batch).
        description: >
          protojson (application/json) or binary protobuf (application/x-protobuf; a
          batch unless ?message=single). One livekit_analytics_events row per event.
        responses:
          200: {description: 'Durable. Body: {"stored": N}'}
          400: {description: 'Not an AnalyticsEvent, an empty one, or no JSON object. Body:
            {"error", "message"}'}
        """
        return await self._receive(
            request, self.events, "events",
            lambda body, ctype, single: event_lines(_batch_or_single(
                body, analytics.AnalyticsEvents, analytics.AnalyticsEvent, "events", ctype,
                single), self.events),
        )  # fmt: skip

    @refusals_documented
    async def receive_stats(self, request: Request) -> Response:
        """
        summary: Record LiveKit AnalyticsStat messages (one, or an AnalyticsStats batch).
        description: >
          protojson (application/json) or binary protobuf (application/x-protobuf; a
          batch unless ?message=single). One livekit_stats row per stream of each stat.
        responses:
          200: {description: 'Durable. Body: {"stored": N}'}
          400: {description: 'Not an AnalyticsStat, an empty one, or no JSON object. Body:
            {"error", "message"}'}
        """
        return await self._receive(
            request, self.stats, "stats",
            lambda body, ctype, single: stat_lines(cast(
                list[analytics.AnalyticsStat], _batch_or_single(
                    body, analytics.AnalyticsStats, analytics.AnalyticsStat, "stats", ctype,
                    single))),
        )  # fmt: skip

    async def _receive(self, request: Request, table: Table, stream: str,
                       convert: Callable[[bytes, str, bool], list[bytes]]) -> Response:  # fmt: skip
        if not bearer_ok(request, self.token):
            self.metrics.rejected.labels(self.source, "unauthorized").inc()
            return json_error(401, "unauthorized", "a valid bearer token is required")
        single = request.query_params.get("message") == "single"
        try:
            body = await read_body(request, self.max_body)
            body = decode_content(body, request.headers.get("content-encoding"), self.max_body)
            lines = convert(body, request.headers.get("content-type", ""), single)
            check = table.checker()
            flags = []
            for index, line in enumerate(lines):
                try:
                    flags.append(check(line))
                except msgspec.MsgspecError as exc:
                    raise InputError("invalid_record", f"message {index}: {exc}") from exc
            if lines:
                extra = [i for i, f in enumerate(flags) if f] if table.sparse_extra else None
                await self.intake.take(
                    self.source, stream, table, Records(b"\n".join(lines), len(lines), extra),
                    received_us=time.time_ns() // 1000,
                )  # fmt: skip
        except (InputError, SpoolUnavailable) as exc:
            return refusal(self.metrics, self.source, exc)
        return Response(msgspec.json.encode({"stored": len(lines)}), 200, media_type=JSON)
