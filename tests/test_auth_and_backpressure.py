"""Bearer tokens on ingest and query; 503 + Retry-After when the spool is full; a sink
outage that loses nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtclake.testing import wait_for
from tests.conftest import Server

INGEST_TOKEN = "secret"
QUERY_TOKEN = "query-secret"
BAD_AUTH = ["missing", "wrong-token", "token-prefix", "token-longer", "other-scheme", "no-scheme"]


def bad_auth(name: str, token: str) -> dict[str, str]:
    """Headers that must not pass as ``Bearer <token>``."""
    value = {
        "wrong-token": "Bearer wrong",
        "token-prefix": f"Bearer {token[:-1]}",
        "token-longer": f"Bearer {token}2",
        "other-scheme": f"Basic {token}",
        "no-scheme": token,
    }.get(name)
    return {} if value is None else {"Authorization": value}


def sample(server: Server, name: str, **labels: str) -> float:
    """The value of one sample on ``/metrics`` (0 if absent)."""
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose ingest and query endpoints require (different) tokens."""
    data_dir = tmp_path_factory.mktemp("auth") / "data"
    data_dir.mkdir()
    env = {
        "RTCLAKE_SERVER__INGEST_TOKEN": INGEST_TOKEN,
        "RTCLAKE_SERVER__QUERY_TOKEN": QUERY_TOKEN,
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.1",
    }
    server = Server(data_dir, env=env).start()
    yield server
    if server.proc is not None:
        server.stop(signal.SIGKILL)


def query(server: Server, sql: str, **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/api/query", json={"sql": sql}, headers=headers, timeout=30)


def count_rows(server: Server, where: str, expected: int, timeout: float = 10.0) -> int:
    """Poll the row count of the query-token server until it is ``expected`` (bounded)."""
    auth = {"Authorization": f"Bearer {QUERY_TOKEN}"}
    deadline = time.monotonic() + timeout
    while True:
        response = query(server, f"SELECT count(*) FROM telemetry WHERE {where}", **auth)
        assert response.status_code == 200, response.text
        value = int(response.json()["rows"][0][0])
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] == "unauthorized" and body["message"], body


@pytest.mark.parametrize("name", BAD_AUTH)
def test_ingest_without_the_right_token_is_refused_and_not_stored(
    guarded: Server, name: str
) -> None:
    stream = f"auth-{name}"
    record = b'{"time": "2026-05-01T00:00:00Z", "who": "intruder"}'
    response = httpx.post(
        f"{guarded.url}/ingest/{stream}", content=record, headers=bad_auth(name, INGEST_TOKEN)
    )
    assert_unauthorized(response)
    good = httpx.post(
        f"{guarded.url}/ingest/{stream}",
        content=b'{"time": "2026-05-01T00:00:00Z", "who": "owner"}',
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
    )
    assert good.status_code == 200 and good.json() == {"accepted": 1}
    assert count_rows(guarded, f"stream = '{stream}'", 1) == 1
    assert count_rows(guarded, f"stream = '{stream}' AND (extra->>'who') = 'intruder'", 0) == 0


def test_bearer_scheme_is_case_insensitive_but_the_token_is_not(guarded: Server) -> None:
    url = f"{guarded.url}/ingest/auth-scheme"
    ok = httpx.post(url, json={"a": 1}, headers={"Authorization": f"bearer {INGEST_TOKEN}"})
    assert ok.status_code == 200, ok.text
    wrong_case = httpx.post(url, json={"a": 1}, headers={"Authorization": "Bearer SECRET"})
    assert_unauthorized(wrong_case)


@pytest.mark.parametrize("name", BAD_AUTH)
def test_query_without_the_right_token_is_refused(guarded: Server, name: str) -> None:
    assert_unauthorized(query(guarded, "SELECT 1", **bad_auth(name, QUERY_TOKEN)))


def test_query_token_and_ingest_token_are_not_interchangeable(guarded: Server) -> None:
    ingest_token = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    assert_unauthorized(query(guarded, "SELECT 1", **ingest_token))
    query_token = {"Authorization": f"Bearer {QUERY_TOKEN}"}
    response = httpx.post(f"{guarded.url}/ingest/swap", json={"a": 1}, headers=query_token)
    assert_unauthorized(response)


def test_query_with_the_token_is_answered(guarded: Server) -> None:
    response = query(guarded, "SELECT 41 + 1 AS n", Authorization=f"Bearer {QUERY_TOKEN}")
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[42]]


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_need_no_token(guarded: Server, path: str) -> None:
    response = httpx.get(guarded.url + path)
    assert response.status_code == 200
    assert response.text


NON_ASCII_AUTH = [
    "Bearer caf\u00e9".encode("latin-1"),  # one Latin-1 byte
    "Bearer t\u00f6ken-\u2603".encode(),  # UTF-8
    b"Bearer \xff\xfe\x80",  # not text at all
    "B\u00e9arer secret".encode("latin-1"),
]


@pytest.mark.parametrize("value", NON_ASCII_AUTH, ids=range(len(NON_ASCII_AUTH)))
@pytest.mark.parametrize("path", ["/ingest/s", "/api/query", "/sora/webhooks/event"])
def test_non_ascii_authorization_is_401_not_500(guarded: Server, path: str, value: bytes) -> None:
    response = httpx.post(
        guarded.url + path, content=b'{"sql": "SELECT 1"}', headers={"Authorization": value}
    )
    assert_unauthorized(response)
    assert "Traceback" not in guarded.log()


def test_unauthorized_ingest_is_counted(guarded: Server) -> None:
    name, reason = "rtclake_records_rejected_total", "unauthorized"
    before = sample(guarded, name, reason=reason)
    for _ in range(3):
        assert_unauthorized(httpx.post(f"{guarded.url}/ingest/count", json={"a": 1}))
    assert sample(guarded, name, reason=reason) == before + 3


# -- backpressure and sink outages ---------------------------------------------------------

SPOOL_MAX = 200_000
OUTAGE_ENV = {
    "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.2",
    "RTCLAKE_WRITER__RETRY_INITIAL": "0.1",
    "RTCLAKE_WRITER__RETRY_MAX": "0.3",
    "RTCLAKE_QUERY__MAX_ROWS": "100000",
}


def block_lake(server: Server) -> Path:
    """Put a regular file where the lake's table folder belongs, so every write fails.

    (A lake root that cannot be created at all stops the server from starting, so the
    outage is made after start.)
    """
    blocker = server.data_dir / "lake" / "main" / "telemetry"
    assert not blocker.exists()
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    return blocker


def post_batch(server: Server, first: int, count: int) -> httpx.Response:
    lines = [
        orjson.dumps({"seq": s, "time": 1_777_000_000 + s, "pad": "p" * 40})
        for s in range(first, first + count)
    ]
    return httpx.post(f"{server.url}/ingest/load", content=b"\n".join(lines), timeout=30)


def fill_spool(
    server: Server, batch: int = 50, limit: int = 500
) -> tuple[set[int], httpx.Response]:
    """Post batches until one is refused; return the acknowledged seqs and the refusal."""
    acked: set[int] = set()
    for n in range(limit):
        response = post_batch(server, n * batch, batch)
        if response.status_code != 200:
            return acked, response
        assert response.json() == {"accepted": batch}
        acked.update(range(n * batch, (n + 1) * batch))
    raise AssertionError(f"spool never filled after {limit} batches")


def stored_seqs(server: Server) -> list[int]:
    result = server.query(
        "SELECT (extra->>'seq')::BIGINT FROM telemetry WHERE stream = 'load' ORDER BY 1",
        max_rows=100_000,
    )
    assert not result["truncated"]
    return [row[0] for row in result["rows"]]


def wait_health(server: Server, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health: dict[str, Any] = httpx.get(server.url + "/healthz", timeout=5).json()
        if predicate(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_full_spool_answers_503_with_retry_after_and_keeps_serving(make_server: Any) -> None:
    server: Server = make_server(RTCLAKE_SPOOL__MAX_BYTES=str(SPOOL_MAX), **OUTAGE_ENV)
    block_lake(server)
    acked, refused = fill_spool(server)

    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "spool_full" and refused.json()["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(acked) > 0
    for _ in range(3):  # still full: the sink cannot drain (the batches are a bit bigger)
        again = post_batch(server, 10**6, 50)
        assert again.status_code == 503 and "Retry-After" in again.headers
    health = httpx.get(server.url + "/healthz")
    assert health.status_code == 200
    assert 0 < health.json()["spool_bytes"] <= SPOOL_MAX
    assert sample(server, "rtclake_records_rejected_total", reason="spool_full") == 4


def test_records_accepted_before_the_spool_filled_are_stored_once_the_sink_recovers(
    make_server: Any,
) -> None:
    server: Server = make_server(RTCLAKE_SPOOL__MAX_BYTES=str(SPOOL_MAX), **OUTAGE_ENV)
    blocker = block_lake(server)
    acked, refused = fill_spool(server)
    assert refused.status_code == 503

    blocker.unlink()
    health = wait_health(server, lambda h: h["spool_segments"] == 0)
    assert health["spool_bytes"] == 0, health
    assert stored_seqs(server) == sorted(acked)  # every acked record once; no refused one
    assert post_batch(server, 10**6, 5).status_code == 200  # accepting again


def test_sink_outage_keeps_records_spooled_until_the_sink_is_back(make_server: Any) -> None:
    server: Server = make_server(**OUTAGE_ENV)
    blocker = block_lake(server)
    for n in range(5):
        assert post_batch(server, n * 100, 100).json() == {"accepted": 100}

    # The writer keeps failing and retrying (0.1 s doubling to 0.3 s): wait for three
    # failed writes; without the blocker the first would have drained the spool.
    wait_for(lambda: sample(server, "rtclake_sink_errors_total", sink="lake") >= 3)
    stuck = httpx.get(server.url + "/healthz").json()
    assert stuck["spool_segments"] > 0 and stuck["spool_bytes"] > 0, stuck
    # the node takes records (200) but says its lake does not: since when, and why
    assert stuck["status"] == "degraded" and stuck["writable"] is True, stuck
    lake = stuck["sinks"]["lake"]
    assert lake["ok"] is False and lake["since"] and lake["error"], lake
    assert sample(server, "rtclake_sink_up", sink="lake") == 0
    assert server.query("SELECT count(*) FROM telemetry")["rows"] == [[0]]
    assert sample(server, "rtclake_sink_errors_total", sink="lake") >= 3

    blocker.unlink()
    assert server.wait_rows("SELECT count(*) FROM telemetry", 500) == 500
    assert stored_seqs(server) == list(range(500))
    drained = wait_health(server, lambda h: h["spool_segments"] == 0)
    assert drained["spool_bytes"] == 0, drained
    assert drained["status"] == "ok" and drained["sinks"]["lake"] == {"ok": True}, drained
    assert sample(server, "rtclake_sink_up", sink="lake") == 1
