"""The mongodb sink: documents by layout, a replay as duplicate keys that count as
written, refusals to dead letters, an outage as SinkError; against a real server when
RTCLAKE_TEST_MONGODB_URL names one (none can be had on this machine)."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import bson
import pymongo
import pymongo.errors
import pytest
from bson.decimal128 import Decimal128

from rtclake.catalog import default_registry
from rtclake.errors import SinkError
from rtclake.sinks.base import Rejected
from rtclake.sinks.mongodb import Document, MongoSink, MongoSinkConfig, codec_options, insert_once
from tests.conftest import free_port
from tests.test_query import batch
from tests.test_redis_sink import BEYOND_FLOATS

REAL = os.environ.get("RTCLAKE_TEST_MONGODB_URL")
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def lines(n: int) -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "d%d", "temp": %d}' % (i, i, 20 + i)
        for i in range(n)
    )


def test_rtclake_layout_documents_carry_the_record_id_as_id_and_typed_values() -> None:
    sink = MongoSink(MongoSinkConfig(expire_after=3600), default_registry(), "m")
    made = batch(1, lines(3))
    documents = list(sink._documents(made, NOW))
    assert [d.collection for d in documents] == ["telemetry"] * 3
    first = documents[0].body
    assert first["_id"] == made.tables["telemetry"]["record_id"][0].as_py()
    assert "record_id" not in first
    assert first["time"] == dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)
    assert first["extra"] == {"temp": 20} and first["device_id"] == "d0"
    assert first["expire_at"] == NOW + dt.timedelta(hours=1)
    indexes = sink._indexes()
    assert ("telemetry", [("expire_at", 1)], {"expireAfterSeconds": 0}) in indexes


class FakeCollection:
    """insert_many answering as a server would to a replay: duplicate keys, and one
    document too large."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls: list[list[dict[str, Any]]] = []

    def insert_many(self, bodies: list[dict[str, Any]], ordered: bool) -> None:
        assert ordered is False  # the rest goes in past a duplicate
        self.calls.append(bodies)
        if self.error is not None:
            raise self.error


def docs(n: int) -> list[Document]:
    return [Document("c", "telemetry", i, {"_id": f"r{i}"}) for i in range(n)]


def test_duplicate_keys_count_as_written_and_other_refusals_are_returned() -> None:
    replay = pymongo.errors.BulkWriteError({
        "writeErrors": [
            {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 2, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 3, "code": 10334, "errmsg": "BSONObj size too large"},
        ],
        "writeConcernErrors": [], "nInserted": 1,
    })  # fmt: skip
    refused = insert_once(FakeCollection(replay), docs(4))
    assert [(d.row, reason[:11]) for d, reason in refused] == [(3, "mongodb 103")]
    assert insert_once(FakeCollection(None), docs(2)) == []
    with pytest.raises(SinkError, match="AutoReconnect"):
        insert_once(FakeCollection(pymongo.errors.AutoReconnect("gone")), docs(1))


class EncodingCollection:
    """insert_many encoding each document as pymongo does before it sends (stopping at
    the first it cannot encode), keeping what it inserted."""

    def __init__(self) -> None:
        self.inserted: dict[str, dict[str, Any]] = {}

    def insert_many(self, bodies: list[dict[str, Any]], ordered: bool) -> None:
        encoded = [bson.encode(body, codec_options=codec_options()) for body in bodies]
        for data in encoded:
            document = bson.decode(data, codec_options=codec_options())
            self.inserted[document["_id"]] = document


def test_numbers_beyond_a_double_are_decimals_and_what_bson_cannot_hold_is_refused() -> None:
    sink = MongoSink(MongoSinkConfig(), default_registry(), "m")
    made = batch(
        1, lines(2) + b"\n" + BEYOND_FLOATS + b'\n{"device_id": "u", "n": 9223372036854775808}'
    )
    documents = list(sink._documents(made, NOW))
    collection = EncodingCollection()
    refused = insert_once(collection, documents)
    [(document, reason)] = refused  # no BSON number holds 400 digits
    assert document.row == 4 and reason.startswith("mongodb: not written: Invalid document: the")
    assert reason.endswith("(400 characters) is beyond a Decimal128's 34 digits and exponent")
    by_device = {d["device_id"]: d["extra"] for d in collection.inserted.values()}
    assert by_device == {
        "d0": {"temp": 20}, "d1": {"temp": 21},
        "h2": {"big": Decimal128("1E+400")}, "h3": {"env": {"low": Decimal128("-1E+400")}},
        "u": {"n": Decimal128("9223372036854775808")},
    }  # fmt: skip


def test_an_unreachable_server_is_an_outage() -> None:
    config = MongoSinkConfig(url=f"mongodb://127.0.0.1:{free_port()}", timeout=0.5)
    sink = MongoSink(config, default_registry(), "m")
    with pytest.raises(SinkError, match="mongodb"):
        sink.write(batch(1, lines(1)))


def test_an_unknown_layout_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(Exception, match="layout"):
        MongoSink(MongoSinkConfig(layout="nope"), default_registry(), "m")


@pytest.mark.skipif(
    not REAL,
    reason="no MongoDB server can be had on this machine; set RTCLAKE_TEST_MONGODB_URL to"
    " run this against one",
)
def test_against_a_real_server_a_replay_stores_nothing_twice() -> None:
    assert REAL is not None
    database = f"rtclake_test_{uuid.uuid4().hex[:8]}"
    sink = MongoSink(MongoSinkConfig(url=REAL, database=database, expire_after=600),
                     default_registry(), "m")  # fmt: skip
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(REAL)
    try:
        made = batch(1, lines(5))
        sink.write(made)
        sink.write(made)
        assert client[database]["telemetry"].count_documents({}) == 5
        ttl = [i for i in client[database]["telemetry"].list_indexes() if "expireAfterSeconds" in i]
        assert ttl and ttl[0]["key"] == {"expire_at": 1}
        with pytest.raises(Rejected):  # a document over 16 MB is refused for good
            sink.write(
                batch(2, b'{"time": "2026-11-20T00:00:00Z", "big": "' + b"x" * 17_000_000 + b'"}')
            )
    finally:
        sink.close()
        client.drop_database(database)
        client.close()
