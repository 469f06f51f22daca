"""The influxdb sink: line protocol (escaping, types), against Debian's InfluxDB 1.6
started by the test (v1 ``/write``: a replay writes the same points, refused lines are
found by splitting and dead-lettered, an outage waits in the spool), against a stand-in
that checks v2's request shape and token, and the example broker's points."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pyarrow as pa
import pytest

from rtclake.catalog import default_registry
from rtclake.config import Settings
from rtclake.convert import Converter
from rtclake.errors import ConfigError, SinkError
from rtclake.service import Service
from rtclake.sinks.base import Batch, Rejected
from rtclake.sinks.influxdb import (
    InfluxDBConfig,
    InfluxDBSink,
    Unwritable,
    field_value,
    line,
    outbox_point,
)
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import OUTBOX
from rtclake.testing import HttpReceiver, free_port, wait_for
from tests.conftest import FIXTURES
from tests.test_redis_sink import BEYOND_FLOATS
from tests.test_sora_webhooks import App

INFLUXD = shutil.which("influxd")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "brokers"
needs_influxd = pytest.mark.skipif(
    INFLUXD is None,
    reason="influxd is not installed (Debian's influxdb package; scripts/test-deps.sh"
    " installs it for make test)",
)


class Influxd:
    """Debian's ``influxd`` (1.x) in a folder of its own, on loopback ports of its own:
    data, meta and WAL under ``root``, reporting and self-monitoring off."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        assert INFLUXD is not None
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "influxdb.conf"
        self.config.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{root / "meta"}"
[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
""")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Influxd:
        assert INFLUXD is not None
        log = (self.root / "influxd.log").open("ab")
        self.proc = subprocess.Popen(
            [INFLUXD, "run", "-config", str(self.config)], stdout=log, stderr=log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited: {(self.root / 'influxd.log').read_text()}")
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 204:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("influxd did not answer /ping")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def query(self, statement: str, database: str) -> list[dict[str, Any]]:
        """The series of an InfluxQL query (times in nanoseconds)."""
        answer = httpx.post(self.url + "/query", data={"q": statement, "db": database,
                                                       "epoch": "ns"}, timeout=10)  # fmt: skip
        answer.raise_for_status()
        [result] = answer.json()["results"]
        assert "error" not in result, result
        return list(result.get("series", []))

    def points(self, database: str, measurement: str) -> list[dict[str, Any]]:
        """Every point of ``measurement``, each a dict of its columns (tags and fields)."""
        name = measurement.replace("\\", "\\\\").replace('"', '\\"')
        out = []
        for series in self.query(f'SELECT * FROM "{name}"', database):
            out += [dict(zip(series["columns"], row, strict=True)) for row in series["values"]]
        return out

    def count(self, database: str, measurement: str) -> int:
        try:
            return len(self.points(database, measurement))
        except (AssertionError, httpx.HTTPError):
            return -1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    if INFLUXD is None:
        pytest.skip(needs_influxd.kwargs["reason"])
    made = Influxd(tmp_path_factory.mktemp("influxd")).start()
    yield made
    made.stop()


_databases = iter(range(1_000_000))


@pytest.fixture
def database() -> str:
    return f"t{next(_databases)}"


def convert(table: str, body: bytes, segment: int = 1, stream: str = "s") -> Batch:
    head = EntryHeader(table=table, source="http", stream=stream, kind=table,
                       received_us=1_763_899_200_000_000,
                       records=body.count(b"\n") + 1)  # fmt: skip
    converter = Converter(default_registry())
    try:
        return Batch(
            "node", "sp", segment, converter.convert("sp", segment, [Entry(head, body, 0)])
        )
    finally:
        converter.close()


def readings(n: int, device: str = "d") -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02d.123456Z", "device_id": "%s%d", "temp": %d,'
        b' "env": {"hum": 40.5}, "unit": "C"}' % (i, device.encode(), i, 20 + i)
        for i in range(n)
    )


def sink(url: str, **settings: Any) -> InfluxDBSink:
    made = InfluxDBSink(InfluxDBConfig(type="influxdb", url=url, **settings),
                        default_registry(), "influx")  # fmt: skip
    made.start()
    return made


# -- line protocol


def test_line_protocol_escapes_each_part_by_its_own_rules() -> None:
    fields = {"f k,=": field_value('say "hi" \\o/'), "n": field_value(3), "x": field_value(0.5),
              "ok": field_value(True)}  # fmt: skip
    got = line("m,x y=z", {"t=a": "v,1 2=3", "b": "tab\there"}, fields, 5)
    assert got == (
        r"m\,x\ y=z,b=tab" + "\t" + r'here,t\=a=v\,1\ 2\=3 f\ k\,\=="say \"hi\" \\o/",n=3i,'
        "x=0.5,ok=true 5"
    )
    assert field_value(float("nan")) is None and field_value(float("inf")) is None
    assert field_value(None) is None and field_value([1]) is None
    assert field_value(21, floats=True) == "21.0" and field_value(10**400, floats=True) is None
    assert field_value(True, floats=True) == "true"
    assert field_value(2**70) == repr(float(2**70)) and field_value(-(2**63)) == f"{-(2**63)}i"
    for bad in ("ends\\", "a\\ b", 'x\\"y', "line\nbreak"):
        with pytest.raises(Unwritable):
            line("m", {"t": bad}, {"f": "1i"}, 1)
    with pytest.raises(Unwritable, match="comment"):
        line("#m", {}, {"f": "1i"}, 1)
    assert line("m", {"t": "", "u": "a\\b"}, {"f": "1i"}, 1) == "m,u=a\\b f=1i 1"


def test_an_outbox_point_keeps_the_brokers_types() -> None:
    point = {"measurement": "env", "tags": {"device_id": "s1", "floor": 3},
             "fields": {"temp": 20, "ok": True, "note": "fine", "skip": None}}  # fmt: skip
    assert outbox_point(point, 7) == 'env,device_id=s1,floor=3 temp=20.0,ok=true,note="fine" 7'
    assert outbox_point(point, 7, json_floats=False).startswith("env,device_id=s1,floor=3 temp=20i")
    for bad in ({"fields": {"t": 1}}, {"measurement": "m", "fields": {"t": None}}, [1]):
        with pytest.raises(Unwritable):
            outbox_point(bad, 1)


def test_default_points_of_telemetry_and_rtc_stats() -> None:
    writer = InfluxDBSink(InfluxDBConfig(type="influxdb"), default_registry(), "influx")
    lines, refused = writer.lines(convert("telemetry", readings(2)))
    assert refused == {}
    first = lines["telemetry"][0]
    assert first == (
        0, "telemetry,device_id=d0,source=http,stream=s temp=20.0,env_hum=40.5"
        " 1795132800123456000",
    )  # fmt: skip
    stats = (FIXTURES / "sora" / "rtc_stats.jsonl").read_bytes().strip()
    lines, refused = writer.lines(convert("rtc_stats", stats))
    assert refused == {} and len(lines["rtc_stats"]) == 3
    head, fields, ns = lines["rtc_stats"][0][1].split(" ")
    assert head.startswith("rtc_stats,channel_id=sora,") and "stats_type=inbound-rtp" in head
    assert "connection_id=FJB24N65RS1D3CRXMVC4Y32FCM" in head and "media_kind=audio" in head
    values = dict(part.split("=") for part in fields.split(","))
    assert values["packets_received"] == "1i" and values["jitter"] == "0.0"
    assert values["ssrc"] == "3802399598i" and "mid" not in values  # text is not a field
    assert int(ns) == int(dt.datetime(2025, 7, 25, 6, 6, 56, 93265, tzinfo=dt.UTC).timestamp()
                          * 1_000_000) * 1000  # fmt: skip


def test_numbers_beyond_a_float_are_not_fields_and_their_rows_are_written() -> None:
    writer = InfluxDBSink(InfluxDBConfig(type="influxdb"), default_registry(), "influx")
    body = BEYOND_FLOATS.replace(b'"big": 1e400', b'"big": 1e400, "temp": 20')
    lines, refused = writer.lines(convert("telemetry", body))
    assert refused == {}  # nothing to refuse: a number as NaN or infinity is not written
    [(index, text)] = lines["telemetry"]
    assert index == 0 and text.startswith("telemetry,device_id=h2,source=http,stream=s temp=20.0 ")
    point = b'{"_sinks": ["influx"], "measurement": "m", "fields": {"a": 1e400, "b": 2}}'
    lines, refused = writer.lines(convert("outbox", point))
    assert refused == {} and lines["outbox"][0][1].startswith("m b=2.0 ")


def test_points_mapped_in_the_configuration() -> None:
    points = {"telemetry": {"measurement": "{stream}", "tags": ["device_id", "unit"],
                            "fields": ["temp", "unit"], "extra_fields": False}}  # fmt: skip
    writer = InfluxDBSink(InfluxDBConfig(type="influxdb", points=points), default_registry(),
                          "influx")  # fmt: skip
    lines, _ = writer.lines(convert("telemetry", readings(1), stream="sensors a"))
    assert lines["telemetry"][0][1] == (
        'sensors\\ a,device_id=d0,unit=C temp=20.0,unit="C" 1795132800123456000'
    )


def test_configuration_mistakes_are_refused_naming_their_key(tmp_path: Path) -> None:
    def build(**config: Any) -> None:
        settings = Settings(data_dir=tmp_path, node="t",
                            sinks={"influx": {"type": "influxdb", **config}})  # fmt: skip
        Service(settings)

    with pytest.raises(ConfigError, match=r"sinks.influx.tables: unknown tables \['telemetri'\]"):
        build(tables=["telemetri"])
    with pytest.raises(ConfigError, match="version 2 needs bucket"):
        build(version=2, org="o", token="t")
    with pytest.raises(ConfigError, match=r"sinks\.influx\.points: empty tag key"):
        build(points={"telemetry": {"tags": [""]}})
    with pytest.raises(ConfigError, match="starts with '#'"):
        build(points={"rtc_stats": {"measurement": "#stats"}})
    assert InfluxDBConfig(type="influxdb", url="influx:8086").url == "http://influx:8086"
    assert InfluxDBConfig(type="influxdb", bucket="b").api == 2


def test_v1_requests_name_database_and_retention_policy_with_basic_auth() -> None:
    with HttpReceiver() as receiver:
        writer = sink(receiver.url, database="db 1", retention_policy="week",
                      username="u", password="p@ss")  # fmt: skip
        writer.write(convert("telemetry", readings(1)))
        create, write = receiver.requests
        assert create.path == "/query" and parse_qs(create.body.decode()) == {
            "q": ['CREATE DATABASE "db 1"']
        }
        assert write.path == "/write?db=db+1&precision=ns&rp=week"
        assert write.headers["authorization"] == "Basic " + base64.b64encode(b"u:p@ss").decode()
        assert write.headers["content-type"] == "text/plain; charset=utf-8"
        assert write.body.startswith(b"telemetry,device_id=d0,")
        writer.close()


# -- InfluxDB 1.6, started here


@needs_influxd
def test_a_replayed_batch_writes_the_same_points(server: Influxd, database: str) -> None:
    writer = sink(server.url, database=database, max_lines=3)
    made = convert("telemetry", readings(7))
    writer.write(made)
    writer.write(made)  # the writer delivers at least once: a replay
    writer.write(convert("telemetry", readings(7), segment=2))  # the same records again
    points = server.points(database, "telemetry")
    assert len(points) == 7
    assert points[3] == {"time": 1795132803123456000, "device_id": "d3", "source": "http",
                         "stream": "s", "temp": 23.0, "env_hum": 40.5}  # fmt: skip
    stats = (FIXTURES / "sora" / "rtc_stats.jsonl").read_bytes().strip()
    writer.write(convert("rtc_stats", stats))
    writer.write(convert("rtc_stats", stats))
    rows = server.points(database, "rtc_stats")
    assert len(rows) == 3 and {r["stats_type"] for r in rows} >= {"inbound-rtp"}
    writer.close()


@needs_influxd
def test_what_is_written_reads_back_as_it_was(server: Influxd, database: str) -> None:
    nasty = 'a,b c=d "quoted" back\\slash \\\\x tab\t日本'
    record = {"time": "2026-11-20T00:00:00Z", "device_id": nasty, "topic": "x=y, z",
              "big": 2**70, "neg": -3, "tiny": 1e-300, "text": nasty}  # fmt: skip
    points = {"telemetry": {"measurement": "m {stream},x", "tags": ["device_id", "topic"],
                            "fields": ["text"]}}  # fmt: skip
    writer = sink(server.url, database=database, points=points, json_integers="integer")
    writer.write(convert("telemetry", json.dumps(record).encode(), stream="a b"))
    [point] = server.points(database, "m a b,x")
    assert point["device_id"] == nasty and point["topic"] == "x=y, z" and point["text"] == nasty
    assert (point["big"], point["neg"], point["tiny"]) == (float(2**70), -3, 1e-300)
    writer.close()


@needs_influxd
def test_a_refused_line_is_found_and_dead_lettered_and_the_rest_written(
    server: Influxd, database: str
) -> None:
    points = {"telemetry": {"fields": ["temp"], "extra_fields": False}}
    writer = sink(server.url, database=database, points=points)
    body = b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "d%d", "temp": %s}'
        % (i, i, b'"hot"' if i == 5 else b"%d.5" % i)
        for i in range(9)
    )
    with pytest.raises(Rejected) as refused:
        writer.write(convert("telemetry", body))
    [(index, reason)] = refused.value.rows["telemetry"]
    assert (
        index == 5
        and "field type conflict" in reason
        and reason.startswith("influxdb answered 400")
    )
    assert server.count(database, "telemetry") == 8
    # a row line protocol cannot carry: refused without a request
    with pytest.raises(Rejected) as unwritable:
        writer.write(convert("telemetry", b'{"device_id": "ends\\\\", "temp": 1.5}', segment=2))
    assert unwritable.value.rows["telemetry"][0][1].startswith("influxdb: not written: tag value")
    writer.close()


@needs_influxd
def test_a_missing_database_is_created_or_waited_for(server: Influxd, database: str) -> None:
    writer = sink(server.url, database=database, create_database=False)
    with pytest.raises(SinkError, match=re.escape('404: {"error":"database not found')):
        writer.write(convert("telemetry", readings(1)))
    writer.close()
    writer = sink(server.url, database=database)  # creates it
    writer.write(convert("telemetry", readings(1)))
    assert server.count(database, "telemetry") == 1


def test_no_answer_is_an_outage() -> None:
    writer = sink(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(SinkError, match="ConnectError"):
        writer.write(convert("telemetry", readings(1)))


@needs_influxd
def test_behind_the_writer_an_outage_loses_nothing_and_refusals_are_dead_letters(
    tmp_path: Path,
) -> None:
    influx = Influxd(tmp_path / "influxd")  # not running yet: InfluxDB is down
    points = {"telemetry": {"fields": ["temp"], "extra_fields": False}}
    sinks = {"influx": {"type": "influxdb", "url": influx.url, "database": "lake",
                        "points": points, "timeout": 2}}  # fmt: skip
    app = App(tmp_path / "data", sinks=sinks, writer={"retry_initial": 0.1, "retry_max": 0.5})
    app.start()
    try:
        for part in range(3):
            body = readings(5, device=f"p{part}-")
            assert app.post("/ingest/sensors", body).status_code == 200
        # acknowledged, so durable in the spool; the writer takes batches in order, so
        # those behind the one InfluxDB has not confirmed wait there
        registry = app.service.metrics.registry

        def failed() -> bool:
            errors = registry.get_sample_value("rtclake_sink_errors_total", {"sink": "influx"})
            return (errors or 0) >= 3

        assert wait_for(failed) is True, "the writes are retried"
        influx.start()  # InfluxDB is back
        assert wait_for(lambda: server_count(influx) == 15, timeout=30), server_count(influx)
        assert app.wait_rows("SELECT count(*) FROM telemetry", 15) == 15
        # a record InfluxDB refuses for good (temp was a float): in dead_letters, with why
        bad = b'{"time": "2026-11-20T01:00:00Z", "device_id": "x", "temp": "hot"}'
        assert app.post("/ingest/sensors", bad).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM dead_letters", 1) == 1
        [letter] = app.rows("SELECT sink, table_name, reason, record->>'device_id'"
                            " FROM dead_letters")  # fmt: skip
        assert letter[0:2] == ["influx", "telemetry"] and letter[3] == "x"
        assert "field type conflict" in letter[2]
        assert server_count(influx) == 15
        assert registry.get_sample_value(
            "rtclake_dead_letters_total", {"sink": "influx", "table": "telemetry"}
        ) == 1  # fmt: skip
    finally:
        app.stop()
        influx.stop()


def server_count(influx: Influxd) -> int:
    return influx.count("lake", "telemetry")


@needs_influxd
def test_the_example_brokers_feed_influxdb_and_slack_through_their_sinks(tmp_path: Path) -> None:
    """Kraken's pattern, both examples of examples/brokers in one service: the readings'
    points reach InfluxDB (influxdb sink), the alarm reaches Slack (slack sink)."""
    influx = Influxd(tmp_path / "influxd").start()
    slack = HttpReceiver().start()
    processors = {
        "to_influx": {
            "type": "broker",
            "handler": "influx_points:handle",
            "path": str(EXAMPLES),
            "match": {"stream": "sensors*"},
        },
        "alarm": {
            "type": "broker",
            "handler": "threshold_alarm:ThresholdAlarm",
            "path": str(EXAMPLES),
            "match": {"stream": "sensors*"},
            "options": {"field": "temp", "threshold": 30, "sinks": ["slack"]},
        },
    }
    sinks = {"influxdb": {"type": "influxdb", "url": influx.url, "database": "kraken",
                          "tables": [OUTBOX.name]},
             "slack": {"type": "slack", "url": slack.url + "/slack"}}  # fmt: skip
    app = App(tmp_path / "data", sinks=sinks, processors=processors).start()
    try:
        readings = [
            {"device_id": "s1", "time": "2026-12-02T10:00:00Z", "temp": 20, "unit": "C"},
            {"device_id": "s1", "time": "2026-12-02T10:00:10Z", "temp": 31.5, "hum": 40},
            {"device_id": "s2", "time": "2026-12-02T10:00:10Z", "temp": 19.25},
        ]
        for reading in readings:
            answer = app.post("/ingest/sensors-a", orjson.dumps(reading))
            assert answer.status_code == 200, answer.text
        assert wait_for(lambda: influx.count("kraken", "sensors-a") == 3) is True
        points = influx.points("kraken", "sensors-a")
        assert [(p["time"], p["device_id"], p["temp"], p["hum"], p["unit"]) for p in points] == [
            (1796205600000000000, "s1", 20.0, None, "C"),
            (1796205610000000000, "s1", 31.5, 40.0, None),
            (1796205610000000000, "s2", 19.25, None, None),
        ]
        assert influx.query("SHOW MEASUREMENTS", "kraken")[0]["values"] == [["sensors-a"]]
        posted = wait_for(lambda: slack.received("/slack"))
        assert [p.json() for p in posted] == [{"text": "s1: temp 31.5 is above 30"}]
    finally:
        app.stop()
        influx.stop()
        slack.stop()


# -- the v2 API, against a stand-in


class V2StandIn:
    """InfluxDB 2's write API as far as the sink uses it: ``POST /api/v2/write`` with
    ``org``, ``bucket``, ``precision=ns`` and ``Authorization: Token ...``; it keeps one
    value per point (series and time), answers 422 for a line holding ``refuse`` (and
    keeps the others, as a partial write), and the statuses queued by ``outage``."""

    def __init__(self, token: str = "t0ken") -> None:
        self.token = token
        self.points: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str], bytes]] = []
        self.queued: list[int] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                url = urlsplit(self.path)
                params = parse_qs(url.query)
                headers = {k.lower(): v for k, v in self.headers.items()}
                stand_in.requests.append((url.path, params, headers, body))
                self.answer(*stand_in.handle(url.path, params, headers, body))

            def answer(self, status: int, message: str) -> None:
                text = orjson.dumps({"code": "invalid", "message": message}) if message else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def handle(self, path: str, params: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, str]:  # fmt: skip
        if self.queued:
            return self.queued.pop(0), "not now"
        if path != "/api/v2/write":
            return 404, "not found"
        if headers.get("authorization") != f"Token {self.token}":
            return 401, "unauthorized access"
        if params != {"org": ["acme"], "bucket": ["sensors"], "precision": ["ns"]}:
            return 400, f"bad parameters {params}"
        if not headers.get("content-type", "").startswith("text/plain"):
            return 400, "not line protocol"
        refused = []
        for text in body.decode().split("\n"):
            if "refuse" in text:
                refused.append(text)
                continue
            series, fields, ns = split_line(text)
            self.points[(series, ns)] = fields
        if refused:
            return 422, f"partial write: field type conflict dropped={len(refused)}"
        return 204, ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> V2StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def split_line(text: str) -> tuple[str, str, str]:
    """A line's series (measurement and tags), fields and time, at its unescaped spaces
    outside quotes."""
    parts, start, i, quoted = [], 0, 0, False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    assert len(parts) == 3, text
    return parts[0], parts[1], parts[2]


V2 = {"version": 2, "org": "acme", "bucket": "sensors", "token": "t0ken"}


def test_v2_writes_with_org_bucket_and_token_and_a_replay_sends_the_same_points() -> None:
    with V2StandIn() as influx:
        writer = sink(influx.url, **V2, max_lines=4)
        made = convert("telemetry", readings(6))
        writer.write(made)
        writer.write(made)
        assert len(influx.points) == 6
        path, params, headers, body = influx.requests[0]
        assert path == "/api/v2/write" and headers["authorization"] == "Token t0ken"
        assert params == {"org": ["acme"], "bucket": ["sensors"], "precision": ["ns"]}
        assert body.decode().split("\n")[0] == (
            "telemetry,device_id=d0,source=http,stream=s temp=20.0,env_hum=40.5 1795132800123456000"
        )
        bodies = [r[3] for r in influx.requests]
        assert len(bodies) == 4 and bodies[:2] == bodies[2:]  # the replay: the same points
        writer.close()


def test_v2_a_wrong_token_or_a_5xx_is_an_outage_and_the_retry_writes() -> None:
    with V2StandIn(token="other") as influx:
        writer = sink(influx.url, **V2)
        with pytest.raises(SinkError, match="answered 401"):
            writer.write(convert("telemetry", readings(2)))
        influx.token = "t0ken"  # fixed
        influx.queued = [503]
        with pytest.raises(SinkError, match="answered 503"):
            writer.write(convert("telemetry", readings(2)))
        writer.write(convert("telemetry", readings(2)))  # the delivery's retry
        assert len(influx.points) == 2
        writer.close()


def test_v2_a_422_is_split_until_the_refused_lines_are_alone() -> None:
    with V2StandIn() as influx:
        writer = sink(influx.url, **V2, json_integers="integer")
        body = b"\n".join(
            b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "%s"}'
            % (i, b"refuse" if i in (2, 6) else b"d%d" % i)
            for i in range(8)
        ).replace(b"}", b', "n": 1}')
        with pytest.raises(Rejected) as refused:
            writer.write(convert("telemetry", body))
        rows = refused.value.rows["telemetry"]
        assert [index for index, _ in rows] == [2, 6]
        assert (
            rows[0][1].startswith("influxdb answered 422:") and "field type conflict" in rows[0][1]
        )
        assert len(influx.points) == 6 and all(f == "n=1i" for f in influx.points.values())
        writer.close()


def test_an_outage_longer_than_give_up_after_sends_the_rows_to_dead_letters() -> None:
    clock = [100.0]
    config = InfluxDBConfig(type="influxdb", url=f"http://127.0.0.1:{free_port()}", timeout=1,
                            give_up_after=60)  # fmt: skip
    writer = InfluxDBSink(config, default_registry(), "influx", clock=lambda: clock[0])
    made = convert("telemetry", readings(3))
    with pytest.raises(SinkError):
        writer.write(made)
    clock[0] += 61
    with pytest.raises(Rejected) as refused:
        writer.write(made)
    rows = refused.value.rows["telemetry"]
    assert [i for i, _ in rows] == [0, 1, 2] and rows[0][1].startswith("gave up after 60 s")
    assert refused.value.outage == rows[0][1]  # InfluxDB is out: the sink counts as down


def test_rows_without_fields_are_not_points() -> None:
    writer = InfluxDBSink(InfluxDBConfig(type="influxdb"), default_registry(), "influx")
    lines, refused = writer.lines(convert("telemetry", b'{"device_id": "d", "unit": "C"}'))
    assert lines == {} and refused == {}
    table = pa.Table.from_pylist([], schema=OUTBOX.schema)
    assert writer.lines(Batch("n", "r", 1, {"outbox": table})) == ({}, {})
