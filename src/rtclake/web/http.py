"""What the HTTP endpoints share: JSON answers and refusals, bearer tokens, reading and
decoding bodies within limits, and the OpenAPI text of the refusals, written once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import zlib
from collections.abc import Callable
from typing import TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from rtclake.errors import (
    InputError,
    PayloadTooLarge,
    QueryBusy,
    QueryError,
    RequestTimeout,
    SpoolUnavailable,
    UnsupportedEncoding,
)
from rtclake.metrics import Metrics

F = TypeVar("F", bound=Callable[..., object])

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


SESSION_COOKIE = "rtclake_session"
"""The dashboard's login cookie (``POST /api/dashboard/login``)."""


def session_value(token: str, expires: int) -> str:
    """What the login cookie holds for ``token`` until ``expires`` (seconds since the
    epoch): that time and an HMAC of it keyed by the token, never the token itself. The
    server checks the time (a copied cookie ends with it, not only the browser's), and a
    new token ends every session."""
    mac = hmac.new(token.encode("utf-8"), f"rtclake dashboard session {expires}".encode(),
                   hashlib.sha256)  # fmt: skip
    return f"{expires}.{mac.hexdigest()}"


def session_ok(cookie: str, token: str, now: float) -> bool:
    """Whether ``cookie`` is a login of ``token`` that has not expired at ``now``."""
    expires, _, _ = cookie.partition(".")
    if not expires.isdigit() or int(expires) <= now:
        return False
    wanted = session_value(token, int(expires))
    return hmac.compare_digest(cookie.encode("utf-8", "replace"), wanted.encode("ascii"))


def query_allowed(request: Request, token: str | None) -> bool:
    """True if no token is configured, or the request carries it as a bearer token or
    holds an unexpired dashboard login cookie for it."""
    if bearer_ok(request, token):
        return True
    cookie = request.cookies.get(SESSION_COOKIE)
    return token is not None and cookie is not None and session_ok(cookie, token, time.time())


#: Seconds a request's body may take to arrive (then 408 ``request_timeout``): a client
#: trickling its body a byte at a time had held its connection as long as it liked.
BODY_TIMEOUT = 60.0


async def read_body(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading all of it, or a
    body that takes longer than ``timeout`` seconds to arrive."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(request, limit)
    except TimeoutError:
        raise RequestTimeout(
            "request_timeout", f"the body did not arrive within {timeout:g} s"
        ) from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("too_large", f"body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer: counted, not logged with a traceback each
        raise InputError("client_disconnected", "the client left before its body ended") from None
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


# The refusals every endpoint that takes records shares, as OpenAPI response lines.
_REFUSALS = (
    "401: {description: A bearer token is required.}",
    "413: {description: 'Body too large (server.max_body_bytes, also after decompression),"
    " or larger than the whole spool.'}",
    "503: {description: Spool full or failing; retry after Retry-After seconds.}",
    "507: {description: The spool's disk is full; retry after Retry-After seconds.}",
)


def refusals_documented(handler: F) -> F:
    """Append the shared refusals to the ``responses:`` that end ``handler``'s docstring
    (its OpenAPI description), at the indentation of its entries (the last line may
    continue one), leaving out the codes it describes itself."""
    lines = (handler.__doc__ or "").rstrip().splitlines()
    at = max(i for i, line in enumerate(lines) if line.strip() == "responses:")
    entries = [line for line in lines[at + 1 :] if line.strip()]
    indent = entries[0][: len(entries[0]) - len(entries[0].lstrip())]
    own = {
        line.strip().split(":")[0]
        for line in entries
        if len(line) > len(indent) and not line[len(indent)].isspace()
    }
    shared = [indent + line for line in _REFUSALS if line.split(":")[0] not in own]
    handler.__doc__ = "\n".join([*lines, *shared]) + "\n"
    return handler


def query_error(exc: QueryError) -> Response:
    """The JSON answer to a query the engine refused or could not run (429s say when to
    come back)."""
    response = json_error(exc.status, exc.reason, exc.message)
    if isinstance(exc, QueryBusy):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
