"""The WebSocket source: a frame is a record, acknowledged on the socket once durable, with
a broker's reply; against a running server."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from rtclake.testing import RunningServer

CONFIG = """
sources:
  ws: {{type: websocket}}
processors:
  echo:
    type: broker
    handler: "ws_brokers:echo"
    path: {brokers}
    match: {{source: ws, content_type: "application/octet-stream"}}
  temp:
    type: broker
    handler: "ws_brokers:temp"
    path: {brokers}
    match: {{source: ws, stream: "sensors"}}
"""

BROKERS = """
def echo(message, ctx):
    return message.payload.upper()


def temp(message, ctx):
    if message.data and "temp" in message.data:
        return {"seen": message.data["temp"]}
    return None
"""


@pytest.fixture
def ws_server(tmp_path: Path) -> Any:
    brokers = tmp_path / "brokers"
    brokers.mkdir()
    (brokers / "ws_brokers.py").write_text(BROKERS)
    config = tmp_path / "rtclake.yaml"
    config.write_text(CONFIG.format(brokers=brokers))
    data = tmp_path / "data"
    data.mkdir()
    server = RunningServer(
        data, env={"RTCLAKE_CONFIG": str(config), "RTCLAKE_SERVER__INGEST_TOKEN": "s3cret"}
    ).start()
    yield server
    server.stop()


def ws_url(server: RunningServer, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def test_each_frame_is_acknowledged_once_durable_with_a_brokers_reply(ws_server: Any) -> None:
    headers = {"Authorization": "Bearer s3cret"}
    with connect(ws_url(ws_server, "/ws/sensors"), additional_headers=headers) as ws:
        ws.send('{"device_id": "w1", "temp": 22.5}')
        ws.send("plain words")
        ws.send(b"\x00\x01bin")
        ws.send('{"device_id": "w1", "time": "yesterday"}')  # refused: not a time
        ws.send('{"device_id": "w2", "temp": 23}')
        answers = [orjson.loads(ws.recv(timeout=20)) for _ in range(5)]
    assert [a.get("ack") for a in answers] == [1, 2, 3, None, 5]
    assert answers[0]["reply"] == {"seen": 22.5} and answers[4]["reply"] == {"seen": 23}
    assert "reply" not in answers[1]
    assert answers[2]["reply"] == {
        "base64": base64.b64encode(b"\x00\x01BIN").decode(),
        "content_type": "application/octet-stream",
    }
    assert answers[3]["frame"] == 4 and answers[3]["error"] == "invalid_record"
    assert "time" in answers[3]["message"]
    ws_server.wait_rows("SELECT count(*) FROM telemetry WHERE source = 'ws'", 4)
    rows = ws_server.query(
        "SELECT record_id, device_id, content_type, payload IS NULL, stream FROM telemetry"
        " WHERE source = 'ws'"
    )["rows"]
    by_id = {r[0]: r[1:] for r in rows}
    assert by_id[answers[0]["record_id"]] == ["w1", None, True, "sensors"]
    assert by_id[answers[1]["record_id"]] == [None, "text/plain; charset=utf-8", False, "sensors"]
    assert by_id[answers[2]["record_id"]][:3] == [None, "application/octet-stream", False]
    record_id = answers[2]["record_id"]
    assert all(c in "0123456789abcdef" for c in record_id)
    (payload,) = ws_server.query(
        f"SELECT hex(payload) FROM telemetry WHERE record_id = '{record_id}'"
    )["rows"][0]
    assert payload == b"\x00\x01bin".hex().upper()


def test_a_socket_without_the_token_is_refused_and_the_query_token_works(ws_server: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(ws_server, "/ws/sensors"))
    assert refused.value.response.status_code == 403
    with connect(ws_url(ws_server, "/ws/other?token=s3cret")) as ws:
        ws.send('{"n": 1}')
        assert orjson.loads(ws.recv(timeout=20))["ack"] == 1
    with pytest.raises(InvalidStatus):
        connect(ws_url(ws_server, "/ws/bad%20stream?token=s3cret"))


def test_a_token_beyond_ascii_works_as_a_header_and_as_the_query_token(tmp_path: Path) -> None:
    from urllib.parse import quote

    token = "sécret-トークン"
    data = tmp_path / "data"
    data.mkdir()
    env = {"RTCLAKE_SOURCES__WS__TYPE": "websocket", "RTCLAKE_SERVER__INGEST_TOKEN": token}
    server = RunningServer(data, env=env).start()
    try:
        header = {"Authorization": "Bearer " + token.encode().decode("latin-1")}
        for url, headers in (
            (ws_url(server, "/ws/s"), header),  # the token's UTF-8 bytes in the header
            (ws_url(server, f"/ws/s?token={quote(token)}"), None),  # percent-encoded UTF-8
        ):
            with connect(url, additional_headers=headers) as ws:
                ws.send('{"n": 1}')
                assert orjson.loads(ws.recv(timeout=20))["ack"] == 1
        with pytest.raises(InvalidStatus):
            connect(ws_url(server, f"/ws/s?token={quote(token[:-1])}"))
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"path": "/iot"}, "sources.ws: a path without {stream} needs `stream`"),
        ({"path": "iot/{stream}"}, "sources.ws.path: 'iot/{stream}' must start with '/'"),
        ({"path": "/iot", "stream": "bad stream"}, "sources.ws.stream: stream name"),
    ],
)
def test_a_websocket_source_that_could_not_serve_is_a_configuration_error(
    tmp_path: Path, settings: dict[str, str], says: str
) -> None:
    from rtclake.config import load_settings
    from rtclake.errors import ConfigError
    from rtclake.service import Service

    env = {"RTCLAKE_SOURCES__WS__TYPE": "websocket", "RTCLAKE_DATA_DIR": str(tmp_path)}
    env |= {f"RTCLAKE_SOURCES__WS__{k.upper()}": v for k, v in settings.items()}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with pytest.raises(ConfigError, match=re.escape(says)):
            Service(load_settings())


def test_a_max_frame_bytes_above_16_mib_lets_such_frames_through(tmp_path: Path) -> None:
    """uvicorn closes a socket on a frame above its ws_max_size (16 MiB by default): the
    server is told the source's limit."""
    data = tmp_path / "data"
    data.mkdir()
    env = {"RTCLAKE_SOURCES__WS__TYPE": "websocket",
           "RTCLAKE_SOURCES__WS__MAX_FRAME_BYTES": str(24 << 20)}  # fmt: skip
    server = RunningServer(data, env=env).start()
    try:
        with connect(ws_url(server, "/ws/big"), max_size=None) as ws:
            ws.send('{"x": "' + "y" * (20 << 20) + '"}')
            assert orjson.loads(ws.recv(timeout=30))["ack"] == 1
            ws.send(b"z" * ((24 << 20) + 1))  # beyond the source's limit: 1009
            with pytest.raises(ConnectionClosedError) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        server.stop()
