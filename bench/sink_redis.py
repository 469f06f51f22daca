"""The redis sink for the sink benchmark (bench/sinks.py): this machine's Redis, a key
prefix of the run's own, removed afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.redis import RedisSink, RedisSinkConfig

URL = "redis://127.0.0.1:6379/0"


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    import redis

    prefix = f"rtclake-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.RedisError:
        return None
    sink = RedisSink(RedisSinkConfig(url=URL, prefix=prefix), default_registry(), "redis")
    sink.start()

    def count() -> int:
        return int(client.xlen(f"{prefix}telemetry"))

    def cleanup() -> None:
        sink.close()
        keys = list(client.scan_iter(f"{prefix}*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
        client.close()

    return sink, count, cleanup
