"""``GET /api/entities``: what the ``entity_tracker`` processor knows is live now."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from rtclake.entities import EntityTracker
from rtclake.web.http import JSON, json_error, query_allowed

if TYPE_CHECKING:
    from rtclake.service import Service


DEFAULT_LIMIT, MAX_LIMIT = 1_000, 100_000
_UNTRACKED = (
    "nothing tracks what is live: add processors: {entities: {type: entity_tracker}} to the"
    " configuration"
)


class EntityEndpoints:
    """The live entities, behind the SQL API's token."""

    def __init__(self, service: Service) -> None:
        self.service = service
        token = service.settings.server.query_token
        self.token = token.get_secret_value() if token else None

    def routes(self) -> list[Route]:
        return [Route("/api/entities", self.entities, methods=["GET"])]

    def _tracker(self) -> EntityTracker | None:
        chain = self.service.chain
        for processor in chain.processors if chain else ():
            if isinstance(processor, EntityTracker):
                return processor
        return None

    async def entities(self, request: Request) -> Response:
        """
        summary: What is live now (rooms, sessions, participants, connections, tracks, ...).
        description: >
          From the start and end events of LiveKit (webhooks, analytics) and Sora (session
          and event webhooks and logs), as the entity_tracker processor saw them stored.
          Filters: kind (room, participant, track, egress, ingress, session, connection)
          and source (livekit, sora).
        parameters:
          - {name: kind, in: query, required: false, schema: {type: string}}
          - {name: source, in: query, required: false, schema: {type: string}}
          - {name: limit, in: query, required: false, schema: {type: integer, default: 1000}}
        responses:
          200: {description: 'Body: {"tracking", "count" (all that match), "entities" (the
            first limit of them, oldest first per source and kind): [{kind, id, source,
            parent, name, started, last_seen, ended: null, info}]}; without an
            entity_tracker processor, tracking is false and "message" says how to add one'}
          400: {description: 'A limit out of range. Body: {"error", "message"}'}
          401: {description: A bearer token is required (server.query_token).}
        """
        if not query_allowed(request, self.token):
            return json_error(401, "unauthorized", "a valid bearer token is required")
        tracker = self._tracker()
        if tracker is None:
            body = {"tracking": False, "count": 0, "entities": [], "message": _UNTRACKED}
            return Response(orjson.dumps(body), media_type=JSON)
        kind, source = request.query_params.get("kind"), request.query_params.get("source")
        text = request.query_params.get("limit", str(DEFAULT_LIMIT))
        if not text.isdigit() or not 0 < int(text) <= MAX_LIMIT:
            return json_error(400, "bad_limit", f"limit: a number from 1 to {MAX_LIMIT}")
        live = [
            e for e in tracker.entities.live()
            if (kind is None or e.kind == kind) and (source is None or e.source == source)
        ]  # fmt: skip
        shown = [e.as_json() for e in live[: int(text)]]
        body = {"tracking": True, "count": len(live), "entities": shown}
        return Response(orjson.dumps(body), media_type=JSON)
