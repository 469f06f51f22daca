"""LiveKit's analytics messages (AnalyticsEvent, AnalyticsStat and their batches), as
protojson and as binary protobuf, into livekit_analytics_events and livekit_stats."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from livekit.protocol import analytics

from tests.conftest import FIXTURES
from tests.test_sora_webhooks import App

LIVEKIT = FIXTURES / "livekit"
EVENTS, STATS = "/livekit/analytics/events", "/livekit/analytics/stats"
JSON_TYPE = {"content-type": "application/json"}
PROTO_TYPE = {"content-type": "application/x-protobuf"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    app = App(
        tmp_path_factory.mktemp("analytics"),
        sources={"lka": {"type": "livekit_analytics"}},
        processors={"entities": {"type": "entity_tracker"}},
    )
    app.start()
    yield app
    app.stop()


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((LIVEKIT / name).read_text()))


def stat(n: int) -> dict[str, Any]:
    """The fixture's upstream stat as the ``n``-th of its track (its own id and time)."""
    body = copy.deepcopy(fixture("analytics_stat_upstream.json"))
    body["id"] = f"AS_{n}"
    body["timeStamp"] = f"2024-06-11T08:{6 + n:02d}:00Z"
    return body


def test_protojson_and_protobuf_stats_single_and_batch_land_typed(app: App) -> None:
    one = stat(0)
    assert app.post(STATS, json.dumps(one).encode(), **JSON_TYPE).json() == {"stored": 1}
    batch = {"stats": [stat(1), stat(2)]}
    assert app.post(STATS, json.dumps(batch).encode(), **JSON_TYPE).json() == {"stored": 2}
    binary_one = json_format.ParseDict(stat(3), analytics.AnalyticsStat()).SerializeToString()
    answer = app.post(STATS + "?message=single", binary_one, **PROTO_TYPE)
    assert answer.json() == {"stored": 1}, answer.text
    binary_batch = json_format.ParseDict(
        {"stats": [stat(4), stat(5)]}, analytics.AnalyticsStats()
    ).SerializeToString()
    assert app.post(STATS, binary_batch, **PROTO_TYPE).json() == {"stored": 2}
    assert app.wait_rows("SELECT count(*) FROM livekit_stats", 6) == 6
    result = app.service.query.run(
        "SELECT stat_id, stream_kind, room_id, participant_id, track_id, score, min_score,"
        " primary_packets, primary_bytes, retransmit_bytes, packets_lost, rtt, jitter, nacks,"
        " plis, firs, video_layer, interval_s, epoch(start_time), epoch(time),"
        " typeof(primary_bytes), typeof(score), typeof(start_time)"
        " FROM livekit_stats ORDER BY stat_id"
    )
    rows = result.rows()
    assert [r[0] for r in rows] == [f"AS_{n}" for n in range(6)]
    first = rows[0]
    assert first[1:5] == ["UPSTREAM", "RM_hGqXn6fS9dFx", "PA_Xq7kLm2NpQ9r", "TR_VCa8hB3kPz5w"]
    assert first[5] == pytest.approx(4.42, abs=1e-6) and first[6] == pytest.approx(4.1, abs=1e-6)
    assert first[7:17] == [2690, 2812345, 13020, 3, 25, 4, 5, 1, 0, 2]
    assert first[17] == pytest.approx(29.998999, abs=1e-6)  # the stream's own interval
    assert first[18] == pytest.approx(1718093126.000001)
    assert first[19] == 1718093160  # the stat's time_stamp
    assert first[20:] == ["BIGINT", "DOUBLE", "TIMESTAMP WITH TIME ZONE"]
    # every form gave the same row but for its id and time
    assert {tuple(r[1:17]) for r in rows} == {tuple(first[1:17])}


def test_protojson_and_protobuf_events_single_and_batch_land_typed(app: App) -> None:
    event = fixture("analytics_event_participant_active.json")
    assert app.post(EVENTS, json.dumps(event).encode(), **JSON_TYPE).json() == {"stored": 1}
    joined = {**event, "id": "AE_joined", "type": "PARTICIPANT_JOINED"}
    left = {**event, "id": "AE_left", "type": "PARTICIPANT_LEFT",
            "timestamp": "2024-06-11T08:20:00Z"}  # fmt: skip
    binary = json_format.ParseDict({"events": [joined, left]}, analytics.AnalyticsEvents())
    answer = app.post(EVENTS, binary.SerializeToString(), **PROTO_TYPE)
    assert answer.json() == {"stored": 2}
    single = json_format.ParseDict({**event, "id": "AE_single", "type": "ROOM_ENDED"},
                                   analytics.AnalyticsEvent())  # fmt: skip
    answer = app.post(EVENTS + "?message=single", single.SerializeToString(), **PROTO_TYPE)
    assert answer.json() == {"stored": 1}
    sql = "SELECT count(*) FROM livekit_analytics_events"
    assert app.wait_rows(sql, 4) == 4
    rows = app.rows(
        "SELECT event_id, event_type, room_id, room_name, participant_id, participant_identity,"
        " node_id, client_region, client_addr, connection_type, epoch_us(time)"
        " FROM livekit_analytics_events ORDER BY event_id"
    )
    by_id = {row[0]: row[1:] for row in rows}
    assert by_id["AE_Qm3Wn4Eb5Rv6"] == [
        "PARTICIPANT_ACTIVE", "RM_hGqXn6fS9dFx", "TestRoom", "PA_Xq7kLm2NpQ9r",
        "TestParticipant1", "ND_4bF7sKc9Qw2e", "ap-northeast-1", "203.0.113.7", "udp",
        1718093125123456,  # microseconds: the nanoseconds are cut
    ]  # fmt: skip
    assert by_id["AE_left"][0] == "PARTICIPANT_LEFT"
    assert by_id["AE_single"][0] == "ROOM_ENDED"


def test_zero_enums_that_protojson_omits_are_stored_by_name(app: App) -> None:
    # (protojson leaves out a field at its zero value: ROOM_CREATED is type 0, AUDIO is
    # track type 0, JOINING participant state 0; they had been stored as NULL, and the
    # entity tracker never saw a room created)
    created = {"id": "AE_created", "type": "ROOM_CREATED", "timestamp": "2026-11-20T00:00:00Z",
               "roomId": "RM_zero", "room": {"sid": "RM_zero", "name": "zero-room"}}  # fmt: skip
    answer = app.post(EVENTS, json.dumps(created).encode(), **JSON_TYPE)
    assert answer.json() == {"stored": 1}, answer.text
    track = {"id": "AE_audio", "type": "TRACK_PUBLISHED", "timestamp": "2026-11-20T00:00:05Z",
             "roomId": "RM_zero", "participantId": "PA_zero", "trackId": "TR_audio",
             "participant": {"sid": "PA_zero", "identity": "zoe"},
             "track": {"sid": "TR_audio", "source": "MICROPHONE",
                       "mimeType": "audio/opus"}}  # fmt: skip
    binary = json_format.ParseDict(
        {"events": [{**created, "id": "AE_created_pb", "roomId": "RM_zero_pb",
                     "room": {"sid": "RM_zero_pb"}}, track]},
        analytics.AnalyticsEvents(),
    ).SerializeToString()  # fmt: skip
    assert app.post(EVENTS, binary, **PROTO_TYPE).json() == {"stored": 2}
    sql = "SELECT count(*) FROM livekit_analytics_events WHERE room_id LIKE 'RM_zero%'"
    assert app.wait_rows(sql, 3) == 3
    rows = app.rows(
        "SELECT event_id, event_type, track_type, participant_state, video_layer,"
        " message->>'$.type', message->>'$.track.type'"
        " FROM livekit_analytics_events WHERE room_id LIKE 'RM_zero%' ORDER BY event_id"
    )
    assert rows == [
        ["AE_audio", "TRACK_PUBLISHED", "AUDIO", "JOINING", 0, "TRACK_PUBLISHED", "AUDIO"],
        ["AE_created", "ROOM_CREATED", None, None, 0, "ROOM_CREATED", None],
        ["AE_created_pb", "ROOM_CREATED", None, None, 0, "ROOM_CREATED", None],
    ]
    # a number no typed column reads stays out (the room's emptyTimeout is not made 0)
    (message,) = app.rows(
        "SELECT message FROM livekit_analytics_events WHERE event_id = 'AE_created'"
    )[0]
    assert json.loads(message)["room"] == {"sid": "RM_zero", "name": "zero-room"}
    # the entity tracker sees both rooms created
    deadline, rooms = time.monotonic() + 20, set()
    while time.monotonic() < deadline and len(rooms) < 2:
        answer = httpx.get(app.url + "/api/entities?kind=room", timeout=10).json()
        rooms = {e["id"] for e in answer["entities"] if e["id"].startswith("RM_zero")}
        time.sleep(0.1)
    assert rooms == {"RM_zero", "RM_zero_pb"}


def test_a_redelivered_message_is_stored_once(app: App) -> None:
    body = json.dumps({"stats": [stat(20)]}).encode()
    for _ in range(3):
        assert app.post(STATS, body, **JSON_TYPE).status_code == 200
    time.sleep(0.5)
    assert app.wait_rows("SELECT count(*) FROM livekit_stats WHERE stat_id = 'AS_20'", 1) == 1


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (STATS, b'{"kind": "SIDEWAYS"}', JSON_TYPE),  # not an enum value
        (STATS, b'{"stats": [{"score": "high"}]}', JSON_TYPE),
        (EVENTS, b'{"type": "PARTICIPANT_ACTIVE", "nope": 1}', JSON_TYPE),  # unknown field
        (EVENTS, b"\xff\xfe\x00garbage", PROTO_TYPE),
        (EVENTS, b"{}", {"content-type": "text/plain"}),
    ],
)
def test_a_body_the_classes_refuse_is_answered_400_and_nothing_stored(
    app: App, path: str, body: bytes, headers: dict[str, str]
) -> None:
    before = app.rows("SELECT count(*) FROM livekit_stats")[0][0]
    answer = app.post(path, body, **headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] in ("invalid_record", "unsupported_media_type")
    assert answer.json()["message"]
    time.sleep(0.3)
    assert app.rows("SELECT count(*) FROM livekit_stats")[0][0] == before


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        (b"{}", "empty", "message 0 is empty (no field set): an AnalyticsEvent needs at least"),
        (b'{"events": [{"id": "AE_ok"}, {}]}', "empty", "message 1 is empty"),
        (b"[]", "invalid_record", "body is an array, not a JSON object: send one AnalyticsEvent"
                                  ' as a JSON object, or {"events": [...]}'),
        (b'[{"id": "AE_1", "type": "ROOM_ENDED"}]', "invalid_record", "body is an array"),
        (b"null", "invalid_record", "body is null, not a JSON object"),
        (b"42", "invalid_record", "body is a number, not a JSON object"),
        (b"", "empty", 'body is empty: send one AnalyticsEvent as a JSON object, or {"events"'),
        (b" \n", "empty", "body is empty"),
    ],
)  # fmt: skip
def test_an_empty_or_non_object_event_body_is_refused_saying_what_to_send(
    app: App, body: bytes, error: str, says: str
) -> None:
    # (`{}` and `[]` had each been stored as one all-NULL row; a bare array, null and a
    # number had been refused with the parser's TypeError, an empty body as "truncated")
    before = app.rows("SELECT count(*) FROM livekit_analytics_events")[0][0]
    answer = app.post(EVENTS, body, **JSON_TYPE)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error and says in answer.json()["message"], answer.json()
    time.sleep(0.3)
    assert app.rows("SELECT count(*) FROM livekit_analytics_events")[0][0] == before


def test_an_empty_stat_or_body_is_refused_and_an_empty_batch_stores_nothing(app: App) -> None:
    answer = app.post(STATS, b"{}", **JSON_TYPE)
    assert answer.status_code == 400 and answer.json() == {
        "error": "empty",
        "message": "message 0 is empty (no field set): an AnalyticsStat needs at least its id"
        " or a stream",
    }
    answer = app.post(STATS, b'[{"id": "AS_1"}]', **JSON_TYPE)
    assert answer.status_code == 400
    assert answer.json()["message"] == (
        'body is an array, not a JSON object: send one AnalyticsStat as a JSON object, or'
        ' {"stats": [...]}'
    )  # fmt: skip
    answer = app.post(STATS, b"", **PROTO_TYPE)
    assert answer.status_code == 400 and answer.json()["message"] == (
        "body is empty: send one AnalyticsStats (or one AnalyticsStat with ?message=single)"
    )
    # type 0 (ROOM_CREATED) written out and nothing else: no field differs from its default
    answer = app.post(EVENTS + "?message=single", b"\x08\x00", **PROTO_TYPE)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"].startswith("message 0 is empty")
    # an empty batch is no mistake: nothing to store
    assert app.post(STATS, b'{"stats": []}', **JSON_TYPE).json() == {"stored": 0}
    assert app.post(EVENTS, b'{"events": []}', **JSON_TYPE).json() == {"stored": 0}


def test_a_livekit_participant_has_a_connection_page_with_rates(app: App) -> None:
    """livekit_rates maps LiveKit's stats onto rtc_rates' columns: the dashboard's
    connection page of a participant charts its streams' rates, each counter over its
    stat's own interval."""
    stats = []
    for n in range(3):
        start = f"2024-06-12T10:0{n}:00Z"
        end = f"2024-06-12T10:0{n}:30Z"
        stats.append({
            "id": f"AS_dash_{n}", "kind": "UPSTREAM", "timeStamp": end, "node": "ND_1",
            "roomId": "RM_dash", "roomName": "dash-room", "participantId": "PA_dash",
            "trackId": "TR_dash", "mime": "video/VP8", "score": 4.5,
            "streams": [{"primaryPackets": 3000, "primaryBytes": str(375_000 * (n + 1)),
                         "packetsLost": 30, "frames": 900, "rtt": 40, "jitter": 6, "nacks": 3,
                         "startTime": start, "endTime": end}],
        })  # fmt: skip
    answer = app.post(STATS, json.dumps({"stats": stats}).encode(), **JSON_TYPE)
    assert answer.json() == {"stored": 3}
    sql = "SELECT count(*) FROM livekit_rates WHERE connection_id = 'PA_dash'"
    assert app.wait_rows(sql, 3) == 3
    page = httpx.get(app.url + "/api/dashboard/connections/PA_dash", timeout=30)
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["connection"]["session_id"] == "RM_dash"
    assert body["connection"]["channel_id"] == "dash-room"
    (series,) = body["rates"]
    assert (series["stats_type"], series["media_kind"]) == ("outbound-rtp", "video")
    assert series["bitrate_bps"] == pytest.approx([100_000, 200_000, 300_000])  # 8 × bytes / 30 s
    assert series["loss_pct"] == pytest.approx([100 * 30 / 3030] * 3)
    assert series["fps"] == pytest.approx([30.0] * 3)
    assert series["rtt_ms"] == pytest.approx([40.0] * 3)
    (stream,) = body["streams"]
    assert stream["stats_type"] == "outbound-rtp"


def test_livekit_rates_is_read_by_time_on_the_tables_page(app: App) -> None:
    # (the view declared no columns, so the page took it for one without a time: it
    # showed any rows, ignoring the range and the order)
    minutes = [f"2024-06-{14 + n // 4}T10:0{n % 4}" for n in range(6)]  # 4 on the 14th
    stats = [{
        "id": f"AS_tables_{n}", "kind": "DOWNSTREAM", "roomId": "RM_tables",
        "timeStamp": f"{minute}:30Z", "participantId": "PA_tables", "trackId": "TR_tables",
        "mime": "audio/opus",
        "streams": [{"primaryPackets": 1000, "startTime": f"{minute}:00Z",
                     "endTime": f"{minute}:30Z"}],
    } for n, minute in enumerate(minutes)]  # fmt: skip
    assert app.post(STATS, json.dumps({"stats": stats}).encode(), **JSON_TYPE).status_code == 200
    sql = "SELECT count(*) FROM livekit_rates WHERE connection_id = 'PA_tables'"
    assert app.wait_rows(sql, 6) == 6
    answer = httpx.get(
        app.url + "/api/dashboard/tables/livekit_rates",
        params={"from": "2024-06-14T00:00:00Z", "to": "2024-06-15T00:00:00Z", "limit": 3},
        timeout=30,
    ).json()
    assert answer["timed"] is True
    result = answer["result"]
    assert [c["name"] for c in answer["columns"]] == result["columns"]
    at = result["columns"].index("time")
    times = [row[at] for row in result["rows"]]
    assert times == ["2024-06-14T10:03:30Z", "2024-06-14T10:02:30Z", "2024-06-14T10:01:30Z"]
    assert result["truncated"] is True  # 10:00:30 is in the range too; the 15th's are not


def test_every_view_declares_the_columns_its_rows_have(app: App) -> None:
    listed = httpx.get(app.url + "/api/dashboard/tables", timeout=30).json()["views"]
    assert {view["name"] for view in listed} >= {"livekit_rates", "connection_quality"}
    for view in listed:
        declared = [column["name"] for column in view["columns"]]
        answer = httpx.get(
            app.url + f"/api/dashboard/tables/{view['name']}", params={"limit": 1}, timeout=30
        ).json()
        assert declared == answer["result"]["columns"], view["name"]
        assert answer["timed"] is ("time" in declared), view["name"]


def downstream_stats(name: str, day: str, **stream: Any) -> list[dict[str, Any]]:
    """Four 30-second DOWNSTREAM AnalyticsStats of one audio track, a minute apart, in
    room RM_NAME by participant PA_NAME, with ``stream``'s counters (and jitter 5 ms)."""
    return [{
        "id": f"AS_{name}_{n}", "kind": "DOWNSTREAM", "timeStamp": f"{day}T10:0{n}:30Z",
        "roomId": f"RM_{name}", "roomName": f"{name}-room", "participantId": f"PA_{name}",
        "trackId": f"TR_{name}", "mime": "audio/opus",
        "streams": [{"primaryBytes": "120000", "jitter": 5, **stream,
                     "startTime": f"{day}T10:0{n}:00Z", "endTime": f"{day}T10:0{n}:30Z"}],
    } for n in range(4)]  # fmt: skip


def test_a_lossy_livekit_participant_is_diagnosed_from_its_stats(app: App) -> None:
    stats = downstream_stats("lossy", "2024-06-13", primaryPackets=1350, packetsLost=150, rtt=30)
    assert app.post(STATS, json.dumps({"stats": stats}).encode(), **JSON_TYPE).status_code == 200
    assert (
        app.wait_rows("SELECT count(*) FROM livekit_rates WHERE connection_id = 'PA_lossy'", 4) == 4
    )
    answer = httpx.get(app.url + "/api/connections/PA_lossy/diagnosis", timeout=30).json()
    assert answer["found"] and answer["session_id"] == "RM_lossy"
    codes = {f["code"]: f for f in answer["findings"]}
    assert set(codes) == {"high_loss"}, answer["findings"]
    assert codes["high_loss"]["stats_id"] == "TR_lossy:DOWNSTREAM:0"
    assert codes["high_loss"]["evidence"]["worst"] == pytest.approx(10.0)


def test_a_livekit_participant_with_a_long_round_trip_is_diagnosed_high_rtt(app: App) -> None:
    # (LiveKit's rtt is on its streams, which livekit_rates gives as inbound-rtp and
    # outbound-rtp; the diagnosis had looked for it only on remote-inbound-rtp and
    # candidate-pair rows, so 450 ms never made a high_rtt)
    stats = downstream_stats("slow", "2024-06-16", primaryPackets=1500, rtt=450)
    assert app.post(STATS, json.dumps({"stats": stats}).encode(), **JSON_TYPE).status_code == 200
    sql = "SELECT count(*) FROM livekit_rates WHERE connection_id = 'PA_slow'"
    assert app.wait_rows(sql, 4) == 4
    answer = httpx.get(app.url + "/api/connections/PA_slow/diagnosis", timeout=30).json()
    assert answer["found"], answer
    codes = {f["code"]: f for f in answer["findings"]}
    assert set(codes) == {"high_rtt"}, answer["findings"]
    finding = codes["high_rtt"]
    assert finding["stats_id"] == "TR_slow:DOWNSTREAM:0"
    assert finding["evidence"]["worst"] == pytest.approx(450.0)
    assert finding["evidence"]["stats_type"] == "inbound-rtp"
    assert "had a long round trip" in finding["message"]
