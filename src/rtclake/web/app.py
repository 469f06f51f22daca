"""The Starlette application of one node: ingest, health, metrics, the SQL API, the
sources' routes and the OpenAPI docs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import structlog
import swagger_ui_bundle
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles

from rtclake import __version__
from rtclake.errors import ConfigError, InputError, QueryError, RtclakeError
from rtclake.results import JSON_OPTIONS, json_rows
from rtclake.service import Service
from rtclake.web.connections import ConnectionEndpoints
from rtclake.web.dashboard import DashboardEndpoints
from rtclake.web.entities import EntityEndpoints
from rtclake.web.http import JSON, json_error, query_allowed, query_error, read_body

_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtclake API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div><script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>
"""


log = structlog.get_logger("rtclake.web")


class NodeEndpoints:
    """The endpoints of the node itself (health, metrics, the SQL API, the API docs); the
    sources' endpoints come from the sources."""

    def __init__(self, service: Service) -> None:
        self.service = service
        token = service.settings.server.query_token
        self.query_token = token.get_secret_value() if token else None
        self.schemas = SchemaGenerator(
            {"openapi": "3.0.0", "info": {"title": "rtclake", "version": __version__}}
        )

    async def healthz(self, request: Request) -> Response:
        """
        summary: Liveness, spool and sink state.
        responses:
          200:
            description: >
              The spool takes records. Body: {"status": "ok", "writable",
              "spool_bytes", "spool_segments", "disk_free_bytes", "sinks"}; "sinks" has
              each sink's {"ok": true}, or {"ok": false, "since", "error"} since its
              start or its last write failed (its batches stay spooled, and are
              retried, or go to dead_letters once it gave up on its destination), and
              then "status" is "degraded".
          503:
            description: >
              The spool cannot write (its disk is full or failing). Body: {"status":
              "failing", "writable": false, "reason", "message", "disk_free_bytes", ...}
        """
        state = self.service.spool.health()
        sinks = self.service.delivery.health()
        if not state["writable"]:
            return JSONResponse({"status": "failing", **state, "sinks": sinks}, 503)
        status = "ok" if all(s["ok"] for s in sinks.values()) else "degraded"
        return JSONResponse({"status": status, **state, "sinks": sinks})

    async def metrics(self, request: Request) -> Response:
        """
        summary: Prometheus metrics.
        responses:
          200: {description: Prometheus text format.}
        """
        return Response(
            generate_latest(self.service.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    async def query(self, request: Request) -> Response:
        """
        summary: Run one read-only SQL SELECT over the lake's tables.
        requestBody:
          content:
            application/json:
              schema:
                type: object
                required: [sql]
                properties:
                  sql: {type: string}
                  max_rows: {type: integer}
        responses:
          200:
            description: 'Body: {columns, types, rows, row_count, truncated, elapsed_ms}'
          400: {description: 'Refused or failed. Body: {"error", "message"}'}
          401: {description: A bearer token is required.}
          413:
            description: >
              The result is larger than query.max_result_bytes (result_too_large), or the
              body than 1 MiB (too_large).
          422:
            description: >
              The query needs more memory than query.memory_limit (memory_limit) or more
              temporary disk space than query.max_temp_bytes (temp_limit).
          429:
            description: >
              query.max_concurrent queries are running and none ended within
              query.queue_timeout (busy); see Retry-After.
        """
        if not query_allowed(request, self.query_token):
            return json_error(401, "unauthorized", "a valid bearer token is required")
        try:
            body: Any = orjson.loads(await read_body(request, QUERY_BODY_BYTES))
        except InputError as exc:
            return json_error(exc.status, exc.reason, str(exc))
        except orjson.JSONDecodeError as exc:
            return json_error(400, "bad_json", f"body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            return json_error(400, "bad_request", 'send {"sql": "SELECT ..."}')
        max_rows = body.get("max_rows")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows <= 0):
            return json_error(400, "bad_request", "max_rows must be a positive integer")
        try:
            result = await self.service.query.run_async(body["sql"], max_rows=max_rows)
        except QueryError as exc:
            return query_error(exc)
        payload = {
            "columns": result.columns,
            "types": [str(t) for t in result.types],
            "rows": json_rows(result.table, result.types),
            "row_count": result.table.num_rows,
            "truncated": result.truncated,
            "elapsed_ms": round(result.elapsed * 1000, 3),
        }
        return Response(
            orjson.dumps(payload, option=JSON_OPTIONS),
            media_type=JSON,
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.schemas.get_schema(routes=request.app.routes))

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(_DOCS_PAGE)


#: The most a ``POST /api/query`` body may hold: a query's text, not data (it had been
#: read whole, whatever its size: 300 MB took the server's memory past 2 GB).
QUERY_BODY_BYTES = 1024 * 1024


class StartFailed(Exception):
    """The service did not start, for the reason logged just before (uvicorn exits 3)."""


def _quiet_start_failure(record: logging.LogRecord) -> bool:
    """Leave out uvicorn's copy of the lifespan's traceback of a :class:`StartFailed`."""
    return "StartFailed" not in record.getMessage()


#: The reason of Starlette's own refusals (no route, a method a route does not take).
_HTTP_REASONS = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals as JSON with a reason, like every other error of the API."""
    if not isinstance(exc, HTTPException):  # (registered for HTTPException only)
        raise exc
    path = request.url.path
    if exc.status_code == 404:
        message = f"nothing at {path}; /docs lists the API"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed at {path} (allowed: {allowed})"
    else:
        message = str(exc.detail)
    response = json_error(exc.status_code, _HTTP_REASONS.get(exc.status_code, "http_error"),
                          message)  # fmt: skip
    response.headers.update(exc.headers or {})
    return response


def create_app(service: Service) -> Starlette:
    """The ASGI application of one :class:`Service`; its lifespan starts and stops it."""
    node = NodeEndpoints(service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await service.start()
        except RtclakeError as exc:
            # A reason the operator acts on (NATS out of reach, a refused stream, a port
            # taken): one line, not the server's traceback of the lifespan.
            log.error("rtclake cannot start", error=str(exc) or type(exc).__name__)
            logging.getLogger("uvicorn.error").addFilter(_quiet_start_failure)
            raise StartFailed(str(exc)) from None
        try:
            yield
        finally:
            await service.stop()

    taken: dict[str, str] = {}
    # The sources' routes first: ingest is the path every request takes, and Starlette
    # tries the routes in order.
    routes: list[BaseRoute] = []
    for source in service.sources:
        for route in source.routes():
            path = getattr(route, "path", "")
            if path in taken:
                raise ConfigError(
                    f"sources {taken[path]} and {source.name} both serve {path}; keep one"
                )
            taken[path] = source.name
            routes.append(route)
    routes += ConnectionEndpoints(service).routes()
    routes += EntityEndpoints(service).routes()
    routes += DashboardEndpoints(service).routes()
    routes += [
        Route("/healthz", node.healthz, methods=["GET"]),
        Route("/metrics", node.metrics, methods=["GET"]),
        Route("/api/query", node.query, methods=["POST"]),
        Route("/openapi.json", node.openapi, methods=["GET"], include_in_schema=False),
        Route("/docs", node.docs, methods=["GET"], include_in_schema=False),
        Mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_error})  # fmt: skip
