"""Malformed ingest requests: each is refused with a 4xx JSON answer naming the reason,
nothing of it is stored, and the server goes on serving."""

from __future__ import annotations

import gzip
import signal
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

MAX_BODY = 1024 * 1024
DEEP = 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: the point is that it survives every bad request."""
    data_dir = tmp_path_factory.mktemp("errors") / "data"
    data_dir.mkdir()
    env = {
        "RTCLAKE_SERVER__MAX_BODY_BYTES": str(MAX_BODY),
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.1",
    }
    server = Server(data_dir, env=env).start()
    yield server
    if server.proc is not None:
        server.stop(signal.SIGKILL)


def post(server: Server, stream: str, content: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/ingest/{stream}", content=content, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def assert_still_serving_and_nothing_stored(server: Server, stream: str) -> None:
    """A good request to ``stream`` succeeds and becomes the stream's only row.

    The writer stores batches in order, so once the good record is visible, any record of
    the earlier bad request would be visible too.
    """
    good = b'{"good": "%s", "time": "2026-05-01T00:00:00Z"}' % stream.encode()
    assert post(server, stream, good).json() == {"accepted": 1}
    count = f"SELECT count(*) FROM telemetry WHERE stream = '{stream}'"
    assert server.wait_rows(count, 1, timeout=10) == 1
    rows = server.query(f"SELECT extra->>'good' FROM telemetry WHERE stream = '{stream}'")
    assert rows["rows"] == [[stream]]


@dataclass(frozen=True)
class Bad:
    body: bytes
    error: str
    line: int | None = None
    status: int = 400
    headers: tuple[tuple[str, str], ...] = ()


def jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


GOOD_LINE = b'{"seq": 1, "time": "2026-05-01T00:00:00Z", "v": 1}'
NESTED = b"[" * DEEP + b"]" * DEEP
GZIPPED = gzip.compress(jsonl(GOOD_LINE, GOOD_LINE.replace(b"1}", b"2}")))

BROKEN_JSON = {
    "object-truncated": Bad(b'{"a": 1, "b": ', "bad_json"),
    "object-trailing-comma": Bad(b'{"a": 1,}', "bad_json"),
    "array-truncated": Bad(b'[{"a": 1}, {"a": ', "bad_json"),
    "array-missing-comma": Bad(b'[{"a": 1} {"a": 2}]', "bad_json"),
    "jsonl-bad-middle-line": Bad(
        jsonl(GOOD_LINE, GOOD_LINE, b'{"a": 3,}', GOOD_LINE, GOOD_LINE), "bad_json", line=3
    ),
    "jsonl-bad-first-line": Bad(jsonl(b'{"a" 1}', GOOD_LINE), "bad_json", line=1),
    "jsonl-truncated-last-line": Bad(GOOD_LINE + b"\n" + GOOD_LINE + b'\n{"a": 5', "bad_json", 3),
    "lone-surrogate": Bad(b'{"a": "\\ud800"}', "bad_json", line=1),
    "lone-surrogate-line-2": Bad(jsonl(GOOD_LINE, b'{"a": "x\\ud83dy"}'), "bad_json", line=2),
    "lone-surrogate-in-array": Bad(b'[{"a": 1}, {"a": "\\udbff"}]', "bad_json"),
}
WRONG_TYPES = {
    "time-not-a-time": Bad(b'{"time": "yesterday"}', "invalid_record"),
    "time-bool": Bad(b'{"time": true}', "invalid_record"),
    "ts-list": Bad(b'{"ts": [1]}', "invalid_record"),
    "type-number": Bad(b'{"type": 5}', "invalid_record"),
    "device-id-object": Bad(b'{"device_id": {"a": 1}}', "invalid_record"),
    "array-of-numbers": Bad(b"[1, 2, 3]", "invalid_record"),
    "array-with-one-bad-record": Bad(b'[{"a": 1}, {"time": "x"}]', "invalid_record"),
    "top-level-string": Bad(b'"hello"', "invalid_record"),
    "top-level-number": Bad(b"42", "invalid_record"),
    "jsonl-bad-type-line-3": Bad(
        jsonl(GOOD_LINE, GOOD_LINE, b'{"time": "yesterday"}', GOOD_LINE), "invalid_record", 3
    ),
    "jsonl-bad-type-line-1": Bad(jsonl(b'{"type": 5}', GOOD_LINE, GOOD_LINE), "invalid_record", 1),
    # One rule for times (the parser's): RFC 3339 with a required offset, or a number.
    "time-with-nul-before-z": Bad(b'{"time": "2026-11-20T00:00:00.000\\u0000Z"}', "invalid_record"),
    "time-without-offset": Bad(b'{"time": "2026-11-20T00:00:00"}', "invalid_record"),
    "time-space-without-offset": Bad(b'{"time": "2026-11-20 00:00:00.5"}', "invalid_record"),
    "timestamp-impossible-date": Bad(b'{"timestamp": "2026-02-30T00:00:00Z"}', "invalid_record"),
    "ts-leap-second": Bad(b'{"ts": "2016-12-31T23:59:60Z"}', "invalid_record"),
    "time-offset-out-of-range": Bad(b'{"time": "2026-11-20T00:00:00+24:00"}', "invalid_record"),
    # In UTC past year 9999 (a poisoned batch once: the lake could not name its date).
    "time-past-9999-in-utc": Bad(b'{"time": "9999-12-31T23:59:59.999999-23:59"}', "invalid_record"),
    "time-before-year-1-in-utc": Bad(b'{"time": "0001-01-01T00:00:00+00:01"}', "invalid_record"),
    "jsonl-array-line": Bad(jsonl(GOOD_LINE, b"[1]", GOOD_LINE), "invalid_record", 2),
}
ENCODINGS = {
    "gzip-garbage": Bad(b"this is not gzip", "bad_gzip", headers=(("Content-Encoding", "gzip"),)),
    "gzip-truncated": Bad(GZIPPED[:-12], "bad_gzip", headers=(("Content-Encoding", "gzip"),)),
    "gzip-plain-json": Bad(GOOD_LINE, "bad_gzip", headers=(("Content-Encoding", "gzip"),)),
    "deflate-garbage": Bad(b"\x00\x01\x02", "bad_gzip", headers=(("Content-Encoding", "deflate"),)),
    "brotli": Bad(GOOD_LINE, "bad_encoding", status=415, headers=(("Content-Encoding", "br"),)),
    "gzip-trailing-garbage": Bad(
        GZIPPED + b"garbage", "bad_gzip", headers=(("Content-Encoding", "gzip"),)
    ),
    "gzip-second-member-truncated": Bad(
        GZIPPED + GZIPPED[:-12], "bad_gzip", headers=(("Content-Encoding", "gzip"),)
    ),
    "deflate-trailing-garbage": Bad(
        zlib.compress(GOOD_LINE) + b"x", "bad_gzip", headers=(("Content-Encoding", "deflate"),)
    ),
    "utf8-in-key": Bad(b'{"\xff\xfe": 1}', "invalid_utf8", line=1),
    "utf8-in-unknown-value": Bad(b'{"note": "caf\xe9"}', "invalid_utf8", line=1),
    "utf8-on-line-3": Bad(jsonl(GOOD_LINE, GOOD_LINE, b'{"x": "\xc3("}'), "invalid_utf8", 3),
}
SHAPES = {
    "deep-arrays-in-unknown-field": Bad(b'{"x": ' + NESTED + b"}", "too_deep"),
    "deep-objects-in-unknown-field": Bad(
        b'{"x": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}", "too_deep"
    ),
    "deep-arrays-in-an-array-record": Bad(b'[{"x": ' + NESTED + b"}]", "too_deep"),
    "deep-arrays-on-line-2": Bad(jsonl(GOOD_LINE, b'{"x": ' + NESTED + b"}"), "too_deep", 2),
    "empty-body": Bad(b"", "empty"),
    "whitespace-body": Bad(b" \n\t\r\n  \n", "empty"),
    "empty-array": Bad(b"[]", "empty"),
    "idempotency-key-too-long": Bad(
        GOOD_LINE, "bad_idempotency_key", headers=(("Idempotency-Key", "k" * 257),)
    ),
}
CASES = BROKEN_JSON | WRONG_TYPES | ENCODINGS | SHAPES


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_body_is_refused_with_its_reason_and_nothing_is_stored(
    server: Server, name: str
) -> None:
    bad = CASES[name]
    response = post(server, name, bad.body, **dict(bad.headers))
    body = assert_refused(response, bad.status, bad.error)
    if bad.line is not None:
        assert body.get("line") == bad.line, body
    assert_still_serving_and_nothing_stored(server, name)


@pytest.mark.parametrize(
    ("name", "stream"),
    [
        ("leading-dash", "-x"),
        ("too-long", "a" * 129),
        ("space", "has%20space"),
        ("non-ascii", "%C3%A9t%C3%A9"),
        ("leading-dot", ".hidden"),
    ],
)
def test_invalid_stream_name_is_refused(server: Server, name: str, stream: str) -> None:
    assert_refused(post(server, stream, GOOD_LINE), 400, "bad_stream")
    assert_still_serving_and_nothing_stored(server, f"after-bad-stream-{name}")


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/nope", 404, "not_found"),
        ("POST", "/ingest/", 404, "not_found"),
        ("POST", "/ingest/..%2Fetc", 404, "not_found"),
        ("GET", "/ingest/sensors", 405, "method_not_allowed"),
        ("GET", "/api/query?sql=SELECT%201", 405, "method_not_allowed"),
    ],
)
def test_a_wrong_path_or_method_is_a_json_refusal(
    server: Server, method: str, path: str, status: int, error: str
) -> None:
    response = httpx.request(method, f"{server.url}{path}", timeout=30)
    body = assert_refused(response, status, error)
    if status == 405:
        assert "POST" in response.headers["allow"] and "POST" in body["message"]


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A streamed body (sent chunked, without Content-Length) of ``total`` bytes."""
    line = GOOD_LINE + b"\n"
    block = line * (size // len(line))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)


def jsonl_of_size(size: int) -> bytes:
    """JSON Lines of exactly ``size`` bytes."""
    line = b'{"v": 1}\n'
    body = line * (size // len(line))
    return body + b" " * (size - len(body))


OVERSIZE: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    "oversize-with-length": (lambda: jsonl_of_size(MAX_BODY + 1), {}),
    "oversize-chunked": (lambda: chunks(2 * MAX_BODY), {}),
    "gzip-bomb": (
        lambda: gzip.compress(jsonl_of_size(50 * MAX_BODY)),
        {"Content-Encoding": "gzip"},
    ),
    "deflate-bomb": (
        lambda: zlib.compress(jsonl_of_size(50 * MAX_BODY)),
        {"Content-Encoding": "deflate"},
    ),
}


@pytest.mark.parametrize("name", list(OVERSIZE))
def test_oversize_body_is_refused_with_413(server: Server, name: str) -> None:
    make_content, headers = OVERSIZE[name]
    assert_refused(post(server, name, make_content(), **headers), 413, "too_large")
    assert_still_serving_and_nothing_stored(server, name)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_body_of_exactly_the_limit_is_accepted(server: Server, encoding: str) -> None:
    body = jsonl_of_size(MAX_BODY)
    content = gzip.compress(body) if encoding == "gzip" else body
    response = post(server, f"limit-{encoding}", content, **{"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": MAX_BODY // len(b'{"v": 1}\n')}


def rejected(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics").text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "rtclake_records_rejected"
        for sample in family.samples
        if sample.name == "rtclake_records_rejected_total" and sample.labels["source"] == "http"
    }


def test_rejections_are_counted_by_reason(server: Server) -> None:
    sends: list[tuple[str, bytes, dict[str, str]]] = [
        ("bad_json", b'{"a": ', {}),
        ("bad_json", jsonl(GOOD_LINE, b"{"), {}),
        ("invalid_record", b'{"time": "yesterday"}', {}),
        ("invalid_utf8", b'{"a": "\xff"}', {}),
        ("empty", b"", {}),
        ("too_deep", b'{"x": ' + NESTED + b"}", {}),
        ("too_large", jsonl_of_size(MAX_BODY + 1), {}),
        ("bad_gzip", b"nope", {"Content-Encoding": "gzip"}),
        ("bad_encoding", GOOD_LINE, {"Content-Encoding": "br"}),
    ]
    before = rejected(server)
    for reason, body, headers in sends:
        assert post(server, "metrics", body, **headers).json()["error"] == reason
    assert post(server, "-bad-stream", GOOD_LINE).json()["error"] == "bad_stream"
    after = rejected(server)
    delta = {reason: n - before.get(reason, 0) for reason, n in after.items()}
    expected = Counter(reason for reason, _, _ in sends) + Counter(["bad_stream"])
    assert {reason: n for reason, n in delta.items() if n} == dict(expected)


def test_numeric_time_outside_the_representable_range_is_refused(make_server: Any) -> None:
    # Numbers are read as s, ms, us or ns since the epoch by magnitude. Values beyond
    # 64-bit microseconds, or outside years 1-9999, cannot be stored or read back.
    fresh: Server = make_server()
    values = ["1e25", "-1e25", "123456789012345678901234567890", "9e21", "-9e10"]
    statuses = {
        value: post(fresh, "far-time", b'{"time": %s}' % value.encode()).status_code
        for value in values
    }
    assert statuses == dict.fromkeys(values, 400)
    assert_still_serving_and_nothing_stored(fresh, "far-time")
    assert fresh.query("SELECT * FROM telemetry")["row_count"] == 1


@pytest.mark.parametrize("name", [n for n in CASES if "surrogate" in n])
def test_lone_surrogate_is_named_as_such_not_as_truncation(server: Server, name: str) -> None:
    body = assert_refused(post(server, name, CASES[name].body), 400, "bad_json")
    assert "lone UTF-16 surrogate" in body["message"] and "truncated" not in body["message"]


@pytest.mark.parametrize(
    "time",
    [
        "2026-11-20T00:00:00Z",
        "2026-11-20 00:00:00Z",
        "2026-11-20t00:00:00z",
        "2026-11-20T09:00:00.123456789+09:00",
        1795132800,
        1795132800.5,
    ],
)
def test_times_by_the_rule_are_accepted_and_stored_as_sent(server: Server, time: Any) -> None:
    stream = f"good-time-{abs(hash(str(time)))}"
    body = orjson.dumps({"time": time, "probe": stream})
    assert post(server, stream, body).json() == {"accepted": 1}
    count = f"SELECT count(*) FROM telemetry WHERE stream = '{stream}'"
    assert server.wait_rows(count, 1, timeout=10) == 1
    (stored,) = server.query(f"SELECT epoch_us(time) FROM telemetry WHERE stream = '{stream}'")[
        "rows"
    ][0]
    assert stored in (1795132800000000, 1795132800123456, 1795132800500000)


def test_multi_member_gzip_body_is_read_whole(server: Server) -> None:
    body = gzip.compress(b'{"n": 1}\n') + gzip.compress(b'{"n": 2}\n')
    response = post(server, "two-members", body, **{"Content-Encoding": "gzip"})
    assert response.json() == {"accepted": 2}
    count = "SELECT count(*) FROM telemetry WHERE stream = 'two-members'"
    assert server.wait_rows(count, 2, timeout=10) == 2


def test_body_larger_than_the_whole_spool_is_413_not_503(make_server: Any) -> None:
    fresh: Server = make_server(RTCLAKE_SPOOL__MAX_BYTES="4096")
    body = orjson.dumps([{"v": "x" * 100, "time": "2026-11-20T00:00:00Z"}] * 60)
    for _ in range(2):  # the spool is empty: a 503 would have the client retry forever
        body_json = assert_refused(post(fresh, "huge", body), 413, "too_large")
        assert "spool.max_bytes" in body_json["message"]
    assert post(fresh, "small", b'{"v": 1}').status_code == 200


def test_a_client_leaving_mid_body_is_counted_not_logged_with_a_traceback(
    make_server: Any,
) -> None:
    # (each had logged "Exception in ASGI application" with a traceback: any client could
    # flood the log)
    import socket

    server = make_server()
    host, port = "127.0.0.1", server.port
    for path in ("/ingest/gone", "/api/query", "/sora/webhooks/session"):
        with socket.create_connection((host, port)) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()
            )
        time.sleep(0.3)
    assert httpx.get(server.url + "/healthz").status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'reason="client_disconnected"' in metrics
    assert "Traceback" not in server.log() and "ClientDisconnect" not in server.log()


def test_a_body_trickling_in_past_the_timeout_is_refused_408() -> None:
    # (a client sending a byte every few seconds had held its connection for good)
    import asyncio

    from starlette.requests import Request

    from rtclake.errors import RequestTimeout
    from rtclake.web.http import read_body

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"{", "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/ingest/x", "headers": []}

    async def read() -> None:
        await read_body(Request(scope, trickle), 1000, timeout=0.5)

    with pytest.raises(RequestTimeout, match=r"did not arrive within 0\.5 s") as refused:
        asyncio.run(read())
    assert refused.value.status == 408


def test_connections_beyond_max_connections_are_answered_503_at_once(make_server: Any) -> None:
    # (20,000 slow clients had taken every file the process may open: no answer at all,
    # /healthz included, and maintenance failing with "Too many open files")
    import socket

    server = make_server(RTCLAKE_SERVER__MAX_CONNECTIONS="4")
    slow = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /ingest/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        slow.append(sock)
    time.sleep(0.5)
    try:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 503
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
