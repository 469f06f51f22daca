"""HTTP ingest: ``POST /ingest/{stream}`` with a JSON object, an array, or JSON Lines.

Accepts ``Content-Encoding: gzip`` (or ``deflate``). Answers 200 ``{"accepted": N}`` only
after the records are durable in the spool; 4xx with ``{"error", "message", "line"?}`` for
input it refuses (nothing of a refused request is stored); 503 with ``Retry-After`` when
the spool is full. An ``Idempotency-Key`` header makes a retried request's records keep
their record ids, so a client retry is stored once even for records without a time.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from rtclake.errors import InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.sources.base import Source
from rtclake.web.http import (
    JSON,
    bearer_ok,
    decode_content,
    json_error,
    read_body,
    refusal,
    refusals_documented,
)


class HttpIngest(Source):
    """The ``/ingest/{stream}`` endpoint."""

    def __init__(
        self, intake: Intake, *, max_body: int, token: str | None, name: str = "http"
    ) -> None:
        self.name = self.source = name
        self.intake = intake
        self.metrics = intake.metrics
        self.max_body = max_body
        self.token = token

    @refusals_documented
    async def handle(self, request: Request) -> Response:
        """
        summary: Ingest JSON records into the lake.
        description: >
          The body is one JSON object, a JSON array of objects, or JSON Lines, optionally
          gzip-encoded. The answer comes after the records are durable on disk.
        parameters:
          - {name: stream, in: path, required: true, schema: {type: string}}
          - {name: Idempotency-Key, in: header, required: false, schema: {type: string}}
        requestBody:
          content:
            application/json: {schema: {oneOf: [{type: object}, {type: array}]}}
            application/x-ndjson: {schema: {type: string}}
        responses:
          200:
            description: >
              Durable. Body: {"accepted": N}, and "reply" when an intake-stage processor
              or a broker replied ("replies": one per record, null for none, when
              brokers answered a request of several records).
          400: {description: 'Bad input. Body: {"error", "message", "line"?}'}
        """
        if not bearer_ok(request, self.token):
            self.metrics.rejected.labels(self.source, "unauthorized").inc()
            return json_error(401, "unauthorized", "a valid bearer token is required")
        stream = request.path_params["stream"]
        try:
            table = self.intake.table_for(stream)
            body = await read_body(request, self.max_body)
            body = decode_content(body, request.headers.get("content-encoding"), self.max_body)
            records = self.intake.validate(body, table)
            idem = request.headers.get("idempotency-key")
            if idem is not None and not 0 < len(idem) <= 256:
                raise InputError("bad_idempotency_key", "Idempotency-Key must be 1-256 chars")
            taken = await self.intake.take(self.source, stream, table, records, idem=idem)
        except (InputError, SpoolUnavailable) as exc:
            return refusal(self.metrics, self.source, exc)
        if taken.reply is not None:
            answer: dict[str, object] = {"accepted": taken.records}
            if len(taken.replies) > 1:  # brokers answered several records: each its own
                answer["replies"] = [r.json_value() if r else None for r in taken.replies]
            answer["reply"] = taken.reply.json_value()
            return Response(orjson.dumps(answer, default=str), 200, media_type=JSON)
        return Response(b'{"accepted":%d}' % taken.records, 200, media_type=JSON)

    def routes(self) -> list[BaseRoute]:
        return [Route("/ingest/{stream}", self.handle, methods=["POST"])]
