"""``/api/connections/...``: what the dashboard and a support engineer ask about one
connection. The answers come from the query-time views of the integrations
(``rtc_rates``, ``connection_quality``, ``connection_transport``)."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rtclake.diagnosis import diagnose
from rtclake.errors import QueryError
from rtclake.service import Service
from rtclake.web.http import JSON, json_error, query_allowed, query_error


class ConnectionEndpoints:
    """Read-only answers about one connection, behind the SQL API's token."""

    def __init__(self, service: Service) -> None:
        self.service = service
        token = service.settings.server.query_token
        self.token = token.get_secret_value() if token else None

    def routes(self) -> list[Route]:
        return [
            Route("/api/connections/{connection_id}/diagnosis", self.diagnosis, methods=["GET"])
        ]

    async def diagnosis(self, request: Request) -> Response:
        """
        summary: What went wrong on one connection, when, on which stream, and why.
        parameters:
          - {name: connection_id, in: path, required: true, schema: {type: string}}
        responses:
          200:
            description: >
              Body: {connection_id, found: true, channel_id, session_id, first_seen,
              last_seen, score: {score, mos_audio, video_score, worst_score}, summary,
              findings: [{code, severity, start, end, stats_id, evidence, message}]}.
              Codes: high_loss, high_rtt, high_jitter, bandwidth_limited, cpu_limited,
              freezes, low_fps, no_media, relay, ice_restart, disconnected; thresholds
              under diagnosis: in the configuration.
          401: {description: A bearer token is required (server.query_token).}
          404: {description: 'No sample of this connection is stored. Body: {"error", "message"}'}
          429: {description: The query engine is busy; see Retry-After.}
        """
        if not query_allowed(request, self.token):
            return json_error(401, "unauthorized", "a valid bearer token is required")
        connection_id = request.path_params["connection_id"]
        engine = self.service.query
        config = self.service.settings.diagnosis
        try:
            answer = await engine.offload(lambda: diagnose(engine, connection_id, config))
        except LookupError as exc:
            return json_error(404, "no_views", str(exc))
        except QueryError as exc:
            return query_error(exc)
        if not answer["found"]:
            return json_error(
                404, "unknown_connection",
                f"no stats of connection {connection_id} are stored (check the id, or the"
                " time: a connection shows up once its first batch is written)",
            )  # fmt: skip
        return Response(orjson.dumps(answer), media_type=JSON)
