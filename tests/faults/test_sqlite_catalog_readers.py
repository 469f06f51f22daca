"""The embedded SQLite catalog stays whole while ``rtclake run`` writes and maintains the
lake and other processes read it.

Found in CI: readers in another process (``rtclake query``) attached the catalog
read-write; under a minute of ingest, maintenance every second and queries together, the
writer met "disk I/O error" (SQLite's WAL index deleted under it) or the file itself was
corrupted ("database disk image is malformed": rows of one catalog table in another's
pages), and the lake stopped taking writes. Readers now attach read-only and the catalog
is put in WAL mode through DuckDB's own SQLite only.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import orjson
from typer.testing import CliRunner

from rtclake.catalog import default_registry
from rtclake.cli import app
from rtclake.config import Settings
from rtclake.lake.query import QueryEngine
from tests.conftest import Server

SECONDS = 40.0


def test_the_catalog_stays_whole_under_ingest_maintenance_and_readers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(
        data, env={"RTCLAKE_LAKE__MAINTENANCE__INTERVAL": "1", "PYTHONFAULTHANDLER": "1"}
    ).start()
    acked: list[int] = []
    stop = threading.Event()
    failures: list[str] = []
    # Clients made before the threads start: making one reads os.environ, which the
    # readers' Settings (pydantic) change meanwhile ("KeyError: PYDANTIC_DISABLE_PLUGINS"
    # in the ingest thread, seen once)
    ingest_client, query_client = httpx.Client(timeout=30), httpx.Client(timeout=60)

    def ingest() -> None:
        n = 0
        while not stop.is_set():
            body = b"\n".join(
                orjson.dumps({"time": "2026-12-01T10:00:00Z", "device_id": f"d{n}-{i}", "v": i})
                for i in range(100)
            )
            response = ingest_client.post(server.url + "/ingest/telemetry", content=body)
            if response.status_code == 200:
                acked.append(response.json()["accepted"])
            else:
                failures.append(f"ingest {response.status_code}: {response.text[:200]}")
            n += 1
            time.sleep(0.05)

    def read() -> None:  # as the dashboard's or another tool's engine: one per question
        settings = Settings(data_dir=data)
        while not stop.is_set():
            try:
                engine = QueryEngine.for_settings(settings, default_registry())
                try:
                    engine.run("SELECT count(*) FROM telemetry")
                finally:
                    engine.close()
            except Exception as exc:
                failures.append(f"engine: {exc}"[:300])

    threads = [threading.Thread(target=f, daemon=True) for f in (ingest, read, read)]
    for thread in threads:
        thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and not failures:
            response = query_client.post(
                server.url + "/api/query",
                json={"sql": "SELECT count(*) FROM telemetry"},
            )
            if response.status_code != 200:
                failures.append(f"server query {response.status_code}: {response.text[:300]}")
            result = CliRunner().invoke(
                app,
                ["query", "SELECT count(*) AS n FROM telemetry", "--format", "json"],
                env={"RTCLAKE_DATA_DIR": str(data)},
            )
            if result.exit_code != 0:
                failures.append(f"rtclake query: {result.output[:300]}")
            reads += 1
        stop.set()
        for thread in threads:
            thread.join(60)
        # everything acknowledged reaches the lake (the flush interval is 0.5 s)
        want = sum(acked)
        got = 0
        for _ in range(120):
            got = server.query("SELECT count(*) AS n FROM telemetry")["rows"][0][0]
            if got >= want:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        server.stop()
        ingest_client.close()
        query_client.close()
    log = (data.parent / f"server-{server.port}.log").read_text(errors="replace")
    assert not failures, failures[:3]
    assert reads > 5 and want > 0
    assert got == want, (got, want, log[-3000:])
    for sign in ("disk I/O error", "malformed", "INTERNAL Error"):
        assert sign not in log, log[-3000:]
    catalog = sqlite3.connect(data / "lake" / "catalog.sqlite")
    try:
        assert catalog.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        catalog.close()
