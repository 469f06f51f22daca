"""The mongodb sink for the sink benchmark (bench/sinks.py): only against a real server,
``RTCLAKE_TEST_MONGODB_URL`` (none can be had on this machine); a database of the run's
own, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.mongodb import MongoSink, MongoSinkConfig

UNAVAILABLE = (
    "no MongoDB server can be had on this machine; set RTCLAKE_TEST_MONGODB_URL to measure it"
)


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    url = os.environ.get("RTCLAKE_TEST_MONGODB_URL")
    if not url:
        return None
    import pymongo

    database = f"rtclake_bench_{uuid.uuid4().hex[:8]}"
    config = MongoSinkConfig(url=url, database=database, tables=["telemetry"])
    sink = MongoSink(config, default_registry(), "mongodb")
    sink.start()
    client: pymongo.MongoClient = pymongo.MongoClient(url)  # type: ignore[type-arg]

    def count() -> int:
        return int(client[database]["telemetry"].count_documents({}))

    def cleanup() -> None:
        sink.close()
        client.drop_database(database)
        client.close()

    return sink, count, cleanup
