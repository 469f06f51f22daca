"""The entity_tracker processor: what is live from LiveKit's and Sora's start and end
events, whichever way they arrive; replays and late events change nothing; the state
survives a restart; GET /api/entities lists it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from rtclake.entities import Change, Entities, Entity, EntityTracker
from rtclake.processors.base import Context
from tests.conftest import FIXTURES
from tests.test_livekit_webhooks import KEY, SECRET, token
from tests.test_sora_webhooks import App

LIVEKIT = FIXTURES / "livekit"


def context(table: str) -> Context:
    return Context(table, "test", "s", "store")


def webhook(name: str) -> dict[str, Any]:
    body = json.loads((LIVEKIT / name).read_text())
    return {**body, "time": int(body["createdAt"])}


def live(tracker: EntityTracker) -> set[tuple[str, str]]:
    return {(e.kind, e.id) for e in tracker.entities.live()}


def test_livekit_webhooks_start_and_end_rooms_participants_tracks_and_egresses(
    tmp_path: Path,
) -> None:
    tracker = EntityTracker(tmp_path / "entities.json")
    names = ("webhook_room_started.json", "webhook_participant_joined.json",
             "webhook_track_published.json")  # fmt: skip
    tracker.process([webhook(n) for n in names], context("livekit_events"))
    assert live(tracker) == {("room", "RM_hGqXn6fS9dFx"), ("participant", "PA_Xq7kLm2NpQ9r"),
                             ("track", "TR_VCa8hB3kPz5w")}  # fmt: skip
    participant = tracker.entities.get("livekit:participant:PA_Xq7kLm2NpQ9r")
    assert participant is not None and participant.parent == "RM_hGqXn6fS9dFx"
    assert participant.name == "TestParticipant1" and participant.started == 1718093125
    tracker.process([webhook("webhook_participant_left.json")], context("livekit_events"))
    assert live(tracker) == {("room", "RM_hGqXn6fS9dFx")}  # its track left with it
    track = tracker.entities.get("livekit:track:TR_VCa8hB3kPz5w")
    assert track is not None and track.ended == 1718093400
    # a replay of the join (older than the leave) does not bring it back
    tracker.process([webhook("webhook_participant_joined.json")], context("livekit_events"))
    assert ("participant", "PA_Xq7kLm2NpQ9r") not in live(tracker)
    tracker.process([webhook("webhook_room_finished.json")], context("livekit_events"))
    assert ("room", "RM_hGqXn6fS9dFx") not in live(tracker)
    # the state survives a restart
    again = EntityTracker(tmp_path / "entities.json")
    assert live(again) == live(tracker) == set()
    assert again.entities.get("livekit:track:TR_VCa8hB3kPz5w") == track


def test_a_finished_room_ends_what_it_had_and_late_events_of_it_stay_ended() -> None:
    tracker = EntityTracker(None)
    room = {"sid": "RM_hGqXn6fS9dFx", "name": "TestRoom"}
    names = ("webhook_room_started.json", "webhook_participant_joined.json",
             "webhook_track_published.json")  # fmt: skip
    egress = {"event": "egress_started", "time": 1718093200,
              "egressInfo": {"egressId": "EG_room", "roomId": room["sid"]}}  # fmt: skip
    web = {"event": "egress_started", "time": 1718093200,
           "egressInfo": {"egressId": "EG_web"}}  # a web page's: of no room  # fmt: skip
    ingress = {"event": "ingress_started", "time": 1718093210,
               "ingressInfo": {"ingressId": "IN_room", "roomName": "TestRoom",
                               "state": {"status": "ENDPOINT_PUBLISHING",
                                         "roomId": room["sid"]}}}  # fmt: skip
    tracker.process([*(webhook(n) for n in names), egress, web, ingress],
                    context("livekit_events"))  # fmt: skip
    assert len(live(tracker)) == 6
    # the room finishes; no participant_left, track_unpublished, egress or ingress end came
    tracker.process([webhook("webhook_room_finished.json")], context("livekit_events"))
    assert live(tracker) == {("egress", "EG_web")}
    for key in ("participant:PA_Xq7kLm2NpQ9r", "track:TR_VCa8hB3kPz5w", "egress:EG_room",
                "ingress:IN_room"):  # fmt: skip
        entity = tracker.entities.get(f"livekit:{key}")
        assert entity is not None and entity.ended == 1718093700, key
    # late events from before the room's end, of what it had or of what was never seen
    late = [
        webhook("webhook_participant_joined.json"),
        {"event": "participant_joined", "time": 1718093600, "room": room,
         "participant": {"sid": "PA_late", "identity": "late"}},
        {"event": "track_published", "time": 1718093650, "room": room,
         "participant": {"sid": "PA_late"}, "track": {"sid": "TR_late"}},
    ]  # fmt: skip
    tracker.process(late, context("livekit_events"))
    assert live(tracker) == {("egress", "EG_web")}


def test_an_end_that_comes_first_leaves_out_its_childrens_older_events() -> None:
    entities = Entities(None)
    entities.apply(Change("end", Entity("room", "R", "livekit"), 100.0))
    child = Entity("participant", "P", "livekit", parent="R", info={"room_sid": "R"})
    assert not entities.apply(Change("start", child, 50.0))
    track = Entity("track", "T", "livekit", parent="P", info={"room_sid": "R"})
    assert not entities.apply(Change("start", track, 60.0))
    assert entities.live() == []
    # seen after the room's end: a life of its own, which its own end closes
    later = Entity("participant", "P", "livekit", parent="R", info={"room_sid": "R"})
    assert entities.apply(Change("start", later, 150.0))
    assert [e.id for e in entities.live()] == ["P"]


def test_a_destroyed_sora_session_ends_its_connections() -> None:
    tracker = EntityTracker(None)
    session = {"session_id": "S1", "channel_id": "ch"}
    tracker.process([{"timestamp": "2026-11-20T00:00:00Z",
                      "req": {"type": "session.created", **session}}],
                    context("sessions"))  # fmt: skip
    events = [{"timestamp": f"2026-11-20T00:00:0{n}Z",
               "req": {"type": "connection.created", "connection_id": f"C{n}", **session}}
              for n in (1, 2)]  # fmt: skip
    tracker.process(events, context("sora_events"))
    assert live(tracker) == {("session", "S1"), ("connection", "C1"), ("connection", "C2")}
    # the connections' connection.destroyed were lost
    tracker.process([{"timestamp": "2026-11-20T00:05:00Z",
                      "req": {"type": "session.destroyed", **session}}],
                    context("sessions"))  # fmt: skip
    assert live(tracker) == set()
    connection = tracker.entities.get("sora:connection:C1")
    assert connection is not None and connection.ended == 1795132800 + 300
    late = [{"timestamp": "2026-11-20T00:04:00Z",
             "req": {"type": "connection.updated", "connection_id": "C1", **session}},
            {"timestamp": "2026-11-20T00:04:30Z",
             "req": {"type": "connection.created", "connection_id": "C3", **session}}]  # fmt: skip
    tracker.process(late, context("sora_events"))
    assert live(tracker) == set()


def test_a_state_saved_with_live_children_of_what_ended_is_mended_at_start(
    tmp_path: Path,
) -> None:
    state = tmp_path / "entities.json"
    saved = [
        Entity("participant", "P", "livekit", parent="R", started=10, last_seen=10, ended=50),
        Entity("track", "T", "livekit", parent="P", started=20, last_seen=20,
               info={"room_sid": "R"}),
    ]  # fmt: skip
    state.write_text(json.dumps({"entities": [asdict(e) for e in saved]}))
    entities = Entities(state)
    track = entities.get("livekit:track:T")
    assert entities.live() == [] and track is not None and track.ended == 50


def test_analytics_and_sora_events_feed_the_same_table(tmp_path: Path) -> None:
    tracker = EntityTracker(tmp_path / "entities.json")
    active = json.loads((LIVEKIT / "analytics_event_participant_active.json").read_text())
    tracker.process([{"message": active, "time": active["timestamp"]}],
                    context("livekit_analytics_events"))  # fmt: skip
    assert ("participant", "PA_Xq7kLm2NpQ9r") in live(tracker)
    sessions = [
        {"timestamp": "2026-11-20T00:00:00Z",
         "req": {"type": "session.created", "session_id": "S1", "channel_id": "ch"}},
        {"timestamp": "2026-11-20T00:01:00Z",
         "req": {"type": "session.updated", "session_id": "S1", "channel_id": "ch"}},
    ]  # fmt: skip
    tracker.process(sessions, context("sessions"))
    events = [{"timestamp": "2026-11-20T00:00:05Z",
               "req": {"type": "connection.created", "connection_id": "C1", "session_id": "S1",
                       "channel_id": "ch", "client_id": "alice"}}]  # fmt: skip
    tracker.process(events, context("sora_events"))
    session = tracker.entities.get("sora:session:S1")
    assert session is not None and session.last_seen == 1795132860.0 and session.name == "ch"
    assert ("connection", "C1") in live(tracker)
    # connection.jsonl is written when a connection ends: both ends at once
    log_line = {"connection_id": "C1", "session_id": "S1", "channel_id": "ch",
                "created_timestamp": "2026-11-20T00:00:05Z",
                "destroyed_timestamp": "2026-11-20T00:03:00Z"}  # fmt: skip
    tracker.process([log_line], context("connections"))
    assert ("connection", "C1") not in live(tracker)
    tracker.process([{"timestamp": "2026-11-20T00:05:00Z",
                      "req": {"type": "session.destroyed", "session_id": "S1"}}],
                    context("sessions"))  # fmt: skip
    assert ("session", "S1") not in live(tracker)


def test_an_end_before_its_start_is_remembered_and_a_restart_after_it_counts() -> None:
    entities = Entities(None)
    room = Entity("room", "R", "livekit")
    assert entities.apply(Change("end", room, 100.0))  # the end came first (out of order)
    assert not entities.apply(Change("start", Entity("room", "R", "livekit"), 50.0))
    assert entities.live() == []
    assert entities.apply(Change("start", Entity("room", "R", "livekit"), 200.0))  # reused
    assert [e.id for e in entities.live()] == ["R"]


def test_the_api_lists_what_is_live_from_webhooks_as_they_are_stored(tmp_path: Path) -> None:
    settings = {
        "sources": {"lk": {"type": "livekit_webhook", "keys": {KEY: SECRET}}},
        "processors": {"entities": {"type": "entity_tracker"}},
    }
    app = App(tmp_path, **settings).start()
    try:
        for name in ("webhook_room_started.json", "webhook_participant_joined.json"):
            body = (LIVEKIT / name).read_bytes()
            headers = {"authorization": token(body), "content-type": "application/webhook+json"}
            assert app.post("/livekit/webhook", body, **headers).status_code == 200
        session = json.dumps({
            "type": "session.created", "id": "W1", "session_id": "S9",
            "channel_id": "sora-ch", "timestamp": "2026-11-20T00:00:00Z",
        })  # fmt: skip
        assert app.post("/sora/webhooks/session", session.encode()).status_code == 200
        deadline = time.monotonic() + 20
        answer: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = httpx.get(app.url + "/api/entities", timeout=10).json()
            if answer.get("count") == 3:
                break
            time.sleep(0.1)
        kinds = {(e["source"], e["kind"], e["id"]) for e in answer["entities"]}
        assert kinds == {("livekit", "room", "RM_hGqXn6fS9dFx"),
                         ("livekit", "participant", "PA_Xq7kLm2NpQ9r"),
                         ("sora", "session", "S9")}  # fmt: skip
        only = httpx.get(app.url + "/api/entities?source=sora", timeout=10).json()
        assert only["count"] == 1 and only["entities"][0]["started"] == "2026-11-20T00:00:00Z"
        first = httpx.get(app.url + "/api/entities?limit=1", timeout=10).json()
        assert first["count"] == 3 and len(first["entities"]) == 1
        refused = httpx.get(app.url + "/api/entities?limit=0", timeout=10)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_limit"
    finally:
        app.stop()


def test_without_a_tracker_the_api_says_how_to_add_one(tmp_path: Path) -> None:
    app = App(tmp_path).start()
    try:
        answer = httpx.get(app.url + "/api/entities", timeout=10)
        assert answer.status_code == 200 and answer.json()["tracking"] is False
        assert "entity_tracker" in answer.json()["message"] and answer.json()["count"] == 0
    finally:
        app.stop()


def test_a_heartbeat_after_the_end_does_not_reopen() -> None:
    entities = Entities(None)
    entities.apply(Change("start", Entity("room", "R", "livekit"), 10.0))
    entities.apply(Change("end", Entity("room", "R", "livekit"), 20.0))
    assert not entities.apply(Change("alive", Entity("room", "R", "livekit"), 30.0))
    assert entities.live() == []


def test_a_late_event_of_what_ended_and_was_forgotten_changes_nothing(tmp_path: Path) -> None:
    tracker = EntityTracker(tmp_path / "entities.json")
    names = ("webhook_room_started.json", "webhook_participant_joined.json",
             "webhook_participant_left.json", "webhook_room_finished.json")  # fmt: skip
    tracker.process([webhook(n) for n in names], context("livekit_events"))
    now, room = int(time.time()), {"sid": "RM_now", "name": "now"}
    tracker.process([{"event": "room_started", "time": now, "room": room}],
                    context("livekit_events"))  # fmt: skip
    # what ended more than a day before is forgotten: the state stays bounded
    assert tracker.entities.get("livekit:room:RM_hGqXn6fS9dFx") is None
    assert tracker.entities.get("livekit:participant:PA_Xq7kLm2NpQ9r") is None
    # the participant's analytics event, from before it left, comes late
    active = json.loads((LIVEKIT / "analytics_event_participant_active.json").read_text())
    late = [{"message": active, "time": active["timestamp"]}]
    tracker.process(late, context("livekit_analytics_events"))
    assert live(tracker) == {("room", "RM_now")}
    again = EntityTracker(tmp_path / "entities.json")  # also after a restart
    again.process(late, context("livekit_analytics_events"))
    assert live(again) == {("room", "RM_now")}
    # what is newer than the ends forgotten counts
    joined = {"event": "participant_joined", "time": now, "room": room,
              "participant": {"sid": "PA_now", "identity": "now"}}  # fmt: skip
    again.process([joined], context("livekit_events"))
    assert live(again) == {("room", "RM_now"), ("participant", "PA_now")}


def test_an_event_stamped_in_the_future_does_not_make_ends_forgotten_early() -> None:
    tracker = EntityTracker(None)
    now = int(time.time())
    events = [
        {"event": "room_started", "time": now - 3600, "room": {"sid": "RM_a"}},
        {"event": "room_finished", "time": now - 60, "room": {"sid": "RM_a"}},
        {"event": "room_started", "time": now + 365 * 86_400, "room": {"sid": "RM_ahead"}},
    ]  # fmt: skip
    tracker.process(events, context("livekit_events"))
    assert tracker.entities.get("livekit:room:RM_a") is not None  # remembered
    # another room's start, told a little late, is not taken for history
    tracker.process([{"event": "room_started", "time": now - 120, "room": {"sid": "RM_b"}}],
                    context("livekit_events"))  # fmt: skip
    assert live(tracker) == {("room", "RM_ahead"), ("room", "RM_b")}
