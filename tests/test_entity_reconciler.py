"""The entity tracker's reconciler: a stand-in for LiveKit's RoomService API; a room and a
participant that vanish from it without an end event get exactly one synthetic end event
each (in the next round, stamped with their last sign of life); none when the real end
event comes in between; none again after a restart; and a Sora session whose heartbeats
stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rtclake.entities import Entity, EntityTracker
from tests.conftest import FIXTURES, free_port, wait_for
from tests.test_livekit_webhooks import KEY, SECRET, token
from tests.test_sora_webhooks import App

LIVEKIT = FIXTURES / "livekit"
ROOM, PARTICIPANT = "RM_hGqXn6fS9dFx", "PA_Xq7kLm2NpQ9r"


class RoomService:
    """LiveKit's RoomService over Twirp (ListRooms, ListParticipants), checking the
    token's signature and grants; ``rooms`` maps a room's name to its sid and its
    participants' sids."""

    def __init__(self) -> None:
        self.rooms: dict[str, tuple[str, set[str]]] = {}
        self.calls = 0
        self.port = free_port()
        app = Starlette(routes=[
            Route("/twirp/livekit.RoomService/ListRooms", self.list_rooms, methods=["POST"]),
            Route("/twirp/livekit.RoomService/ListParticipants", self.list_participants,
                  methods=["POST"]),
        ])  # fmt: skip
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _grant(self, request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization", "")
        claims = jwt.decode(header.removeprefix("Bearer "), SECRET, algorithms=["HS256"])
        assert claims["iss"] == KEY
        return dict(claims["video"])

    async def list_rooms(self, request: Request) -> JSONResponse:
        self.calls += 1
        assert self._grant(request).get("roomList") is True
        rooms = [{"sid": sid, "name": name} for name, (sid, _) in self.rooms.items()]
        return JSONResponse({"rooms": rooms})

    async def list_participants(self, request: Request) -> JSONResponse:
        name = (await request.json())["room"]
        grant = self._grant(request)
        assert grant.get("roomAdmin") is True and grant.get("room") == name
        if name not in self.rooms:
            return JSONResponse({"code": "not_found", "msg": "room not found"}, 404)
        return JSONResponse({"participants": [{"sid": s} for s in sorted(self.rooms[name][1])]})

    def start(self) -> RoomService:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def livekit() -> Iterator[RoomService]:
    service = RoomService().start()
    yield service
    service.stop()


def settings(livekit: RoomService) -> dict[str, Any]:
    return {
        "sources": {"lk": {"type": "livekit_webhook", "keys": {KEY: SECRET}}},
        "processors": {"entities": {
            "type": "entity_tracker", "livekit_url": livekit.url, "livekit_api_key": KEY,
            "livekit_api_secret": SECRET, "reconcile_interval": 3600,
            "sora_session_timeout": 120,
        }},
    }  # fmt: skip


def tracker_of(app: App) -> EntityTracker:
    assert app.service.chain is not None
    (tracker,) = [p for p in app.service.chain.processors if isinstance(p, EntityTracker)]
    return tracker


def round_of(app: App, now: float | None = None) -> list[str]:
    """One reconciler round, on the service's loop; the keys of what it closed."""
    tracker = tracker_of(app)
    assert tracker.loop is not None
    done = asyncio.run_coroutine_threadsafe(tracker.reconcile(now), tracker.loop).result(20)
    return [e.key for e in done]


def send(app: App, body: dict[str, Any] | bytes) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"authorization": token(raw), "content-type": "application/webhook+json"}
    assert app.post("/livekit/webhook", raw, **headers).status_code == 200


def wait_live(app: App, key: str, live: bool) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        entity = tracker_of(app).entities.get(key)
        if entity is not None and entity.live == live:
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} never became {'live' if live else 'ended'}")


def synthetic(app: App) -> list[list[Any]]:
    app.service.writer  # noqa: B018 - the writer stores what the reconciler took
    return app.rows(
        "SELECT event, participant_sid, room_sid, epoch(time)::BIGINT FROM livekit_events"
        " WHERE synthetic ORDER BY event"
    )


def test_vanished_room_and_participant_get_one_synthetic_end_each(
    tmp_path: Path, livekit: RoomService
) -> None:
    livekit.rooms["TestRoom"] = (ROOM, {PARTICIPANT, "PA_second"})
    app = App(tmp_path, **settings(livekit)).start()
    try:
        send(app, (LIVEKIT / "webhook_room_started.json").read_bytes())
        send(app, (LIVEKIT / "webhook_participant_joined.json").read_bytes())
        second = {"event": "participant_joined", "id": "EV_second", "createdAt": "1718093130",
                  "room": {"sid": ROOM, "name": "TestRoom"},
                  "participant": {"sid": "PA_second", "identity": "bob"}}  # fmt: skip
        send(app, second)
        wait_live(app, f"livekit:participant:{PARTICIPANT}", True)
        wait_live(app, "livekit:participant:PA_second", True)
        assert round_of(app) == [] and livekit.calls == 1  # all there
        # both participants vanish from LiveKit; the second one's real end comes late
        livekit.rooms["TestRoom"] = (ROOM, set())
        assert round_of(app) == []  # round one: suspected only
        send(app, {**second, "event": "participant_left", "id": "EV_second_left",
                   "createdAt": "1718093200"})  # fmt: skip
        wait_live(app, "livekit:participant:PA_second", False)
        assert round_of(app) == [f"livekit:participant:{PARTICIPANT}"]  # round two: closed
        assert round_of(app) == []  # and only once
        # the room vanishes
        del livekit.rooms["TestRoom"]
        assert round_of(app) == []
        assert round_of(app) == [f"livekit:room:{ROOM}"]
        assert app.wait_rows("SELECT count(*) FROM livekit_events WHERE synthetic", 2) == 2
        rows = synthetic(app)
        # stamped with the last sign of life: the join's createdAt, the room's last event
        assert rows == [["participant_left", PARTICIPANT, ROOM, 1718093125],
                        ["room_finished", None, ROOM, 1718093200]]  # fmt: skip
    finally:
        app.stop()
    # after a restart the state remembers: nothing is written again
    again = App(tmp_path, **settings(livekit)).start()
    try:
        assert round_of(again) == [] and round_of(again) == []
        time.sleep(0.5)
        assert again.rows("SELECT count(*) FROM livekit_events WHERE synthetic") == [[2]]
        assert again.rows(
            "SELECT count(*) FROM livekit_events WHERE event_id = 'EV_second_left'"
        ) == [[1]]
    finally:
        again.stop()


def test_a_sora_session_without_heartbeats_is_closed(tmp_path: Path, livekit: RoomService) -> None:
    app = App(tmp_path, **settings(livekit)).start()
    try:
        last = dt.datetime(2026, 11, 20, 0, 0, tzinfo=dt.UTC)
        for kind, at in (("session.created", last - dt.timedelta(minutes=5)),
                         ("session.updated", last)):  # fmt: skip
            body = {"type": kind, "id": f"W-{kind}", "session_id": "S1", "channel_id": "ch",
                    "timestamp": at.isoformat().replace("+00:00", "Z")}  # fmt: skip
            assert app.post("/sora/webhooks/session", json.dumps(body).encode()).status_code == 200
        wait_live(app, "sora:session:S1", True)
        # the heartbeat is applied as the writer stores it: wait for it, not only the start
        session = lambda: tracker_of(app).entities.get("sora:session:S1")  # noqa: E731
        assert wait_for(lambda: (e := session()) is not None and e.last_seen == last.timestamp())
        fresh = last.timestamp() + 60  # a heartbeat a minute ago: alive
        assert round_of(app, fresh) == [] and round_of(app, fresh) == []
        stale = last.timestamp() + 600
        assert round_of(app, stale) == []
        assert round_of(app, stale + 60) == ["sora:session:S1"]
        assert app.wait_rows("SELECT count(*) FROM sessions WHERE synthetic", 1) == 1
        (row,) = app.rows(
            "SELECT event, session_id, epoch(time)::BIGINT FROM sessions WHERE synthetic"
        )
        assert row == ["session.destroyed", "S1", int(last.timestamp())]
    finally:
        app.stop()


def test_an_unconfigured_tracker_runs_no_reconciler(tmp_path: Path) -> None:
    app = App(tmp_path, processors={"entities": {"type": "entity_tracker"}}).start()
    try:
        assert app.service._background == []
        assert isinstance(tracker_of(app).entities.live(), list)
        assert Entity("room", "x", "livekit").key == "livekit:room:x"
    finally:
        app.stop()


def test_what_a_vanished_room_had_ends_with_it(tmp_path: Path, livekit: RoomService) -> None:
    livekit.rooms["TestRoom"] = (ROOM, {PARTICIPANT})
    app = App(tmp_path, **settings(livekit)).start()
    try:
        for name in ("webhook_room_started.json", "webhook_participant_joined.json",
                     "webhook_track_published.json"):  # fmt: skip
            send(app, (LIVEKIT / name).read_bytes())
        send(app, {"event": "egress_started", "id": "EV_egress", "createdAt": "1718093200",
                   "egressInfo": {"egressId": "EG_room", "roomId": ROOM,
                                  "roomName": "TestRoom"}})  # fmt: skip
        track, egress = "livekit:track:TR_VCa8hB3kPz5w", "livekit:egress:EG_room"
        wait_live(app, track, True)
        wait_live(app, egress, True)
        # the room vanishes from LiveKit with all it had; no end event comes
        del livekit.rooms["TestRoom"]
        assert round_of(app) == []
        closed = round_of(app)
        assert sorted(closed) == [f"livekit:participant:{PARTICIPANT}", f"livekit:room:{ROOM}"]
        # the room's last sign of life was the egress's start: its track and egress end then
        assert tracker_of(app).entities.live() == []
        for key in (track, egress):
            entity = tracker_of(app).entities.get(key)
            assert entity is not None and entity.ended == 1718093200, key
    finally:
        app.stop()
