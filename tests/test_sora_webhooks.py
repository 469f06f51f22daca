"""Sora's webhooks and statistics push: over a real socket into a real spool, writer and
lake, and back out through the query views."""

from __future__ import annotations

import datetime as dt
import gzip
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import orjson
import pytest
import uvicorn
from starlette.schemas import SchemaGenerator

from rtclake.catalog import default_registry
from rtclake.config import Settings
from rtclake.convert import Converter
from rtclake.integrations.sora.tables import RTC_STATS
from rtclake.integrations.sora.webhooks import SoraWebhooks, stats_lines, webhook_line
from rtclake.service import Service
from rtclake.sources.base import split_lines
from rtclake.spool import Entry, EntryHeader
from rtclake.web.app import create_app
from tests.conftest import FIXTURES, free_port

SORA = FIXTURES / "sora"
MAX_BODY = 256 * 1024
TOKEN = "sora-secret"

SESSION = "/sora/webhooks/session"
EVENT = "/sora/webhooks/event"
AUTH = "/sora/webhooks/auth"
STATS = "/sora/webhooks/stats"
EXPORTER = "/sora/stats-exporter"
STATS_HEADERS = {"sora-stats-webhook-type": "connection.rtc"}
Post = tuple[str, bytes, dict[str, str]]
EXPORTER_HEADERS = {"x-sora-stats-exporter-type": "connection.user-agent"}


class App:
    """The webhook routes around a real :class:`Service`, served by uvicorn in a thread."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.settings = Settings(
            data_dir=data_dir,
            node="test",
            spool={"flush_interval": 0.1, **settings.pop("spool", {})},
            **settings,
        )
        self.service = Service(self.settings)
        webhooks = self.service.source("sora_webhooks")  # on by default
        assert isinstance(webhooks, SoraWebhooks)
        self.webhooks = webhooks
        self.port = free_port()
        app = create_app(self.service)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> App:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the webhook app did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()

    def post(self, path: str, content: bytes, **headers: str) -> httpx.Response:
        return httpx.post(self.url + path, content=content, headers=headers, timeout=30)

    def rows(self, sql: str) -> list[list[Any]]:
        return self.service.query.run(sql).rows()

    def wait_rows(self, sql: str, expected: int, timeout: float = 20.0) -> int:
        """Poll ``sql`` (a single count) until it returns ``expected``; return the last value."""
        deadline = time.monotonic() + timeout
        value = -1
        while time.monotonic() < deadline:
            value = self.rows(sql)[0][0]
            if value == expected:
                return int(value)
            time.sleep(0.1)
        return int(value)

    def rejected(self, reason: str) -> float:
        value = self.service.metrics.registry.get_sample_value(
            "rtclake_records_rejected_total", {"source": "sora_webhook", "reason": reason}
        )
        return value or 0.0

    def received(self) -> float:
        value = self.service.metrics.registry.get_sample_value(
            "rtclake_records_received_total", {"source": "sora_webhook"}
        )
        return value or 0.0


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One app for the module; every test uses its own channel ids."""
    app = App(tmp_path_factory.mktemp("webhooks"), server={"max_body_bytes": MAX_BODY})
    app.start()
    yield app
    app.stop()


# -- bodies ---------------------------------------------------------------------------------


def raw_fields(line: bytes) -> dict[str, msgspec.Raw]:
    return msgspec.json.decode(line, type=dict[str, msgspec.Raw])


def session_bodies() -> list[bytes]:
    """The webhook bodies Sora sent for the lines of session_webhook.jsonl (their ``req``)."""
    lines = (SORA / "session_webhook.jsonl").read_bytes().strip().split(b"\n")
    return [bytes(raw_fields(line)["req"]) for line in lines]


def fixture_reports() -> list[bytes]:
    """The statistics webhook bodies behind rtc_stats.jsonl: one per report id, with the
    stats' raw text kept (so numbers keep Sora's exponent form)."""
    reports: dict[bytes, tuple[dict[str, msgspec.Raw], list[msgspec.Raw]]] = {}
    for line in (SORA / "rtc_stats.jsonl").read_bytes().strip().split(b"\n"):
        fields = raw_fields(line)
        envelope = {k: v for k, v in fields.items() if not k.startswith("rtc_")}
        reports.setdefault(bytes(fields["id"]), (envelope, []))[1].append(fields["rtc_data"])
    return [msgspec.json.encode({**env, "stats": stats}) for env, stats in reports.values()]


def event(channel: str, kind: str = "connection.created", **more: Any) -> dict[str, Any]:
    body = {
        "id": f"EV-{channel}-{kind}",
        "label": "WebRTC SFU Sora",
        "timestamp": "2026-04-17T02:37:00.052434Z",
        "type": kind,
        "version": "2025.2.1",
        "node_name": "sora@127.0.0.1",
        "channel_id": channel,
        "session_id": "MQ8P784NRN54NE6FCQG5JS9WDR",
        "connection_id": "9KSQM7SJV12R1C20T2WTNC8GVW",
        "client_id": "alice",
        "role": "sendrecv",
        "audio": True,
        "video": {"codec_type": "VP9", "bit_rate": 500},
    }
    body.update(more)
    return body


def stat(kind: str, n: int, ts: float = 1_776_393_480_000.5) -> dict[str, Any]:
    """One RTCStats object of ``kind`` with metrics people chart."""
    base: dict[str, Any] = {"id": f"{kind}-{n}", "type": kind, "timestamp": ts}
    if kind == "outbound-rtp":
        base |= {
            "kind": "video",
            "ssrc": 1000 + n,
            "bytesSent": 10_000 * n,
            "packetsSent": 10 * n,
            "framesPerSecond": 29.97,
            "frameWidth": 1280,
            "frameHeight": 720,
            "qualityLimitationReason": "bandwidth",
            "qualityLimitationDurations": {"none": 1.5, "bandwidth": 0.25},
        }
    elif kind == "inbound-rtp":
        base |= {
            "kind": "audio",
            "ssrc": 2000 + n,
            "bytesReceived": 5_000 * n,
            "packetsLost": n,
            "jitter": 0.004,
            "concealedSamples": 12,
            "trackIdentifier": f"SENDER{n}-audio",
        }
    elif kind == "remote-inbound-rtp":
        base |= {"kind": "video", "roundTripTime": 0.031, "fractionLost": 0.01, "packetsLost": 3}
    elif kind == "candidate-pair":
        base |= {
            "state": "succeeded",
            "nominated": True,
            "currentRoundTripTime": 0.012,
            "availableOutgoingBitrate": 2_500_000,
            "priority": 179616219446525440,
        }
    return base


KINDS = ("outbound-rtp", "inbound-rtp", "remote-inbound-rtp", "candidate-pair")


def report(channel: str, n_stats: int = 12, **more: Any) -> dict[str, Any]:
    """A statistics webhook body: Sora's envelope and ``stats``."""
    body = {
        "id": f"REPORT-{channel}",
        "label": "WebRTC SFU Sora",
        "timestamp": "2026-04-17T02:38:00.123456Z",
        "type": "connection.rtc",
        "version": "2025.2.1",
        "node_name": "sora@127.0.0.1",
        "channel_id": channel,
        "session_id": "MQ8P784NRN54NE6FCQG5JS9WDR",
        "client_id": "alice",
        "bundle_id": f"CONN-{channel}",
        "connection_id": f"CONN-{channel}",  # rtc_stats rows are told apart by connection
        "role": "sendrecv",
        "multistream": True,
        "simulcast": False,
        "spotlight": False,
        "stats": [stat(KINDS[i % len(KINDS)], i) for i in range(n_stats)],
    }
    body.update(more)
    return body


def convert(table: str, lines: list[bytes]) -> list[dict[str, Any]]:
    """What the log-file path makes of ``lines`` (the writer's projection)."""
    body = b"\n".join(lines)
    head = EntryHeader(
        table=table,
        source="import",
        stream=table,
        kind=table,
        received_us=1,
        records=len(lines),
        extra=split_lines(body, RTC_STATS).extra if table == "rtc_stats" else None,
    )
    converter = Converter(default_registry())
    try:
        return converter.convert("r", 1, [Entry(head, body, 0)])[table].to_pylist()
    finally:
        converter.close()


# -- session, event and auth webhooks -------------------------------------------------------


SESSION_COLUMNS = (
    "event, event_id, node_name, version, channel_id, session_id, created_at, destroyed_at,"
    " max_connections, total_connections, connections"
)


def test_session_webhooks_become_the_rows_their_log_lines_make(app: App) -> None:
    bodies = session_bodies()
    for body in bodies:
        response = app.post(SESSION, body, **{"content-type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json() == {}
    where = "WHERE stream = 'session_webhook' AND channel_id = 'sora'"
    assert app.wait_rows(f"SELECT count(*) FROM sessions {where}", 2) == 2

    rows = app.rows(
        f"SELECT {SESSION_COLUMNS}, time, source, log_id FROM sessions {where} ORDER BY event"
    )
    created, updated = rows
    assert created[:2] == ["session.created", "6E3PNQ6B5D0YXDRY13N73GNWC4"]
    assert updated[0] == "session.updated"
    assert updated[5] == "MQ8P784NRN54NE6FCQG5JS9WDR"
    assert updated[6] == dt.datetime(2026, 4, 17, 2, 36, 51, 897686, tzinfo=dt.UTC)
    assert updated[8:10] == [3, 3]  # max_connections, total_connections as integers
    assert len(orjson.loads(updated[10])) == 3
    # the webhook's own time, not its arrival: a retry must look the same
    assert updated[11] == dt.datetime(2026, 4, 17, 2, 37, 51, 898363, tzinfo=dt.UTC)
    assert updated[12:] == ["sora_webhook", None]  # no log line id: it came as a webhook

    # The same columns as the lines Sora wrote to session_webhook.jsonl.
    lines = (SORA / "session_webhook.jsonl").read_bytes().strip().split(b"\n")
    names = [c.strip() for c in SESSION_COLUMNS.split(",")]
    logged = sorted(([r[n] for n in names] for r in convert("sessions", lines)), key=str)
    assert sorted((r[: len(names)] for r in rows), key=str) == logged


def test_event_webhook_is_stored_in_sora_events(app: App) -> None:
    body = event("ev-room", recording={"file": "a.webm"})
    response = app.post(EVENT, orjson.dumps(body))
    assert response.status_code == 200 and response.json() == {}
    sql = "SELECT count(*) FROM sora_events WHERE channel_id = 'ev-room'"
    assert app.wait_rows(sql, 1) == 1
    [row] = app.rows(
        "SELECT event, connection_id, client_id, node_name, session_id, stream, time, extra"
        " FROM sora_events WHERE channel_id = 'ev-room'"
    )
    assert row[:6] == [
        "connection.created",
        "9KSQM7SJV12R1C20T2WTNC8GVW",
        "alice",
        "sora@127.0.0.1",
        "MQ8P784NRN54NE6FCQG5JS9WDR",
        "event_webhook",
    ]
    assert row[6] == dt.datetime(2026, 4, 17, 2, 37, 0, 52434, tzinfo=dt.UTC)
    # Nothing is dropped: what no column takes stays in extra, under req as Sora logs it.
    extra = row[7]
    assert extra["req"]["recording"] == {"file": "a.webm"}
    assert extra["req"]["video"] == {"codec_type": "VP9", "bit_rate": 500}


def test_auth_webhook_is_recorded_and_never_granted(app: App) -> None:
    body = event("auth-room")
    del body["type"]  # an auth webhook has no event type
    response = app.post(AUTH, orjson.dumps(body))
    assert response.status_code == 200
    answer = response.json()
    assert answer["allowed"] is False and "auth server" in answer["reason"]

    # An auth server forwarding its request and its own answer, as auth_webhook.jsonl has it.
    forwarded = {
        "id": "LOG-auth-room",
        "timestamp": "2026-04-17T02:37:00.1Z",
        "req": {**body, "id": "AUTH-2", "client_id": "bob"},
        "res": {"allowed": True, "metadata": {"plan": "pro"}},
    }
    assert app.post(AUTH, orjson.dumps(forwarded)).status_code == 200

    sql = "SELECT count(*) FROM sora_events WHERE channel_id = 'auth-room'"
    assert app.wait_rows(sql, 2) == 2
    rows = app.rows(
        "SELECT client_id, stream, log_id, response FROM sora_events"
        " WHERE channel_id = 'auth-room' ORDER BY client_id"
    )
    assert rows[0][:3] == ["alice", "auth_webhook", None]
    assert rows[0][3] is None
    assert rows[1][:3] == ["bob", "auth_webhook", "LOG-auth-room"]
    assert orjson.loads(rows[1][3]) == {"allowed": True, "metadata": {"plan": "pro"}}


def test_a_log_shaped_body_without_an_id_of_its_own_is_stored_on_every_route(app: App) -> None:
    # ({id?, timestamp, req, res?}: the id is optional. Without it every route had
    # answered 500: the req's id was read from a Raw, not bytes)
    bodies = {
        AUTH: {"timestamp": "2026-04-17T02:38:00Z", "res": {"allowed": True},
               "req": {"id": "NOID-auth", "channel_id": "noid-room", "client_id": "a"}},
        EVENT: {"timestamp": "2026-04-17T02:38:01Z",
                "req": {"id": "NOID-event", "type": "connection.created",
                        "channel_id": "noid-room", "client_id": "b"}},
    }  # fmt: skip
    for path, body in bodies.items():
        for _ in range(2):  # its req's id is its identity: a retry stores nothing
            response = app.post(path, orjson.dumps(body))
            assert response.status_code == 200, (path, response.text)
    sql = "SELECT count(*) FROM sora_events WHERE channel_id = 'noid-room'"
    assert app.wait_rows(sql, 2) == 2
    time.sleep(1.0)
    assert app.rows(sql)[0][0] == 2


def test_wrapped_webhook_takes_its_identity_from_the_body_not_the_arrival() -> None:
    sessions = default_registry()["sessions"]
    body = session_bodies()[0]
    first = webhook_line(body, sessions)
    again = webhook_line(body, sessions)
    assert first == again  # a retry arriving later is the same line with the same key
    assert first.idem == "6E3PNQ6B5D0YXDRY13N73GNWC4"
    line = orjson.loads(first.records.body)
    assert line == {"timestamp": "2026-04-17T02:36:51.902710Z", "req": orjson.loads(body)}

    pretty = b'{\n  "type": "session.created",\n  "session_id": "S"\n}\n'
    timeless = webhook_line(pretty, sessions)
    assert timeless.idem is None  # timed at its arrival by the converter, not in the line
    assert timeless.records.body == b'{"req":{"type":"session.created","session_id":"S"}}'
    assert webhook_line(pretty, sessions).records.body == timeless.records.body

    logged = (SORA / "session_webhook.jsonl").read_bytes().split(b"\n")[0]
    as_logged = webhook_line(logged, sessions)
    assert as_logged.records.body == logged  # already {id, timestamp, req}: kept as sent
    assert as_logged.idem == "3KW71BRXGN0953C30NK7669BR8"


# -- statistics webhook and legacy exporter -------------------------------------------------


def test_stats_webhook_stores_each_stat_as_its_rtc_stats_jsonl_line(app: App) -> None:
    reports = fixture_reports()
    assert len(reports) == 2
    for body in reports:
        response = app.post(STATS, body, **STATS_HEADERS)
        assert response.status_code == 200, response.text

    # Exploded, the reports are the log file's lines byte for byte ...
    lines = (SORA / "rtc_stats.jsonl").read_bytes().strip().split(b"\n")
    exploded = [stats_lines(r, RTC_STATS, MAX_BODY).records.body for r in reports]
    assert sorted(b"\n".join(exploded).split(b"\n")) == sorted(lines)

    # ... so they get the record ids the log file's lines get: one row whichever came.
    sql = "SELECT count(*) FROM rtc_stats WHERE channel_id = 'sora'"
    assert app.wait_rows(sql, 3) == 3
    stored = app.rows(
        "SELECT record_id, stats_type, stream, source FROM rtc_stats WHERE channel_id = 'sora'"
    )
    logged = {r["record_id"]: r["stats_type"] for r in convert("rtc_stats", lines)}
    assert {r[0]: r[1] for r in stored} == logged
    assert {tuple(r[2:]) for r in stored} == {("stats_webhook", "sora_webhook")}


def test_stats_webhook_report_becomes_one_typed_row_per_stat(app: App) -> None:
    body = report("stats-room", n_stats=40)
    response = app.post(STATS, orjson.dumps(body), **STATS_HEADERS)
    assert response.status_code == 200 and response.json() == {}

    where = "WHERE channel_id = 'stats-room'"
    assert app.wait_rows(f"SELECT count(*) FROM rtc_stats {where}", 40) == 40
    rows = app.rows(
        "SELECT stats_type, count(*), count(DISTINCT stats_id), min(report_id),"
        f" min(time), min(rtc_timestamp), bool_and(multistream) FROM rtc_stats {where}"
        " GROUP BY 1 ORDER BY 1"
    )
    assert [r[:3] for r in rows] == [
        ["candidate-pair", 10, 10],
        ["inbound-rtp", 10, 10],
        ["outbound-rtp", 10, 10],
        ["remote-inbound-rtp", 10, 10],
    ]
    for row in rows:
        assert row[3] == "REPORT-stats-room"
        assert row[4] == dt.datetime(2026, 4, 17, 2, 38, 0, 123456, tzinfo=dt.UTC)
        assert row[5] == dt.datetime(2026, 4, 17, 2, 38, 0, 500, tzinfo=dt.UTC)
        assert row[6] is True

    [out] = app.rows(
        "SELECT bytes_sent, packets_sent, frames_per_second, frame_width,"
        " quality_limitation_reason, quality_limitation_durations, media_kind, ssrc"
        f" FROM rtc_stats {where} AND stats_id = 'outbound-rtp-4'"
    )
    assert out[:5] == [40_000, 40, 29.97, 1280, "bandwidth"]
    assert orjson.loads(out[5]) == {"none": 1.5, "bandwidth": 0.25}
    assert out[6:] == ["video", 1004]
    [inbound] = app.rows(
        "SELECT bytes_received, packets_lost, jitter, track_identifier, extra"
        f" FROM rtc_stats {where} AND stats_id = 'inbound-rtp-5'"
    )
    assert inbound == [25_000, 5, 0.004, "SENDER5-audio", None]
    [pair] = app.rows(
        "SELECT current_round_trip_time, available_outgoing_bitrate, nominated, priority"
        f" FROM rtc_stats {where} AND stats_id = 'candidate-pair-7'"
    )
    assert pair == [0.012, 2_500_000.0, True, 179616219446525440]
    [remote] = app.rows(
        f"SELECT round_trip_time, fraction_lost FROM rtc_stats {where}"
        " AND stats_type = 'remote-inbound-rtp' AND stats_id = 'remote-inbound-rtp-2'"
    )
    assert remote == [0.031, 0.01]


def test_legacy_exporter_answers_204_and_stores_rows(app: App) -> None:
    body = report("exporter-room", n_stats=8, type="connection.user-agent")
    body["stats"].append({**stat("codec", 99), "mimeType": "audio/opus", "clockRate": 48000})
    response = app.post(
        EXPORTER,
        gzip.compress(orjson.dumps(body)),
        **{"content-encoding": "gzip", **EXPORTER_HEADERS},
    )
    assert response.status_code == 204, response.text
    assert response.content == b""

    where = "WHERE channel_id = 'exporter-room'"
    assert app.wait_rows(f"SELECT count(*) FROM rtc_stats {where}", 9) == 9
    [row] = app.rows(
        "SELECT type, stream, mime_type, clock_rate, multistream FROM rtc_stats"
        f" {where} AND stats_type = 'codec'"
    )
    assert row == ["connection.user-agent", "stats_exporter", "audio/opus", 48000, True]


def test_empty_report_is_acknowledged_without_storing(app: App) -> None:
    before = app.received()
    response = app.post(STATS, orjson.dumps(report("empty-room", n_stats=0)), **STATS_HEADERS)
    assert response.status_code == 200
    response = app.post(EXPORTER, orjson.dumps(report("empty-room", n_stats=0)), **EXPORTER_HEADERS)
    assert response.status_code == 204
    assert app.received() == before


# -- retries --------------------------------------------------------------------------------


def _second_look(app: App, con: Any, table: str, sql: str, channel: str) -> dict[str, Any]:
    """What the lake holds of ``channel`` a moment later: the rows of each listed file
    (``sql`` counts them in the files given), and through the view."""
    time.sleep(1)
    files = app.service.query.lake_files(app.service.tables[table])
    per_file = {f: con.execute(sql, [f]).fetchone() for f in files}
    view = app.rows(f"SELECT count(*) FROM {table} WHERE channel_id = '{channel}'")
    return {"per_file": per_file, "view": view}


def stored_once(app: App, channel: str, posts: list[Post], counts: dict[str, int]) -> None:
    """Deliver ``posts`` twice at once, then a third time in a later batch: ``counts`` rows
    of ``channel`` per table each time."""

    def deliver() -> None:
        for path, body, headers in posts:
            response = app.post(path, body, **headers)
            assert response.status_code in (200, 204), (path, response.text)

    deliver()
    deliver()  # at once: most likely the same batch, where the writer drops the copy
    for table, n in counts.items():
        sql = f"SELECT count(*) FROM {table} WHERE channel_id = '{channel}'"
        assert app.wait_rows(sql, n) == n, table

    deliver()  # the first copies are stored, so these go into later batches
    marker = orjson.dumps(report(f"{channel}-marker", n_stats=1))
    assert app.post(STATS, marker, **STATS_HEADERS).status_code == 200
    sql = f"SELECT count(*) FROM rtc_stats WHERE channel_id = '{channel}-marker'"
    assert app.wait_rows(sql, 1) == 1
    con = app.service.query.connect(read_only=False)
    try:
        for table, n in counts.items():
            sql = f"SELECT count(*) FROM {table} WHERE channel_id = '{channel}'"
            assert app.rows(sql) == [[n]], table
            # The lake's files hold each record once: the later copies were not stored
            # (the views do not de-duplicate).
            files = app.service.query.lake_files(app.service.tables[table])
            assert files, (table, app.service.query.snapshot())
            sql = f"SELECT count(*) FROM read_parquet(?) WHERE channel_id = '{channel}'"
            got = con.execute(sql, [files]).fetchone()
            # (seen once, 2026-12-04, beside a maintenance run: 2 rows of 3 in the listed
            # files while the view had counted 3; not reproduced since: the failure says
            # what a second look finds)
            assert got == (n,), (table, got, files, _second_look(app, con, table, sql, channel))
    finally:
        con.close()


def test_session_and_stats_webhooks_delivered_twice_are_stored_once(app: App) -> None:
    identified = session_bodies()[1].replace(b'"channel_id":"sora"', b'"channel_id":"retry"')
    identified = identified.replace(b"VYY1X7Y8S16ZVCQ4M091WTS6VM", b"RETRY1")  # its own id
    timed = orjson.dumps(
        {"type": "session.destroyed", "channel_id": "retry", "timestamp": "2026-04-17T02:40:00Z"}
    )
    posts: list[Post] = [
        (SESSION, identified, {}),  # the id identifies it
        (SESSION, timed, {}),  # no id: the content, with its own time, identifies it
        (STATS, orjson.dumps(report("retry", n_stats=6)), STATS_HEADERS),
        (EXPORTER, orjson.dumps(report("retry", n_stats=3)), EXPORTER_HEADERS),
    ]
    stored_once(app, "retry", posts, {"sessions": 2, "rtc_stats": 6})


def test_event_webhooks_delivered_twice_are_stored_once(app: App) -> None:
    timed = orjson.dumps(
        {"type": "recording.started", "channel_id": "retry-ev", "timestamp": "2026-04-17T02:40:00Z"}
    )
    identified = orjson.dumps(
        {"id": "EV-no-time", "type": "connection.updated", "channel_id": "retry-ev"}
    )
    posts: list[Post] = [(EVENT, timed, {}), (EVENT, identified, {}), (AUTH, identified, {})]
    # the auth copy has the event's id but is another stream: a record of its own
    stored_once(app, "retry-ev", posts, {"sora_events": 3})


# -- refused input --------------------------------------------------------------------------


def _bad_stat_report(index: int, bad: Any) -> bytes:
    body = report("bad-room", n_stats=5)
    body["stats"][index] = bad
    return orjson.dumps(body)


def _deep() -> bytes:
    return b'{"channel_id": "bad-room", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


class Bad(NamedTuple):
    path: str
    body: bytes
    error: str
    status: int = 400
    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated
    index: int | None = None


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


BAD_REPORT = orjson.dumps(report("bad-room"))
GZIP = {"content-encoding": "gzip"}
BAD: dict[str, Bad] = {
    "session-empty": Bad(SESSION, b"", "empty"),
    "session-not-json": Bad(SESSION, b'{"type": "session.created",', "bad_json"),
    "session-array": Bad(SESSION, b'[{"type": "session.created"}]', "invalid_record"),
    "session-two-objects": Bad(SESSION, b'{"a": 1}\n{"a": 2}', "bad_json"),
    "session-bad-type": Bad(
        SESSION, orjson.dumps(event("bad-room", max_connections="3")), "invalid_record"
    ),
    "session-bad-time": Bad(
        SESSION, orjson.dumps(event("bad-room", timestamp=[1])), "invalid_record"
    ),
    "event-not-utf8": Bad(EVENT, b'{"channel_id": "bad-room", "x": "\xff"}', "invalid_utf8"),
    "event-too-deep": Bad(EVENT, _deep(), "too_deep"),
    "event-bad-gzip": Bad(EVENT, b"\x1f\x8bnot gzip", "bad_gzip", headers=GZIP),
    "event-brotli": Bad(EVENT, b"{}", "bad_encoding", 415, {"content-encoding": "br"}),
    "event-too-large": Bad(
        EVENT, orjson.dumps(event("bad-room", pad="x" * MAX_BODY)), "too_large", 413
    ),
    "event-gzip-bomb": Bad(
        EVENT, gzip.compress(b'{"pad": "' + b"x" * 4 * MAX_BODY + b'"}'), "too_large", 413, GZIP
    ),
    "auth-scalar": Bad(AUTH, b"42", "invalid_record"),
    "stats-no-header": Bad(STATS, BAD_REPORT, "missing_stats_type"),
    "stats-other-header": Bad(
        STATS,
        BAD_REPORT,
        "unknown_stats_type",
        headers={"sora-stats-webhook-type": "connection.user-agent"},
    ),
    "stats-exporter-header": Bad(STATS, BAD_REPORT, "missing_stats_type", headers=EXPORTER_HEADERS),
    "stats-null-stats": Bad(
        STATS,
        orjson.dumps({**report("bad-room"), "stats": None}),
        "invalid_record",
        headers=STATS_HEADERS,
    ),
    "stats-no-stats": Bad(
        STATS,
        orjson.dumps(_without(report("bad-room"), "stats")),
        "missing_field",
        headers=STATS_HEADERS,
    ),
    "stats-no-connection": Bad(
        STATS,
        orjson.dumps(_without(report("bad-room"), "connection_id")),
        "missing_field",
        headers=STATS_HEADERS,
    ),
    "stats-bad-envelope": Bad(
        STATS,
        orjson.dumps(report("bad-room", simulcast="no")),
        "invalid_record",
        headers=STATS_HEADERS,
    ),
    "stats-bad-metric": Bad(
        STATS,
        _bad_stat_report(3, {**stat("outbound-rtp", 3), "bytesSent": "lots"}),
        "invalid_stat",
        headers=STATS_HEADERS,
        index=3,
    ),
    "stats-stat-no-id": Bad(
        STATS,
        _bad_stat_report(2, {"type": "codec", "timestamp": 1.0}),
        "invalid_stat",
        headers=STATS_HEADERS,
        index=2,
    ),
    "stats-stat-number-id": Bad(
        STATS,
        _bad_stat_report(1, {**stat("codec", 1), "id": 7}),
        "invalid_stat",
        headers=STATS_HEADERS,
        index=1,
    ),
    "stats-stat-text-time": Bad(
        STATS,
        _bad_stat_report(4, {**stat("codec", 4), "timestamp": "yesterday"}),
        "invalid_stat",
        headers=STATS_HEADERS,
        index=4,
    ),
    "stats-stat-negative-time": Bad(
        STATS,
        _bad_stat_report(0, {**stat("codec", 0), "timestamp": -5}),
        "invalid_stat",
        headers=STATS_HEADERS,
        index=0,
    ),
    "stats-stat-scalar": Bad(
        STATS, _bad_stat_report(4, "inbound-rtp"), "invalid_stat", headers=STATS_HEADERS, index=4
    ),
    "exporter-no-header": Bad(EXPORTER, BAD_REPORT, "missing_stats_type"),
    "exporter-erlang-vm": Bad(
        EXPORTER,
        BAD_REPORT,
        "unknown_stats_type",
        headers={"x-sora-stats-exporter-type": "node.erlang-vm"},
    ),
    "exporter-webhook-header": Bad(
        EXPORTER, BAD_REPORT, "missing_stats_type", headers=STATS_HEADERS
    ),
    "exporter-bad-metric": Bad(
        EXPORTER,
        _bad_stat_report(1, {**stat("inbound-rtp", 1), "jitter": "high"}),
        "invalid_stat",
        headers=EXPORTER_HEADERS,
        index=1,
    ),
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_bad_input_is_refused_with_a_reason(app: App, bad: Bad) -> None:
    before = app.rejected(bad.error)
    response = app.post(bad.path, bad.body, **bad.headers)
    assert response.status_code == bad.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["error"] == bad.error, answer
    assert isinstance(answer["message"], str) and answer["message"]
    assert answer.get("index") == bad.index
    if bad.index is not None:
        assert answer["message"].startswith(f"stats[{bad.index}]: ")
    assert app.rejected(bad.error) == before + 1


@pytest.mark.parametrize(
    ("path", "headers"), [(SESSION, {}), (EVENT, {}), (AUTH, {}), (STATS, STATS_HEADERS)]
)
def test_a_lone_surrogate_is_named_as_such_not_as_truncation(
    app: App, path: str, headers: dict[str, str]
) -> None:
    """As /ingest names it: msgspec reports a lone surrogate as truncated input."""
    before = app.rejected("bad_json")
    body = b'{"id":"U1","type":"x","channel_id":"\\ud800"}'
    response = app.post(path, body, **headers)
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_json",
        "message": "invalid JSON: the string escape \\ud800 at byte 36 is a lone UTF-16"
        " surrogate (a high surrogate must be followed by a low one, \\udc00-\\udfff)",
        "line": 1,
    }
    assert app.rejected("bad_json") == before + 1


def test_refusal_messages_name_the_key_as_sent(app: App) -> None:
    body = orjson.dumps(event("bad-room", max_connections="3"))
    message = app.post(SESSION, body).json()["message"]
    assert "`$.max_connections`" in message and "req" not in message
    bad = _bad_stat_report(3, {**stat("outbound-rtp", 3), "bytesSent": "lots"})
    message = app.post(STATS, bad, **STATS_HEADERS).json()["message"]
    assert "`$.stats[3].bytesSent`" in message, message
    bad = _bad_stat_report(0, {**stat("codec", 0), "timestamp": -5})
    message = app.post(STATS, bad, **STATS_HEADERS).json()["message"]
    assert "`$.stats[0].timestamp`" in message, message


def test_nothing_of_a_refused_request_is_stored(app: App) -> None:
    for bad in BAD.values():
        assert app.post(bad.path, bad.body, **bad.headers).status_code == bad.status
    # A good request after them: once it is visible, anything of the bad ones would be,
    # since the writer stores batches in order.
    good = report("bad-room-after", n_stats=2)
    assert app.post(STATS, orjson.dumps(good), **STATS_HEADERS).status_code == 200
    sql = "SELECT count(*) FROM rtc_stats WHERE channel_id = 'bad-room-after'"
    assert app.wait_rows(sql, 2) == 2
    for table in ("sessions", "sora_events", "rtc_stats"):
        sql = f"SELECT count(*) FROM {table} WHERE channel_id = 'bad-room'"
        sql += " OR extra::VARCHAR LIKE '%bad-room%'"
        assert app.rows(sql) == [[0]], table


# -- token, spool full, API docs ------------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[App]:
    app = App(tmp_path, server={"ingest_token": TOKEN})
    app.start()
    yield app
    app.stop()


ROUTES = [
    (SESSION, {}),
    (EVENT, {}),
    (AUTH, {}),
    (STATS, STATS_HEADERS),
    (EXPORTER, EXPORTER_HEADERS),
]


def test_every_route_requires_the_token_when_one_is_set(guarded: App) -> None:
    body = orjson.dumps(report("token-room", n_stats=1))
    for path, headers in ROUTES:
        for auth in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            response = guarded.post(path, body, **headers, **auth)
            assert response.status_code == 401, (path, auth)
            assert response.json()["error"] == "unauthorized"
    assert guarded.rejected("unauthorized") == 15
    for path, headers in ROUTES:
        response = guarded.post(path, body, **headers, authorization=f"Bearer {TOKEN}")
        assert response.status_code in (200, 204), (path, response.text)
    assert guarded.wait_rows("SELECT count(*) FROM sessions", 1) == 1
    assert guarded.wait_rows("SELECT count(*) FROM sora_events", 2) == 2
    # the two statistics routes sent the same report: one row
    assert guarded.wait_rows("SELECT count(*) FROM rtc_stats", 1) == 1


def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    # The writer drains nothing within the test (flush interval), so the spool fills up.
    app = App(tmp_path, spool={"max_bytes": 8192, "flush_interval": 3600}).start()
    try:
        first = app.post(STATS, orjson.dumps(report("full-room", n_stats=4)), **STATS_HEADERS)
        assert first.status_code == 200, first.text
        answers = [
            app.post(STATS, orjson.dumps(report("full-room", n_stats=4)), **STATS_HEADERS)
            for _ in range(40)
        ]
        response = next(a for a in answers if a.status_code != 200)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "spool_full"
        assert int(response.headers["Retry-After"]) >= 1
        assert app.rejected("spool_full") >= 1
    finally:
        app.stop()


def test_body_larger_than_the_whole_spool_answers_413_not_503(tmp_path: Path) -> None:
    # No retry could make room for it: 503 would send an obedient client round forever.
    app = App(tmp_path, spool={"max_bytes": 4096}).start()
    try:
        response = app.post(STATS, orjson.dumps(report("full-room", n_stats=40)), **STATS_HEADERS)
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "too_large"
        assert "spool.max_bytes" in response.json()["message"]
        small = orjson.dumps(event("full-room"))
        assert app.post(EVENT, small).status_code == 200  # and it goes on serving
    finally:
        app.stop()


def test_routes_document_themselves_for_openapi(app: App) -> None:
    schema = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "t", "version": "0"}})
    paths = schema.get_schema(app.webhooks.routes())["paths"]
    assert sorted(paths) == sorted(path for path, _ in ROUTES)
    for path, spec in paths.items():
        post = spec["post"]
        codes = {str(code) for code in post["responses"]}
        assert post["summary"], path
        assert codes & {"200", "204"} and {"400", "401", "413", "503"} <= codes, path


def test_rtclake_run_serves_the_webhooks(make_server: Any) -> None:
    server = make_server()
    line = orjson.loads((SORA / "session_webhook.jsonl").read_bytes().splitlines()[0])
    response = httpx.post(server.url + "/sora/webhooks/session", json=line["req"])
    assert response.status_code == 200
    assert server.wait_rows("SELECT count(*) FROM sessions WHERE source = 'sora_webhook'", 1) == 1
