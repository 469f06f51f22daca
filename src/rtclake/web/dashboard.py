"""The built-in web dashboard: its pages, its JSON endpoints and its static files.

Pages (``/``, ``/sessions/{id}``, ``/connections/{id}``, ``/tables``, ``/tables/{name}``,
``/sql``, ``/login``) are one HTML shell; the browser script (``static/js/``) reads the
page and its state from the URL (``range`` or ``from``/``to``, ``refresh``), fetches the
JSON endpoints under ``/api/dashboard/`` and draws the charts with Plotly, whose script
the ``plotly`` package ships and this module serves (``/static/vendor/plotly.min.js``):
a page makes no request outside the server.

The questions are the SQL of :mod:`rtclake.lake.dashboard`, run on the query engine's
threads (``QueryEngine.run_many``: one DuckDB instance per answer, kept for the next
answer while the lake's snapshot is unchanged). The JSON endpoints are
behind ``server.query_token`` as ``/api/query`` is: a bearer token, or the cookie the
login form sets (an HMAC of the token, ``HttpOnly``, ``SameSite=Strict``). The shell and
the static files hold no data and need no token.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import hmac
import importlib.metadata
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from rtclake import __version__
from rtclake.errors import InputError, QueryError
from rtclake.lake import dashboard as q
from rtclake.lake.query import Query, QueryEngine, QueryResult
from rtclake.results import JSON_OPTIONS, json_rows
from rtclake.service import Service
from rtclake.web.http import (
    JSON,
    SESSION_COOKIE,
    json_error,
    query_allowed,
    query_error,
    read_body,
    session_value,
)

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
# Plotly draws SVG and adds <style> elements; everything else comes from this server.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self';"
    " object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_COOKIE_DAYS = 30
_ENTITY_MARGIN = timedelta(seconds=5)  # around a whole session or connection


def plotly_js() -> tuple[Path, str] | None:
    """Where the ``plotly`` package keeps plotly.js (its package data), and its version."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return (path, importlib.metadata.version("plotly")) if path.is_file() else None


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


def _asset(path: Path, media_type: str) -> _Asset:
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return _Asset(body, gzip.compress(body, 6, mtime=0), etag, media_type)


def _page(version: str, plotly_version: str, auth: bool) -> str:
    v = quote(version)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rtclake</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/dashboard.css?v={v}">
<script src="/static/vendor/plotly.min.js?v={quote(plotly_version)}" defer></script>
<script type="module" src="/static/js/main.js?v={v}"></script>
</head>
<body data-auth="{"token" if auth else "none"}" data-version="{v}">
<header class="top">
  <a class="brand" href="/">rtclake</a>
  <nav class="nav" id="nav"></nav>
  <div class="controls" id="controls"></div>
</header>
<main id="page"><p class="loading">Loading…</p></main>
<noscript><p class="empty">The dashboard needs JavaScript. The same data is at
<a href="/docs">/docs</a> (the SQL API).</p></noscript>
</body></html>
"""


class DashboardEndpoints:
    """The dashboard of one :class:`Service`: pages, JSON endpoints, static files."""

    def __init__(self, service: Service) -> None:
        self.service = service
        token = service.settings.server.query_token
        self.token = token.get_secret_value() if token else None
        found = plotly_js()
        self.plotly = _asset(found[0], _TYPES[".js"]) if found else None
        version = f"{__version__}-{_static_stamp()}"
        self.page_html = _page(version, found[1] if found else "missing", self.token is not None)
        self._static: dict[Path, tuple[int, _Asset]] = {}
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def routes(self) -> list[BaseRoute]:
        page = self.page
        return [
            Route("/", page, methods=["GET"], include_in_schema=False),
            Route("/sessions/{session_id}", page, methods=["GET"], include_in_schema=False),
            Route("/connections/{connection_id}", page, methods=["GET"], include_in_schema=False),
            Route("/tables", page, methods=["GET"], include_in_schema=False),
            Route("/tables/{name}", page, methods=["GET"], include_in_schema=False),
            Route("/sql", page, methods=["GET"], include_in_schema=False),
            Route("/login", page, methods=["GET"], include_in_schema=False),
            Route("/api/dashboard/login", self.login, methods=["POST"]),
            Route("/api/dashboard/logout", self.logout, methods=["POST"]),
            Route("/api/dashboard/overview", self.overview, methods=["GET"]),
            Route("/api/dashboard/sessions", self.sessions, methods=["GET"]),
            Route("/api/dashboard/sessions/{session_id}", self.session, methods=["GET"]),
            Route("/api/dashboard/connections/{connection_id}", self.connection, methods=["GET"]),
            Route("/api/dashboard/tables", self.tables, methods=["GET"]),
            Route("/api/dashboard/tables/{name}", self.table, methods=["GET"]),
            Route("/api/dashboard/throughput", self.throughput, methods=["GET"]),
            Route("/static/vendor/plotly.min.js", self.vendor, methods=["GET"]),
            Route("/static/{path:path}", self.static, methods=["GET"], include_in_schema=False),
        ]

    # -- pages, login and files ---------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(
            self.page_html,
            headers={
                "content-security-policy": _CSP,
                "x-content-type-options": "nosniff",
                "cache-control": "no-cache",
                "referrer-policy": "same-origin",
            },
        )

    async def login(self, request: Request) -> Response:
        """
        summary: Log the dashboard in (a form with `token` and `next`).
        description: >
          Sets the login cookie when `token` is server.query_token and redirects to
          `next` (a path of this server); a wrong token redirects back to /login.
        responses:
          303: {description: 'Redirect to next (logged in), or to /login?error=1.'}
        """
        try:
            form = parse_qs((await read_body(request, 16_384)).decode("utf-8", "replace"))
        except InputError as exc:
            return json_error(exc.status, exc.reason, exc.message)
        target = _local_path(form.get("next", ["/"])[0])
        if self.token is None:
            return RedirectResponse(target, 303)
        given = form.get("token", [""])[0].strip()
        expires = int(time.time()) + _COOKIE_DAYS * 86_400
        if not given or not hmac.compare_digest(
            session_value(given, expires), session_value(self.token, expires)
        ):
            log.info("dashboard login refused", client=request.client and request.client.host)
            return RedirectResponse("/login?" + urlencode({"error": "1", "next": target}), 303)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(self.token, expires),
            max_age=_COOKIE_DAYS * 86_400,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        """
        summary: Log the dashboard out (removes the login cookie).
        responses:
          303: {description: Redirect to /login.}
        """
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def vendor(self, request: Request) -> Response:
        if self.plotly is None:
            return json_error(
                404, "no_plotly", "the plotly package is not installed (pip install plotly)"
            )
        # The page asks for it with Plotly's version in the query: it never changes.
        return _send(request, self.plotly, "public, max-age=31536000, immutable")

    async def static(self, request: Request) -> Response:
        path = (STATIC / request.path_params["path"]).resolve()
        media_type = _TYPES.get(path.suffix)
        if media_type is None or not path.is_relative_to(STATIC.resolve()) or not path.is_file():
            return json_error(404, "not_found", "no such file")
        mtime = path.stat().st_mtime_ns
        cached = self._static.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, _asset(path, media_type))
            self._static[path] = cached
        return _send(request, cached[1], "no-cache")

    # -- data -----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """
        summary: The overview page's data for one time range.
        parameters:
          - {name: range, in: query, schema: {type: string, enum: [15m, 1h, 6h, 24h, 7d]}}
          - {name: from, in: query, schema: {type: string}, description: ISO 8601 or epoch ms}
          - {name: to, in: query, schema: {type: string}}
          - name: channel
            in: query
            schema: {type: string}
            description: >
              Narrows the lists of one channel's connections (worst, sessions); the
              counts (active, flow), the top channels and the Sora nodes stay overall.
        responses:
          200:
            description: >
              Body: {range, now, active: {connections, connections_from_stats, sessions},
              flow: {bucket_s, time, created_per_min, destroyed_per_min, failed_per_min},
              worst, channels, sessions, sora: {bucket_s, nodes, traffic}, throughput}
          400: {description: 'A bad range. Body: {"error", "message"}'}
          401: {description: A bearer token or the login cookie is required.}
          429: {description: The query engine is busy; see Retry-After.}
        """
        now = self.clock()
        channel = request.query_params.get("channel") or None

        def answer(r: q.TimeRange) -> dict[str, Any]:
            bucket = r.bucket()
            flow_bucket = r.bucket(at_least=60)
            active, flow, worst, channels, sessions, nodes, traffic = self._run(
                functools.partial(q.active_now_sql, now),
                functools.partial(q.connection_flow_series_sql, r, flow_bucket),
                q.worst_connections_sql(r, 10, channel),
                q.top_channels_sql(r, 10),
                q.sessions_sql(r, limit=50, channel=channel, now=now),
                q.series_lists(q.sora_nodes_sql(r, bucket), ["node"], NODE_COLUMNS),
                q.series_lists(q.sora_traffic_sql(r, bucket), ["node"], TRAFFIC_COLUMNS),
            )
            return {
                "active": _records(active)[0],
                "flow": {"bucket_s": flow_bucket, **_lists(flow, FLOW_COLUMNS)},
                "worst": _records(worst),
                "channels": _records(channels),
                "sessions": _records(sessions),
                "channel": channel,
                "sora": {
                    "bucket_s": bucket,
                    "nodes": _records(nodes),
                    "traffic": _records(traffic),
                },
                "throughput": self._throughput(),
            }

        return await self._answer(request, answer, now=now)

    async def sessions(self, request: Request) -> Response:
        """
        summary: The sessions that lived during a time range, newest first.
        parameters:
          - {name: range, in: query, schema: {type: string}}
          - {name: from, in: query, schema: {type: string}}
          - {name: to, in: query, schema: {type: string}}
          - {name: channel, in: query, schema: {type: string}}
          - {name: limit, in: query, schema: {type: integer, maximum: 1000}}
        responses:
          200: {description: 'Body: {range, sessions: [{session_id, channel_id, started,
            ended, last_seen, connections, worst_score, median_score, ...}]}'}
          400: {description: A bad range or limit.}
          401: {description: A bearer token or the login cookie is required.}
        """
        now = self.clock()
        channel = request.query_params.get("channel") or None
        try:
            limit = _limit(request, 100, 1_000)
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))

        def answer(r: q.TimeRange) -> dict[str, Any]:
            (rows,) = self._run(q.sessions_sql(r, limit=limit, channel=channel, now=now))
            return {"sessions": _records(rows)}

        return await self._answer(request, answer, now=now)

    async def session(self, request: Request) -> Response:
        """
        summary: One session - its participants, their join and leave times and scores.
        description: >
          Without range, from and to (or with range=all): the whole session.
        parameters:
          - {name: session_id, in: path, required: true, schema: {type: string}}
          - {name: range, in: query, schema: {type: string}}
        responses:
          200: {description: 'Body: {range, bucket_s, session, participants, scores:
            [{connection_id, time, score, mos_audio, video_score, min_score}]}'}
          401: {description: A bearer token or the login cookie is required.}
          404: {description: Nothing is stored of this session.}
        """
        session_id = request.path_params["session_id"]
        now = self.clock()

        def answer(r: q.TimeRange | None) -> dict[str, Any] | None:
            info_result, participants_result = self._run(
                q.session_sql(session_id), q.session_participants_sql(session_id)
            )
            info = _records(info_result)[0]
            participants = _records(participants_result)
            if info["channel_id"] is None and not participants:
                return None
            if r is None:
                r = _entity_range(
                    [info["created_at"], info["first_seen"]],
                    [info["destroyed_at"], info["last_seen"], info["last_event"]],
                    now,
                )
            bucket = r.bucket()
            (scores,) = self._run(
                q.series_lists(
                    q.scores_sql(r, bucket, session_id=session_id), ["connection_id"], SCORE_COLUMNS
                )
            )
            return {
                "range": r.as_json(),
                "bucket_s": bucket,
                "session": info,
                "participants": participants,
                "scores": _records(scores),
            }

        return await self._answer(request, answer, now=now, whole=True, what="session")

    async def connection(self, request: Request) -> Response:
        """
        summary: One connection's charts - every rate of rtc_rates per stream, and its score.
        description: >
          Without range, from and to (or with range=all): the whole connection. The
          diagnosis is GET /api/connections/{connection_id}/diagnosis.
        parameters:
          - {name: connection_id, in: path, required: true, schema: {type: string}}
          - {name: range, in: query, schema: {type: string}}
        responses:
          200: {description: 'Body: {range, bucket_s, connection, streams, rates:
            [{stats_type, stats_id, media_kind, time, bitrate_bps, ...}], scores: {time,
            score, mos_audio, video_score, min_score}}'}
          401: {description: A bearer token or the login cookie is required.}
          404: {description: Nothing is stored of this connection.}
        """
        connection_id = request.path_params["connection_id"]
        now = self.clock()

        def answer(r: q.TimeRange | None) -> dict[str, Any] | None:
            info_result, streams = self._run(
                q.connection_sql(connection_id), q.connection_streams_sql(connection_id)
            )
            found = _records(info_result)
            if not found:
                return None
            info = found[0]
            if r is None:
                r = _entity_range(
                    [info["joined"], info["first_seen"]], [info["left_at"], info["last_seen"]], now
                )
            bucket = r.bucket()
            rates, scores = self._run(
                q.series_lists(
                    q.connection_rates_sql(connection_id, r, bucket),
                    ["stats_type", "stats_id", "media_kind"],
                    RATE_COLUMNS,
                ),
                q.series_lists(
                    q.scores_sql(r, bucket, connection_id=connection_id), [], SCORE_COLUMNS
                ),
            )
            return {
                "range": r.as_json(),
                "bucket_s": bucket,
                "connection": info,
                "streams": _records(streams),
                "rates": _records(rates),
                "scores": _lists(scores, SCORE_COLUMNS),
            }

        return await self._answer(request, answer, now=now, whole=True, what="connection")

    async def tables(self, request: Request) -> Response:
        """
        summary: The lake's tables (columns, rows in the range, latest row) and views.
        parameters:
          - {name: range, in: query, schema: {type: string}}
        responses:
          200: {description: 'Body: {range, tables: [{name, description, columns, rows,
            latest}], views: [{name, description, columns}]}'}
          401: {description: A bearer token or the login cookie is required.}
        """
        tables = self.service.tables

        def answer(r: q.TimeRange) -> dict[str, Any]:
            names = [t.name for t in tables]
            (counts,) = self._run(q.table_counts_sql(names, r))
            found = {row["name"]: row for row in _records(counts)}
            return {
                "tables": [
                    {
                        "name": t.name,
                        "description": t.description,
                        "columns": _table_columns(t),
                        "rows": found.get(t.name, {}).get("rows", 0),
                        "latest": found.get(t.name, {}).get("latest"),
                    }
                    for t in tables
                ],
                "views": [
                    {
                        "name": v.name,
                        "description": v.description,
                        "columns": [{"name": n, "description": d} for n, d in v.columns],
                    }
                    for v in tables.views.values()
                ],
            }

        return await self._answer(request, answer, now=self.clock(), views=False)

    async def table(self, request: Request) -> Response:
        """
        summary: The latest rows of one table or view in a time range.
        parameters:
          - {name: name, in: path, required: true, schema: {type: string}}
          - {name: range, in: query, schema: {type: string}}
          - {name: limit, in: query, schema: {type: integer, maximum: 1000}}
        responses:
          200: {description: 'Body: {range, name, kind, description, columns, types, rows,
            truncated}'}
          401: {description: A bearer token or the login cookie is required.}
          404: {description: No such table or view.}
        """
        name = request.path_params["name"]
        tables = self.service.tables
        try:
            limit = _limit(request, 100, 1_000)
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))
        view = tables.views.get(name)
        if name not in tables and view is None:
            return json_error(404, "unknown_table", f"no table or view is called {name!r}")
        timed = view is None or any(column == "time" for column, _ in view.columns)

        def answer(r: q.TimeRange) -> dict[str, Any]:
            # one row more than shown tells whether there are more
            (rows,) = self._run(q.table_rows_sql(name, r if timed else None, limit + 1))
            if view is None:
                table = tables[name]
                kind, description, columns = "table", table.description, _table_columns(table)
            else:
                kind, description = "view", view.description
                columns = [{"name": n, "description": d} for n, d in view.columns]
            return {
                "name": name,
                "kind": kind,
                "description": description,
                "columns": columns,
                "result": {
                    "columns": rows.columns,
                    "types": [str(t) for t in rows.types],
                    "rows": json_rows(rows.table.slice(0, limit), rows.types),
                    "truncated": rows.table.num_rows > limit,
                },
                "timed": timed,
            }

        return await self._answer(request, answer, now=self.clock(), views=False)

    async def throughput(self, request: Request) -> Response:
        """
        summary: Records per second this process received and stored, over the last hour.
        description: >
          Sampled from the process's own counters every 5 s (not from the lake); starts
          empty at each start.
        responses:
          200: {description: 'Body: {interval_s, time, received, stored: {sink: [...]}}'}
          401: {description: A bearer token or the login cookie is required.}
        """
        if not query_allowed(request, self.token):
            return _unauthorized()
        return _json(self._throughput())

    # -- helpers --------------------------------------------------------------------------

    def _run(self, *sqls: Query) -> list[QueryResult]:
        engine: QueryEngine = self.service.query
        return engine.run_many(sqls)

    def _throughput(self) -> dict[str, Any]:
        series = self.service.throughput.series()
        series["time"] = [_iso(datetime.fromtimestamp(t, UTC)) for t in series["time"]]
        return series

    async def _answer(
        self,
        request: Request,
        answer: Callable[[Any], dict[str, Any] | None],
        *,
        now: datetime,
        whole: bool = False,
        what: str = "",
        views: bool = True,
    ) -> Response:
        """Check the token and the range, run ``answer`` on the query engine's threads and
        send its JSON (or the refusal of the engine). ``whole``: without a range, the
        whole life of ``what`` (``answer`` gets None); ``views``: ``answer`` reads the
        integration's tables and views (:data:`~rtclake.lake.dashboard.NEEDS`)."""
        if not query_allowed(request, self.token):
            return _unauthorized()
        params = request.query_params
        r: q.TimeRange | None = None
        try:
            if not whole or params.get("from") or params.get("range", "all") != "all":
                r = q.time_range(params.get("range"), params.get("from"), params.get("to"), now=now)
        except ValueError as exc:
            return json_error(400, "bad_range", str(exc))
        tables = self.service.tables
        missing = q.NEEDS - set(tables.names()) - set(tables.views) if views else set()
        if missing:
            return json_error(
                404,
                "no_integration",
                f"no installed integration provides {', '.join(sorted(missing))}"
                " (rtclake's Sora integration does)",
            )
        try:
            body = await self.service.query.offload(lambda: answer(r))
        except ValueError as exc:
            return json_error(400, "bad_request", str(exc))
        except QueryError as exc:
            return query_error(exc)
        if body is None:
            return json_error(
                404,
                f"unknown_{what}",
                f"nothing is stored of {what} {request.path_params.get(what + '_id')!r} (check"
                " the id; data shows once its first batch is written)",
            )
        body.setdefault("range", r.as_json() if r is not None else None)
        body["now"] = _iso(now)
        return _json(body)


FLOW_COLUMNS = q.FLOW_COLUMNS
NODE_COLUMNS = (
    "ongoing_connections", "created_per_min", "destroyed_per_min", "failed_per_min",
    "memory_mib", "run_queue",
)  # fmt: skip
TRAFFIC_COLUMNS = ("received_bps", "sent_bps", "connections")
SCORE_COLUMNS = (*q.SCORES, "min_score")
RATE_COLUMNS = (*q.RATE_METRICS, "quality_limitation_reason")


def _static_stamp() -> str:
    """A short hash of the static files' names and times, so a new version's files are
    fetched again."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(STATIC)}:{path.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:10]


def _send(request: Request, asset: _Asset, cache: str) -> Response:
    headers = {"etag": asset.etag, "cache-control": cache, "vary": "accept-encoding"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["content-encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _unauthorized() -> Response:
    return json_error(
        401, "unauthorized", "a valid bearer token or the dashboard's login cookie is required"
    )


def _json(body: Any) -> Response:
    return Response(
        orjson.dumps(body, option=JSON_OPTIONS),
        media_type=JSON,
        headers={"cache-control": "no-store"},
    )


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _records(result: QueryResult) -> list[dict[str, Any]]:
    columns = result.columns
    return [dict(zip(columns, row, strict=True)) for row in json_rows(result.table, result.types)]


def _lists(result: QueryResult, columns: Sequence[str]) -> dict[str, list[Any]]:
    """The one row of a :func:`~rtclake.lake.dashboard.series_lists` without keys (lists;
    empty when there was no row)."""
    rows = _records(result)
    row = rows[0] if rows else {}
    return {c: row.get(c) or [] for c in ("time", *columns)}


def _limit(request: Request, default: int, most: int) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 0 < int(text) <= most:
        raise ValueError(f"limit: a whole number from 1 to {most}")
    return int(text)


def _local_path(target: str) -> str:
    """``target`` if it is a path of this server, else ``/`` (no open redirect)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _entity_range(starts: Sequence[Any], ends: Sequence[Any], now: datetime) -> q.TimeRange:
    """The life of a session or connection (first start to last end, now while it lives)
    with a margin; the times are a result's (datetimes, or ISO text past Python's)."""
    begin = min((_time(s) for s in starts if s), default=now - timedelta(hours=1))
    end = max((_time(e) for e in ends if e), default=now)
    return q.TimeRange(begin - _ENTITY_MARGIN, max(end, begin) + _ENTITY_MARGIN, "all")


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else q.parse_time(value)


def _table_columns(table: Any) -> list[dict[str, str]]:
    """A table's columns: name, Arrow type, and where the value comes from."""
    sources = {c.name: c.keys for c in table.columns}
    out = []
    for field in table.schema:
        keys = sources.get(field.name)
        described = (
            "from " + " or ".join(keys) if keys else _ENVELOPE_DESCRIPTIONS.get(field.name, "")
        )
        out.append({"name": field.name, "type": str(field.type), "description": described})
    out.append({"name": "date", "type": "date32[day]", "description": "the partition's UTC date"})
    return out


_ENVELOPE_DESCRIPTIONS = {
    "record_id": "the record's stable id (a hash of its identifying fields)",
    "time": "the record's time (UTC)",
    "received_at": "when rtclake received it",
    "source": "the component that took it in",
    "stream": "the stream (URL part, file name, topic)",
    "kind": "the kind of record",
    "type": "the record's type field",
    "extra": "the keys no column takes, as JSON",
}
