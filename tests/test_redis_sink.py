"""The redis sink against the Redis on this machine: a stream per table with each
record once (a replayed batch adds nothing), keys with a TTL, an outage as SinkError,
and end to end behind the writer."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis

from rtclake.catalog import default_registry
from rtclake.errors import SinkError
from rtclake.sinks.redis import RedisSink, RedisSinkConfig
from tests.conftest import free_port
from tests.test_query import batch
from tests.test_sora_webhooks import App

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of the test's own, removed afterwards."""
    name = f"rtclake-test-{uuid.uuid4().hex[:8]}:"
    yield name
    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def lines(n: int) -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "d%d", "temp": %d}' % (i, i, 20 + i)
        for i in range(n)
    )


# Well-formed JSON whose numbers no float holds: the lake keeps them as written
BEYOND_FLOATS = (
    b'{"time": "2026-11-20T00:01:00Z", "device_id": "h2", "big": 1e400}\n'
    b'{"time": "2026-11-20T00:01:01Z", "device_id": "h3", "env": {"low": -1e400}}\n'
    b'{"time": "2026-11-20T00:01:02Z", "device_id": "h4", "digits": ' + b"9" * 400 + b"}"
)


def sink(prefix: str, **settings: object) -> RedisSink:
    config = RedisSinkConfig(url=URL, prefix=prefix, chunk=3, **settings)
    made = RedisSink(config, default_registry(), "r")
    made.start()
    return made


def stream_length(key: str, expected: int, timeout: float = 10.0) -> int:
    """The length of the stream ``key`` once it reaches ``expected`` (or the timeout)."""
    client = redis.Redis.from_url(URL)
    try:
        deadline = time.monotonic() + timeout
        while client.xlen(key) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(client.xlen(key))
    finally:
        client.close()


def test_a_stream_per_table_with_each_record_once_across_replays(prefix: str) -> None:
    writer = sink(prefix)
    made = batch(1, lines(7))
    writer.write(made)
    writer.write(made)  # the writer delivers at least once: a replay
    writer.write(batch(2, lines(2)))  # new records? the same ids: same device, same time
    client = redis.Redis.from_url(URL)
    entries = client.xrange(f"{prefix}telemetry")
    assert len(entries) == 7
    ids = [fields[b"record_id"].decode() for _, fields in entries]
    assert ids == made.tables["telemetry"]["record_id"].to_pylist()
    record = orjson.loads(entries[3][1][b"record"])
    assert record["device_id"] == "d3" and record["extra"] == {"temp": 23}
    assert record["time"] == "2026-11-20T00:00:03Z"
    assert client.ttl(f"{prefix}seen:{ids[0]}") > 86_400  # remembered against replays
    writer.close()
    client.close()


def test_json_mode_writes_a_key_per_record_that_expires(prefix: str) -> None:
    writer = sink(prefix, mode="json", ttl=120)
    made = batch(1, lines(4))
    writer.write(made)
    writer.write(made)
    client = redis.Redis.from_url(URL)
    keys = sorted(client.scan_iter(f"{prefix}telemetry:*"))
    assert len(keys) == 4
    first = made.tables["telemetry"]["record_id"][0].as_py()
    assert orjson.loads(client.get(f"{prefix}telemetry:{first}") or b"")["device_id"] == "d0"
    assert 0 < client.ttl(keys[0]) <= 120
    writer.close()
    client.close()


def test_numbers_beyond_a_float_are_stored_as_written_with_the_rest_of_the_batch(
    prefix: str,
) -> None:
    writer = sink(prefix)
    writer.write(batch(1, lines(2) + b"\n" + BEYOND_FLOATS))
    writer.close()
    client = redis.Redis.from_url(URL)
    stored = [fields[b"record"] for _, fields in client.xrange(f"{prefix}telemetry")]
    client.close()
    assert len(stored) == 5  # the rest of the batch too
    assert b'"extra":{"big":1e400}' in stored[2]
    assert b'"extra":{"env":{"low":-1e400}}' in stored[3]
    assert b'"extra":{"digits":' + b"9" * 400 + b"}" in stored[4]
    assert json.loads(stored[4])["extra"]["digits"] == 10**400 - 1  # still JSON


def test_an_unreachable_redis_is_an_outage_the_batch_waits_for() -> None:
    config = RedisSinkConfig(url=f"redis://127.0.0.1:{free_port()}/0", timeout=1)
    writer = RedisSink(config, default_registry(), "r")
    with pytest.raises(SinkError, match="redis"):
        writer.start()
    with pytest.raises(SinkError, match="redis"):
        writer.write(batch(1, lines(1)))


def test_behind_the_writer_every_acknowledged_record_reaches_the_stream(
    tmp_path: Path, prefix: str
) -> None:
    sinks = {"r": {"type": "redis", "url": URL, "prefix": prefix, "tables": ["telemetry"]}}
    app = App(tmp_path, sinks=sinks).start()
    try:
        for part in range(3):
            body = lines(5).replace(b'"d', b'"p%d-' % part)
            assert app.post("/ingest/sensors", body).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM telemetry", 15) == 15
        assert stream_length(f"{prefix}telemetry", 15) == 15
    finally:
        app.stop()


def test_behind_the_writer_numbers_beyond_a_float_reach_the_stream_not_dead_letters(
    tmp_path: Path, prefix: str
) -> None:
    sinks = {"r": {"type": "redis", "url": URL, "prefix": prefix, "tables": ["telemetry"]}}
    app = App(tmp_path, sinks=sinks, writer={"retry_initial": 0.05, "retry_max": 0.2}).start()
    try:
        assert app.post("/ingest/sensors", lines(2) + b"\n" + BEYOND_FLOATS).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM telemetry", 5) == 5
        assert stream_length(f"{prefix}telemetry", 5) == 5
        assert app.rows("SELECT count(*) FROM dead_letters") == [[0]]
        assert app.service.delivery.health()["r"] == {"ok": True}
    finally:
        app.stop()
