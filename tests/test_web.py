"""The web layer: one application, the node's endpoints as named handlers, and the
refusals every endpoint that takes records shares, described once."""

from __future__ import annotations

from pathlib import Path

from rtclake.config import Settings
from rtclake.service import Service
from rtclake.web.app import NodeEndpoints, create_app

TAKES_RECORDS = [
    "/ingest/{stream}",
    "/sora/webhooks/session",
    "/sora/webhooks/event",
    "/sora/webhooks/auth",
    "/sora/webhooks/stats",
    "/sora/stats-exporter",
]


def test_every_endpoint_that_takes_records_documents_the_shared_refusals(tmp_path: Path) -> None:
    service = Service(Settings(data_dir=tmp_path, node="t"))  # built, not started
    app = create_app(service)
    schema = NodeEndpoints(service).schemas.get_schema(routes=app.routes)
    for path in TAKES_RECORDS:
        responses = schema["paths"][path]["post"]["responses"]
        assert {"401", "413", "503", "507"} <= set(map(str, responses)), path
        assert (
            "disk is full" in responses[507]["description"]
            if 507 in responses
            else ("disk is full" in responses["507"]["description"])
        )
    assert {"/healthz", "/metrics", "/api/query"} <= set(schema["paths"])
