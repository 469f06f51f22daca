"""HTTP ingest: ``POST /ingest/{stream}`` with a JSON object, an array, or JSON Lines.

Accepts ``Content-Encoding: gzip`` (or ``deflate``). Answers 200 ``{"accepted": N}`` only
after the records are durable in the spool; 4xx with ``{"error", "message", "line"?}`` for
input it refuses (nothing of a refused request is stored); 503 with ``Retry-After`` when
the spool is full. An ``Idempotency-Key`` header makes a retried request's records keep
their record ids, so a client retry is stored once even for records without a time.
"""

from __future__ import annotations

import hmac
import zlib

import orjson
from starlette.requests import Request
from starlette.responses import Response

from rtclake.errors import InputError, PayloadTooLarge, SpoolUnavailable, UnsupportedEncoding
from rtclake.intake import Intake
from rtclake.metrics import Metrics

JSON = "application/json"


def json_error(status: int, reason: str, message: str, **extra: object) -> Response:
    body = {"error": reason, "message": message, **extra}
    return Response(orjson.dumps(body), status, media_type=JSON)


def refusal(metrics: Metrics, source: str, exc: InputError | SpoolUnavailable) -> Response:
    """The answer to refused input (4xx with its reason), or to a spool that cannot take
    the records now (503 when full or failing, 507 when its disk is full; both with
    ``Retry-After``), counted by reason."""
    metrics.rejected.labels(source, exc.reason).inc()
    if isinstance(exc, SpoolUnavailable):
        response = json_error(exc.status, exc.reason, exc.message)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    return Response(orjson.dumps(exc.to_dict()), exc.status, media_type=JSON)


def bearer_ok(request: Request, token: str | None) -> bool:
    """True if no token is configured, or the request carries it as a bearer token."""
    if token is None:
        return True
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    # Bytes, not str: compare_digest refuses non-ASCII text, and a header may hold any
    # byte (Starlette decodes headers as Latin-1, so this gives back the bytes sent).
    sent = value.strip().encode("latin-1")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, token.encode("utf-8"))


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("too_large", f"body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge("too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_GZIP_MAGIC = b"\x1f\x8b"


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate), never producing more than ``limit`` bytes.

    A gzip body may hold several members (RFC 1952, 2.2: ``cat a.gz b.gz``); every one is
    read. Bytes after the last member that are not another member are refused.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedEncoding(
            "bad_encoding", f"Content-Encoding {encoding!r} is not supported (use gzip)"
        )
    view = memoryview(body)
    out: list[bytes] = []
    size = pos = member = 0
    while True:
        member += 1
        inflater = zlib.decompressobj(wbits)
        # Fed in pieces that start small, so that what zlib copies past a member's end
        # (unused_data) stays small even for a body of many small members.
        piece = 1024
        while not inflater.eof:
            if pos >= len(view):
                raise InputError("bad_gzip", f"{encoding} body is truncated")
            given = view[pos : pos + piece]
            pos += len(given)
            piece = min(piece * 2, 1 << 16)
            try:
                chunk = inflater.decompress(given, limit - size + 1)
            except zlib.error as exc:
                where = f" (member {member})" if member > 1 else ""
                raise InputError("bad_gzip", f"body is not valid {encoding}{where}: {exc}") from exc
            size += len(chunk)
            if size > limit or inflater.unconsumed_tail:
                raise PayloadTooLarge("too_large", f"decompressed body exceeds {limit} bytes")
            out.append(chunk)
        pos -= len(inflater.unused_data)
        if pos == len(view):
            return b"".join(out)
        if wbits == zlib.MAX_WBITS or view[pos : pos + 2] != _GZIP_MAGIC:
            follows = "" if wbits == zlib.MAX_WBITS else " and are not another gzip member"
            raise InputError(
                "bad_gzip",
                f"{len(view) - pos} bytes follow the end of the {encoding} data{follows}",
            )


class HttpIngest:
    """The ``/ingest/{stream}`` endpoint."""

    source = "http"

    def __init__(self, intake: Intake, *, max_body: int, token: str | None) -> None:
        self.intake = intake
        self.metrics = intake.metrics
        self.max_body = max_body
        self.token = token

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
          200: {description: 'Durable. Body: {"accepted": N}'}
          400: {description: 'Bad input. Body: {"error", "message", "line"?}'}
          401: {description: A bearer token is required.}
          413: {description: Body too large.}
          503: {description: Spool full or failing; retry after Retry-After seconds.}
          507: {description: The spool's disk is full; retry after Retry-After seconds.}
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
            accepted = await self.intake.take(self.source, stream, table, records, idem=idem)
        except (InputError, SpoolUnavailable) as exc:
            return refusal(self.metrics, self.source, exc)
        return Response(b'{"accepted":%d}' % accepted, 200, media_type=JSON)
