"""LiveKit's signed webhooks: verified on the raw bytes before parsing (401 with a reason
otherwise), stored in livekit_events once per event id, over a real socket, spool, writer
and lake."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from rtclake.errors import ConfigError
from rtclake.integrations.livekit.keys import SignatureError, body_hash, load_keys, verify
from tests.conftest import FIXTURES
from tests.test_sora_webhooks import App

LIVEKIT = FIXTURES / "livekit"
KEY, SECRET = "APIdevkey", "a-secret-long-enough-for-hs256-000000000000"
PATH = "/livekit/webhook"


def token(body: bytes, *, key: str = KEY, secret: str = SECRET, **claims: Any) -> str:
    """The Authorization header LiveKit's notifier sends for ``body``."""
    now = int(time.time())
    payload = {"iss": key, "nbf": now, "exp": now + 300, "sha256": body_hash(body), **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    sources = {"lk": {"type": "livekit_webhook", "keys": {KEY: SECRET}}}
    app = App(tmp_path_factory.mktemp("livekit"), sources=sources)
    app.start()
    yield app
    app.stop()


def post(app: App, body: bytes, authorization: str | None) -> Any:
    headers = {"content-type": "application/webhook+json"}
    if authorization is not None:
        headers["authorization"] = authorization
    return app.post(PATH, body, **headers)


def test_the_body_hash_is_standard_padded_base64_of_sha256() -> None:
    body = b'{"event":"room_started"}'
    expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert body_hash(body) == expected and expected.endswith("=")


def test_only_a_valid_webhook_is_stored_the_rest_get_401_with_a_reason(app: App) -> None:
    body = (LIVEKIT / "webhook_participant_joined.json").read_bytes()
    now = int(time.time())
    refused = {
        "unsigned": None,
        "body_hash_mismatch": token(body.replace(b"Alice", b"Mallory")),  # body changed after
        "unknown_key": token(body, key="APIother"),
        "bad_signature": token(body, secret="not-the-secret-of-this-key-0000000000000"),
        "expired": token(body, nbf=now - 900, exp=now - 600),
        "not_yet_valid": token(body, nbf=now + 600, exp=now + 900),
        "no_body_hash": token(body, sha256=None),
        "bad_token": "not.a.jwt",
    }
    for reason, header in refused.items():
        answer = post(app, body, header)
        assert answer.status_code == 401, (reason, answer.text)
        assert answer.json()["error"] == reason, answer.json()
        assert answer.json()["message"]
    ok = post(app, body, token(body))
    assert ok.status_code == 200 and ok.json() == {}
    sql = "SELECT count(*) FROM livekit_events WHERE event_id = 'EV_9dQwR2tY6uIo'"
    assert app.wait_rows(sql, 1) == 1
    # a "Bearer " prefix is tolerated; a redelivery (same id) is stored once
    assert post(app, body, "Bearer " + token(body)).status_code == 200
    time.sleep(0.5)
    assert app.rows(sql) == [[1]]


def test_every_fixture_event_lands_with_typed_ids(app: App) -> None:
    ids = []
    for path in sorted(LIVEKIT.glob("webhook_*.json")):
        body = path.read_bytes()
        assert post(app, body, token(body)).status_code == 200, path.name
        ids.append(path.name)
    assert app.wait_rows("SELECT count(DISTINCT event_id) FROM livekit_events", 6) == 6
    rows = app.rows(
        "SELECT event, room_sid, room_name, participant_sid, participant_identity, track_sid,"
        " track_type, egress_id, egress_status, api_key, epoch(time)::BIGINT, num_participants"
        " FROM livekit_events ORDER BY time"
    )
    by_event = {row[0]: row[1:] for row in rows}
    assert by_event["room_started"][:2] == ["RM_hGqXn6fS9dFx", "TestRoom"]
    joined = by_event["participant_joined"]
    assert joined[2:4] == ["PA_Xq7kLm2NpQ9r", "TestParticipant1"] and joined[10] == 1
    assert joined[9] == 1718093125  # createdAt, not the arrival time
    assert by_event["track_published"][4] is not None and by_event["track_published"][5]
    egress = by_event["egress_ended"]
    assert egress[0] == "RM_hGqXn6fS9dFx"  # egressInfo.roomId
    assert egress[6:8] == ["EG_k2P9wR4tYc7a", "EGRESS_COMPLETE"]
    assert {row[9] for row in rows} == {KEY}
    # what has no column stays in extra, nothing dropped
    (extra,) = app.rows(
        "SELECT extra->>'$.egressInfo.fileResults[0].size' FROM livekit_events"
        " WHERE event = 'egress_ended'"
    )[0]
    assert extra == "24871234"


def test_a_signed_body_that_is_not_an_event_is_refused_with_400(app: App) -> None:
    for body, reason in ((b'{"id": "EV_x"}', "missing_field"), (b"[1, 2]", "invalid_record"),
                         (b'{"event": "room_started"}', "missing_field")):  # fmt: skip
        answer = post(app, body, token(body))
        assert answer.status_code == 400 and answer.json()["error"] == reason, answer.text


def test_keys_come_from_the_key_file_the_environment_and_the_configuration(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "keys.yaml"
    file_secret, config_secret, env_secret = ("f" * 32, "c" * 32, "e" * 32)
    key_file.write_text(f"APIfile: {file_secret}\nAPIboth: {file_secret}\n")
    env = {"LIVEKIT_API_KEY": "APIenv", "LIVEKIT_API_SECRET": env_secret}
    keys = load_keys({"APIboth": config_secret}, key_file, env)
    assert keys == {"APIfile": file_secret, "APIboth": config_secret, "APIenv": env_secret}
    body = b"{}"
    assert verify(token(body, key="APIenv", secret=env_secret), body, keys, 10) == "APIenv"
    with pytest.raises(SignatureError):  # the configuration's secret wins over the file's
        verify(token(body, key="APIboth", secret=file_secret), body, keys, 10)
    key_file.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="key file"):
        load_keys({}, key_file, {})


def test_a_source_without_any_key_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIVEKIT_API_KEY", raising=False)
    monkeypatch.delenv("LIVEKIT_API_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"sources\.lk: no LiveKit API key"):
        App(tmp_path, sources={"lk": {"type": "livekit_webhook"}})
    # `rtclake run`: one line and exit 2, as any configuration it refuses (no traceback)
    (tmp_path / "c.yaml").write_text("sources: {lk: {type: livekit_webhook}}\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RTCLAKE_", "LIVEKIT_"))}
    out = subprocess.run(
        [sys.executable, "-m", "rtclake", "run", "-c", str(tmp_path / "c.yaml"), "--port", "0"],
        env={**base, "RTCLAKE_DATA_DIR": str(tmp_path / "data")}, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "error: sources.lk: no LiveKit API key" in out.stderr
    assert "Traceback" not in out.stderr and "ValueError" not in out.stderr


def test_the_clock_tolerance_accepts_a_token_a_few_seconds_early(tmp_path: Path) -> None:
    body = b"{}"
    now = int(time.time())
    early = token(body, nbf=now + 5, exp=now + 300)
    assert verify(early, body, {KEY: SECRET}, 10) == KEY
    with pytest.raises(SignatureError, match="not valid yet"):
        verify(early, body, {KEY: SECRET}, 0)


def test_every_event_type_of_the_brief_lands_with_its_ids(app: App) -> None:
    room = {"sid": "RM_all", "name": "all-events"}
    participant = {"sid": "PA_all", "identity": "bob", "state": "DISCONNECTED"}
    track = {"sid": "TR_all", "type": "VIDEO", "source": "CAMERA", "mimeType": "video/VP8"}
    egress = {"egressId": "EG_all", "roomId": "RM_all", "status": "EGRESS_ACTIVE"}
    ingress = {
        "ingressId": "IN_all",
        "roomName": "all-events",
        "participantIdentity": "streamer",
        "state": {"status": "ENDPOINT_PUBLISHING", "roomId": "RM_all"},
    }
    bodies = {
        "room_started": {"room": room},
        "room_finished": {"room": room},
        "participant_joined": {"room": room, "participant": participant},
        "participant_left": {"room": room, "participant": participant},
        "participant_connection_aborted": {"room": room, "participant": participant},
        "track_published": {"room": room, "participant": participant, "track": track},
        "track_unpublished": {"room": room, "participant": participant, "track": track},
        "egress_started": {"egressInfo": egress},
        "egress_updated": {"egressInfo": egress},
        "egress_ended": {"egressInfo": {**egress, "status": "EGRESS_FAILED", "error": "disk"}},
        "ingress_started": {"ingressInfo": ingress},
        "ingress_ended": {"ingressInfo": ingress},
    }
    for n, (event, fields) in enumerate(bodies.items()):
        body = orjson.dumps(
            {"event": event, "id": f"EV_all_{n}", "createdAt": str(1_800_000_000 + n), **fields}
        )
        assert post(app, body, token(body)).status_code == 200, event
    sql = "SELECT count(*) FROM livekit_events WHERE event_id LIKE 'EV_all_%'"
    assert app.wait_rows(sql, len(bodies)) == len(bodies)
    rows = {
        row[0]: row[1:]
        for row in app.rows(
            "SELECT event, room_sid, participant_sid, track_sid, egress_id, ingress_id,"
            " ingress_status, egress_error, room_name FROM livekit_events"
            " WHERE event_id LIKE 'EV_all_%'"
        )
    }
    assert set(rows) == set(bodies)
    assert rows["participant_connection_aborted"][:2] == ["RM_all", "PA_all"]
    assert rows["track_unpublished"][2] == "TR_all"
    assert rows["egress_updated"][:4] == ["RM_all", None, None, "EG_all"]
    assert rows["egress_ended"][6] == "disk"
    assert rows["ingress_ended"][4:6] == ["IN_all", "ENDPOINT_PUBLISHING"]
    assert rows["ingress_ended"][0] == "RM_all"  # IngressInfo.state.roomId
    assert rows["ingress_started"][7] == "all-events"


def test_zero_values_that_protojson_omits_land_in_their_columns(app: App) -> None:
    # (LiveKit's notifier omits a field at its zero value: an audio track has no "type",
    # EGRESS_STARTING no "status", an empty room no "numParticipants"; each had been NULL)
    audio = {"sid": "TR_zero", "source": "MICROPHONE", "mimeType": "audio/opus"}
    bodies = {
        "EV_zero_track": {"event": "track_published", "participant": {"sid": "PA_zero"},
                          "room": {"sid": "RM_zero", "name": "zero"}, "track": audio},
        "EV_zero_room": {"event": "room_finished", "room": {"sid": "RM_zero", "name": "zero"}},
        "EV_zero_egress": {"event": "egress_started",
                           "egressInfo": {"egressId": "EG_zero", "roomId": "RM_zero"}},
        # not a WebhookEvent (numDropped is a number): stored as it was sent
        "EV_zero_odd": {"event": "room_finished", "room": {"sid": "RM_zero"},
                        "numDropped": "many"},
    }  # fmt: skip
    for n, (event_id, fields) in enumerate(bodies.items()):
        body = orjson.dumps({**fields, "id": event_id, "createdAt": str(1_800_000_100 + n)})
        assert post(app, body, token(body)).status_code == 200, event_id
    sql = "SELECT count(*) FROM livekit_events WHERE event_id LIKE 'EV_zero_%'"
    assert app.wait_rows(sql, 4) == 4
    rows = app.rows(
        "SELECT event_id, track_type, track_source, participant_state, num_participants,"
        " egress_status FROM livekit_events WHERE event_id LIKE 'EV_zero_%' ORDER BY event_id"
    )
    assert rows == [
        ["EV_zero_egress", None, None, None, None, "EGRESS_STARTING"],
        ["EV_zero_odd", None, None, None, None, None],
        ["EV_zero_room", None, None, None, 0, None],
        ["EV_zero_track", "AUDIO", "MICROPHONE", "JOINING", 0, None],
    ]


def test_an_audio_track_gains_its_type_and_keeps_the_rest_as_sent(app: App) -> None:
    sent = orjson.loads((LIVEKIT / "webhook_track_published.json").read_bytes())
    del sent["track"]["type"]  # as LiveKit sends an audio track
    sent["id"] = "EV_audio_fx"
    body = orjson.dumps(sent)
    assert post(app, body, token(body)).status_code == 200
    sql = "SELECT count(*) FROM livekit_events WHERE event_id = 'EV_audio_fx'"
    assert app.wait_rows(sql, 1) == 1
    ((track_type, participants, extra),) = app.rows(
        "SELECT track_type, num_participants, extra FROM livekit_events"
        " WHERE event_id = 'EV_audio_fx'"
    )
    assert (track_type, participants) == ("AUDIO", 0)
    # what was sent is kept as sent; a number no column reads is not added
    assert extra["track"]["layers"] == sent["track"]["layers"]
    assert extra["track"]["width"] == 1280 and "emptyTimeout" not in extra.get("room", {})


def test_the_route_documents_itself_for_openapi(app: App) -> None:
    # (the shared refusals had been appended at the depth of the 401's second line:
    # /openapi.json answered 500 once a livekit_webhook source was configured)
    import httpx

    answer = httpx.get(f"http://127.0.0.1:{app.port}/openapi.json", timeout=30)
    assert answer.status_code == 200, answer.text
    responses = answer.json()["paths"][PATH]["post"]["responses"]
    assert {"200", "401", "413", "503", "507"} <= set(responses)
    assert "Not signed by a configured key" in responses["401"]["description"]


def test_the_start_names_the_source_as_configured(app: App) -> None:
    # (the "rtclake started" line had named it livekit_webhook, its type, not lk)
    assert "lk" in app.service.source_names
    assert "livekit_webhook" not in app.service.source_names
    assert app.service.source_names.index("lk") == [s.name for s in app.service.sources].index(
        "livekit_webhook"
    )


def test_a_rooms_life_from_webhooks_shows_on_its_session_and_connection_pages(
    app: App,
) -> None:
    # (the pages had read Sora's session and connection logs only: a finished LiveKit
    # room showed as live, a participant who left as connected)
    import httpx

    def event(name: str, created: int, **more: Any) -> bytes:
        room = {"sid": "RM_life0001", "name": "LifeRoom", "creationTime": "1718093120"}
        body = {"event": name, "room": room, "id": f"EV_life_{name}", "createdAt": str(created)}
        return orjson.dumps({**body, **more})

    alice = {"sid": "PA_life_alice", "identity": "alice", "state": "ACTIVE"}
    bob = {"sid": "PA_life_bob", "identity": "bob"}
    gone = {**alice, "state": "DISCONNECTED", "disconnectReason": "CLIENT_INITIATED"}
    bodies = [
        event("room_started", 1718093120),
        event("participant_joined", 1718093125, participant=alice),
        event("participant_connection_aborted", 1718093300, participant=bob),
        event("participant_left", 1718093400, participant=gone),
        event("room_finished", 1718093700),
    ]  # fmt: skip
    for body in bodies:
        assert post(app, body, token(body)).status_code == 200
    assert app.wait_rows(
        "SELECT count(*) FROM livekit_events WHERE room_sid = 'RM_life0001'", 5) == 5  # fmt: skip

    url = f"http://127.0.0.1:{app.port}/api/dashboard"
    page = httpx.get(f"{url}/sessions/RM_life0001", timeout=30).json()
    session = page["session"]
    assert session["channel_id"] == "LifeRoom"
    assert session["created_at"].startswith("2024-06-11T08:05:20")  # room_started
    assert session["destroyed_at"].startswith("2024-06-11T08:15:00")  # room_finished
    who = {p["connection_id"]: p for p in page["participants"]}
    assert who["PA_life_alice"]["joined"].startswith("2024-06-11T08:05:25")
    assert who["PA_life_alice"]["left_at"].startswith("2024-06-11T08:10:00")
    assert who["PA_life_alice"]["reason"] == "CLIENT_INITIATED"
    assert who["PA_life_alice"]["client_id"] == "alice"
    assert who["PA_life_bob"]["left_at"].startswith("2024-06-11T08:08:20")
    assert who["PA_life_bob"]["reason"] == "CONNECTION_ABORTED"
    connection = httpx.get(f"{url}/connections/PA_life_alice", timeout=30).json()
    assert connection["connection"]["left_at"].startswith("2024-06-11T08:10:00")


def test_a_gzipped_body_is_refused_saying_it_is_gzip(app: App) -> None:
    # (it had been "body is not valid UTF-8 at byte 1")
    import gzip

    body = gzip.compress((LIVEKIT / "webhook_room_started.json").read_bytes())
    response = post(app, body, token(body))
    assert response.status_code == 400
    assert "body is gzip data, not JSON text" in response.json()["message"]


def test_a_created_at_that_is_not_a_time_is_refused_not_timed_at_its_arrival(app: App) -> None:
    # (it had been stored under its arrival time, createdAt left in extra)
    for n, created in enumerate(['"yesterday"', '"99999999999999999999"', '"-5"', "true"]):
        body = b'{"event": "room_started", "id": "EV_bad_time_%d", "createdAt": %s}' % (
            n,
            created.encode(),
        )
        response = post(app, body, token(body))
        assert response.status_code == 400, (created, response.text)
        assert "is not a time" in response.json()["message"]
    assert app.rows("SELECT count(*) FROM livekit_events WHERE event_id LIKE 'EV_bad_time_%'") == [
        [0]
    ]
