"""The mongodb sink's openvidu layout, field by field against what openvidu-livekit
writes (its mongo.go): the _id formulas on the fixtures, Go's JSON shape of the messages,
openvidu_expire_at, the indexes, active_entities and last_alive."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import uuid
from typing import Any

import pymongo
import pytest
from google.protobuf import json_format
from livekit.protocol import analytics

from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.integrations.livekit import openvidu
from rtclake.integrations.livekit.analytics import event_lines, stat_lines
from rtclake.sinks.base import Batch
from rtclake.sinks.mongodb import MongoSink, MongoSinkConfig
from rtclake.spool import Entry, EntryHeader
from tests.conftest import FIXTURES

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
REAL = os.environ.get("RTCLAKE_TEST_MONGODB_URL")


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / "livekit" / name).read_text()))


def stored(table: str, lines: list[bytes], segment: int = 1) -> Batch:
    """``lines`` as the writer hands them to the sinks: converted into the table's rows."""
    head = EntryHeader(table=table, source="livekit_analytics", stream="s", kind=table,
                       received_us=1_763_899_200_000_000, records=len(lines))  # fmt: skip
    converter = Converter(default_registry())
    try:
        tables = converter.convert("sp", segment, [Entry(head, b"\n".join(lines), 0)])
    finally:
        converter.close()
    return Batch("node", "sp", segment, tables)


def events_batch(*bodies: dict[str, Any]) -> Batch:
    messages = [json_format.ParseDict(b, analytics.AnalyticsEvent()) for b in bodies]
    return stored("livekit_analytics_events", event_lines(messages))


def stats_batch(*bodies: dict[str, Any]) -> Batch:
    messages = [json_format.ParseDict(b, analytics.AnalyticsStat()) for b in bodies]
    return stored("livekit_stats", stat_lines(messages))


def documents(batch: Batch) -> list[dict[str, Any]]:
    sink = MongoSink(MongoSinkConfig(layout="openvidu"), default_registry(), "ov")
    return [d.body for d in sink._documents(batch, NOW)]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_an_event_document_matches_openvidu_field_by_field() -> None:
    (doc,) = documents(events_batch(fixture("analytics_event_participant_active.json")))
    # [room.sid:][participant_id:][track_id:]TYPE:tsKey, tsKey = seconds then nanos
    assert doc["_id"] == md5(
        "RM_hGqXn6fS9dFx:PA_Xq7kLm2NpQ9r:PARTICIPANT_ACTIVE:1718093125123456789"
    )
    assert doc == {
        "_id": doc["_id"],
        "id": "AE_Qm3Wn4Eb5Rv6",
        "type": "PARTICIPANT_ACTIVE",
        "timestamp": {"seconds": 1718093125, "nanos": 123456789},
        "room_id": "RM_hGqXn6fS9dFx",
        "room": {"sid": "RM_hGqXn6fS9dFx", "name": "TestRoom", "empty_timeout": 300,
                 "creation_time": 1718093120, "num_participants": 1},
        "participant_id": "PA_Xq7kLm2NpQ9r",
        "participant": {"sid": "PA_Xq7kLm2NpQ9r", "identity": "TestParticipant1",
                        "name": "Alice", "state": "ACTIVE", "joined_at": 1718093124},
        "client_meta": {"region": "ap-northeast-1", "node": "ND_4bF7sKc9Qw2e",
                        "client_addr": "203.0.113.7", "connection_type": "udp"},
        "node_id": "ND_4bF7sKc9Qw2e",
        "openvidu_expire_at": NOW + dt.timedelta(hours=768),
    }  # fmt: skip


def test_event_id_parts_are_optional_and_the_nanos_only_when_there_are_some() -> None:
    bare = {"type": "ROOM_ENDED", "timestamp": "2024-06-11T08:00:00Z", "roomId": "RM_x"}
    with_track = {"type": "TRACK_PUBLISHED", "timestamp": "2024-06-11T08:00:00.5Z",
                  "participantId": "PA_y", "trackId": "TR_z"}  # fmt: skip
    docs = documents(events_batch(bare, with_track))
    assert docs[0]["_id"] == md5("ROOM_ENDED:1718092800")  # no room object: no room part
    assert docs[1]["_id"] == md5("PA_y:TR_z:TRACK_PUBLISHED:1718092800500000000")
    assert docs[0]["type"] == "ROOM_ENDED" and "room" not in docs[0]


def test_a_stat_document_matches_openvidu_field_by_field() -> None:
    (doc,) = documents(stats_batch(fixture("analytics_stat_upstream.json")))
    # room_id:participant_id:track_id:KIND:node:tsKey, every part
    assert doc["_id"] == md5(
        "RM_hGqXn6fS9dFx:PA_Xq7kLm2NpQ9r:TR_VCa8hB3kPz5w:UPSTREAM:ND_4bF7sKc9Qw2e:17180931565123456"
    )
    assert doc["kind"] == "UPSTREAM"
    assert doc["time_stamp"] == {"seconds": 1718093156, "nanos": 5123456}
    assert {k: doc[k] for k in ("id", "node", "room_id", "room_name", "participant_id",
                                "track_id")} == {
        "id": "AS_Lk9Jh8Gf7Ds6", "node": "ND_4bF7sKc9Qw2e", "room_id": "RM_hGqXn6fS9dFx",
        "room_name": "TestRoom", "participant_id": "PA_Xq7kLm2NpQ9r",
        "track_id": "TR_VCa8hB3kPz5w"}  # fmt: skip
    assert doc["score"] == pytest.approx(4.42, abs=1e-6)
    assert doc["min_score"] == pytest.approx(4.1, abs=1e-6)
    (stream,) = doc["streams"]
    assert stream["video_layers"] == [
        {"layer": 2, "packets": 1800, "bytes": 2100000, "frames": 900}
    ]
    assert stream["start_time"] == {"seconds": 1718093126, "nanos": 1000}
    counters = {
        k: v for k, v in stream.items() if k not in ("video_layers", "start_time", "end_time")
    }
    assert counters == {
        "primary_packets": 2690, "primary_bytes": 2812345, "retransmit_packets": 12,
        "retransmit_bytes": 13020, "padding_packets": 40, "padding_bytes": 9600,
        "packets_lost": 3, "frames": 900, "rtt": 25, "jitter": 4, "nacks": 5, "plis": 1,
    }  # fmt: skip
    assert doc["openvidu_expire_at"] == NOW + dt.timedelta(hours=768)


def test_a_stat_of_several_streams_is_one_document_and_a_replay_has_the_same_ids() -> None:
    two = copy.deepcopy(fixture("analytics_stat_upstream.json"))
    second = {**two["streams"][0], "primaryPackets": 10, "ssrc": 7}
    two["streams"].append(second)
    batch = stats_batch(two)
    assert batch.tables["livekit_stats"].num_rows == 2
    (doc,) = documents(batch)
    assert [s["primary_packets"] for s in doc["streams"]] == [2690, 10]
    assert [d["_id"] for d in documents(stats_batch(two))] == [doc["_id"]]


def test_active_entities_follow_start_and_end_events() -> None:
    ts = "2024-06-11T08:00:00Z"
    batch = events_batch(
        {"type": "ROOM_CREATED", "timestamp": ts, "room": {"sid": "RM_a"}},
        {"type": "PARTICIPANT_ACTIVE", "timestamp": ts, "participantId": "PA_a"},
        {"type": "EGRESS_STARTED", "timestamp": ts, "egressId": "EG_a"},
        {"type": "INGRESS_STARTED", "timestamp": ts, "ingress": {"state": {"resourceId": "RS_a"}}},
        {"type": "PARTICIPANT_LEFT", "timestamp": ts, "participantId": "PA_b"},
        {"type": "ROOM_ENDED", "timestamp": ts, "roomId": "RM_c"},
    )
    added, removed = openvidu.entity_changes(batch, default_registry())
    assert added == [
        {"_id": "RM_a", "entity": "ROOM"},
        {"_id": "PA_a", "entity": "PARTICIPANT"},
        {"_id": "EG_a", "entity": "EGRESS"},
        {"_id": "RS_a", "entity": "INGRESS"},
    ]
    assert removed == ["PA_b", "RM_c"]


def test_the_indexes_are_openvidus() -> None:
    sink = MongoSink(MongoSinkConfig(layout="openvidu"), default_registry(), "ov")
    made = {
        (c, tuple(k for k, _ in keys), tuple(sorted(o.items()))) for c, keys, o in sink._indexes()
    }
    expected = {
        ("events", (k,), ()) for k in ("type", "room.sid", "participant.sid", "timestamp.seconds")
    }
    expected |= {("stats", (k,), ()) for k in ("room_id", "participant_id", "track_id", "kind",
                                              "time_stamp.seconds", "score")}  # fmt: skip
    expected |= {
        (c, ("openvidu_expire_at",), (("expireAfterSeconds", 0),)) for c in ("events", "stats")
    }
    expected |= {("active_entities", ("entity",), ())}
    assert made == expected


@pytest.mark.skipif(
    not REAL,
    reason="no MongoDB server can be had on this machine; set RTCLAKE_TEST_MONGODB_URL to"
    " run this against one",
)
def test_against_a_real_server_openvidus_collections_fill_once() -> None:
    assert REAL is not None
    database = f"rtclake_ov_{uuid.uuid4().hex[:8]}"
    sink = MongoSink(MongoSinkConfig(url=REAL, database=database, layout="openvidu"),
                     default_registry(), "ov")  # fmt: skip
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(REAL)
    try:
        events = events_batch(fixture("analytics_event_participant_active.json"))
        stats = stats_batch(fixture("analytics_stat_upstream.json"))
        for _ in range(2):  # a replay
            sink.write(events)
            sink.write(stats)
        db = client[database]
        assert db["events"].count_documents({}) == 1 and db["stats"].count_documents({}) == 1
        assert db["active_entities"].find_one({"_id": "PA_Xq7kLm2NpQ9r"}) == {
            "_id": "PA_Xq7kLm2NpQ9r", "entity": "PARTICIPANT"}  # fmt: skip
        assert db["last_alive"].find_one({"_id": "server"})["last_alive"]["seconds"] > 0
    finally:
        sink.close()
        client.drop_database(database)
        client.close()
