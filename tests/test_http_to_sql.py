"""HTTP in, SQL out, through a real ``rtclake run`` process."""

from __future__ import annotations

import gzip
import signal

import httpx

from rtclake.catalog import default_registry
from rtclake.lake.query import QueryEngine
from rtclake.records import record_id
from tests.conftest import Server


def test_records_posted_over_http_are_queryable(server: Server) -> None:
    one = {"device_id": "t1", "time": "2026-11-23T12:00:00.123456Z", "temp": 21.5}
    lines = b'{"device_id":"t2","temp":1}\n{"device_id":3,"ts":1763899200123,"x":[1,2]}\n'
    assert httpx.post(server.url + "/ingest/sensors", json=one).json() == {"accepted": 1}
    response = httpx.post(server.url + "/ingest/sensors", content=lines)
    assert response.status_code == 200
    assert response.json() == {"accepted": 2}

    assert server.wait_rows("SELECT count(*) FROM telemetry", 3) == 3
    result = server.query(
        "SELECT device_id, time, extra, stream, source, date::VARCHAR FROM telemetry"
        " ORDER BY device_id"
    )
    rows = {row[0]: row for row in result["rows"]}
    assert rows["t1"][1] == "2026-11-23T12:00:00.123456Z"
    assert rows["t1"][2] == {"temp": 21.5}
    assert rows["t1"][3:] == ["sensors", "http", "2026-11-23"]
    assert rows["3"][1] == "2025-11-23T12:00:00.123000Z"  # epoch milliseconds
    assert rows["3"][2] == {"x": [1, 2]}


def test_gzip_array_body_is_accepted(server: Server) -> None:
    body = gzip.compress(b'[{"a": 1}, {"a": 2},\n {"a": 3}]')
    response = httpx.post(
        server.url + "/ingest/arr", content=body, headers={"Content-Encoding": "gzip"}
    )
    assert response.json() == {"accepted": 3}
    assert server.wait_rows("SELECT sum((extra->>'a')::INT) FROM telemetry", 6) == 6


def test_a_record_sent_twice_is_stored_once(server: Server) -> None:
    record = {"time": "2026-11-23T00:00:00Z", "device_id": "d", "v": 1}
    for _ in range(2):
        assert httpx.post(server.url + "/ingest/dup", json=record).status_code == 200
    timeless = b'{"v": 1}\n{"v": 1}'
    for _ in range(2):
        response = httpx.post(
            server.url + "/ingest/dup", content=timeless, headers={"Idempotency-Key": "k1"}
        )
        assert response.status_code == 200
    # 1 timed record + 2 distinct timeless lines (the retry with the same key adds none).
    assert server.wait_rows("SELECT count(*) FROM telemetry", 3) == 3


def test_keys_a_column_passes_over_are_kept_in_extra_as_sent(server: Server) -> None:
    """A column (or the envelope's time) takes the first of its keys that has a value; the
    others a record carries stay in ``extra`` with their values, and a record with one of
    them keeps its record id (the hash of its line, not of ``extra``) and is stored once."""
    times = (
        '{"device_id":"t1","time":"2026-01-01T00:00:01Z","timestamp":"2026-01-01T00:00:02Z",'
        '"ts":3,"temp":1}'
    )
    ids = '{"device_id":"A","deviceId":"B","device":"C","temp":1,"time":"2026-01-01T00:00:04Z"}'
    unmapped_first = '{"deviceId":"B","device":"C","time":"2026-01-01T00:00:05Z"}'
    single = '{"device_id":"one","time":"2026-01-01T00:00:06Z","temp":2}'
    for line in (times, ids, unmapped_first, single, single):
        response = httpx.post(server.url + "/ingest/y2", content=line)
        assert response.json() == {"accepted": 1}

    assert server.wait_rows("SELECT count(*) FROM telemetry", 4) == 4
    result = server.query("SELECT device_id, time, extra, record_id FROM telemetry ORDER BY time")
    got = [row[:3] for row in result["rows"]]
    assert got == [
        ["t1", "2026-01-01T00:00:01Z", {"timestamp": "2026-01-01T00:00:02Z", "ts": 3, "temp": 1}],
        ["A", "2026-01-01T00:00:04Z", {"deviceId": "B", "device": "C", "temp": 1}],
        ["B", "2026-01-01T00:00:05Z", {"device": "C"}],
        ["one", "2026-01-01T00:00:06Z", {"temp": 2}],
    ]
    # the record id rule is the line's own text, whatever went to extra
    sent = (times, ids, unmapped_first, single)
    assert [row[3] for row in result["rows"]] == [record_id("http", "y2", line) for line in sent]


def test_sigterm_stores_what_the_spool_holds(server: Server) -> None:
    record = {"time": "2026-11-23T00:00:00Z", "device_id": "last"}
    assert httpx.post(server.url + "/ingest/s", json=record).status_code == 200
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    engine = QueryEngine(server.data_dir / "lake", default_registry())
    assert engine.run("SELECT device_id FROM telemetry").rows() == [["last"]]
    assert not list((server.data_dir / "spool").glob("*.wal"))


def test_health_metrics_and_openapi_are_served(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    metrics = httpx.get(server.url + "/metrics").text
    assert "rtclake_spool_bytes" in metrics
    # at 0 before any failure (they had appeared at their first: a rate() missed it)
    assert 'rtclake_sink_errors_total{sink="lake"} 0.0' in metrics
    assert 'rtclake_writer_errors_total{stage="spool"} 0.0' in metrics
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/ingest/{stream}", "/api/query", "/healthz"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200
    assert httpx.get(server.url + "/docs/static/swagger-ui-bundle.js").status_code == 200
