"""The MQTT source against the real Mosquitto on 127.0.0.1:1883 (scripts/services.sh):
messages become records with their topic, binary payloads stay bytes, the session
outlives rtclake, a redelivery is stored once, and a kill -9 mid-stream loses nothing
and stores nothing twice."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rtclake.config import Settings, SpoolConfig
from rtclake.errors import SpoolUnavailable
from rtclake.service import Service
from rtclake.sources.mqtt import MqttSource, SeenStore
from rtclake.testing import TcpRelay
from tests.conftest import Server, wait_for

BROKER = ("127.0.0.1", 1883)
RUN = uuid.uuid4().hex[:8]  # topics and client ids of this test run


def _client(client_id: str = "") -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


class Publisher:
    """A paho publisher (QoS 1 by default) on a thread of its own."""

    def __init__(self) -> None:
        self.client = _client()
        self.client.max_inflight_messages_set(100)
        self.client.connect(*BROKER)
        self.client.loop_start()

    def send(
        self, topic: str, payload: bytes, *, qos: int = 1, props: dict[str, Any] | None = None
    ) -> None:
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.publish(topic, payload, qos=qos, properties=properties).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher()
    yield pub
    pub.close()


@pytest.fixture
def client_id(request: pytest.FixtureRequest) -> Iterator[str]:
    """A client id of its own for rtclake; its session is removed from the broker after."""
    name = f"rtclake-test-{RUN}-{request.node.name[:40]}"
    yield name
    end = _client(name)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    end.connect(*BROKER, clean_start=True, properties=props)
    end.disconnect()


def settings(tmp_path: Path, client_id: str, topic: str, **mqtt_settings: Any) -> Settings:
    source = {"type": "mqtt", "topics": [topic + "/#"], "client_id": client_id, **mqtt_settings}
    return Settings(
        data_dir=tmp_path / "data",
        node="t",
        spool=SpoolConfig(flush_interval=0.1),
        sources={"mq": source},
    )


def received(service: Service) -> float:
    value = service.metrics.registry.get_sample_value(
        "rtclake_records_received_total", {"source": "mq"}
    )
    return value or 0.0


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def subscribed(service: Service, pub: Publisher, topic: str) -> None:
    """Publish probes on ``topic/probe`` until one is stored: the subscription holds."""
    before = received(service)
    for _ in range(100):
        await asyncio.to_thread(pub.send, topic + "/probe", b"probe", qos=0)
        if await until(lambda: received(service) > before, timeout=0.2):
            return
    raise AssertionError("the mqtt source never subscribed")


def running(
    config: Settings, body: Callable[[Service], Awaitable[Any]]
) -> Any:  # one service run: start, body, stop
    async def main() -> Any:
        service = Service(config)
        await service.start()
        try:
            return await body(service)
        finally:
            await service.stop()

    return asyncio.run(main())


def lake_rows(service: Service, sql: str) -> list[list[Any]]:
    return service.query.run(sql).rows()


# -- records -----------------------------------------------------------------------------


def test_json_and_binary_messages_are_stored_with_their_topic(
    tmp_path: Path, client_id: str, publisher: Publisher
) -> None:
    topic = f"rtclake-test/{RUN}/records"
    binary = bytes(range(256)) * 3
    text = "température 21,5 °C".encode()

    record = b'{"device_id": "t1", "time": "2026-11-23T12:00:00Z", "temp": 21.5}'

    async def body(service: Service) -> list[list[Any]]:
        await subscribed(service, publisher, topic)
        sends: list[tuple[str, bytes, dict[str, Any]]] = [
            (f"{topic}/t1", record, {}),
            (f"{topic}/cam", binary, {"ContentType": "image/jpeg"}),
            (f"{topic}/txt", text, {"UserProperty": [("site", "osaka")]}),
        ]  # fmt: skip
        for t, payload, props in sends:
            await asyncio.to_thread(publisher.send, t, payload, props=props)
        assert await until(lambda: received(service) >= 4)
        assert await service.writer.drain(10)
        return lake_rows(
            service,
            "SELECT topic, device_id, time::VARCHAR, content_type, metadata->>'site', payload,"
            f" extra, stream, source FROM telemetry WHERE topic <> '{topic}/probe' ORDER BY 1",
        )

    rows = running(settings(tmp_path, client_id, topic), body)
    assert rows == [
        [f"{topic}/cam", None, rows[0][2], "image/jpeg", None, binary, None, "mq", "mq"],
        [f"{topic}/t1", "t1", "2026-11-23 12:00:00+00", None, None, None, {"temp": 21.5}, "mq",
         "mq"],
        [f"{topic}/txt", None, rows[2][2], None, "osaka", text, None, "mq", "mq"],
    ]  # fmt: skip


def test_a_json_object_its_table_refuses_is_stored_as_bytes(
    tmp_path: Path, client_id: str, publisher: Publisher
) -> None:
    topic = f"rtclake-test/{RUN}/refused"
    bad = b'{"time": "yesterday", "v": 1}'

    async def body(service: Service) -> list[list[Any]]:
        await subscribed(service, publisher, topic)
        await asyncio.to_thread(publisher.send, f"{topic}/bad", bad)
        await asyncio.to_thread(publisher.send, f"{topic}/good", b'{"v": 2}')
        assert await until(lambda: received(service) >= 3)
        assert await service.writer.drain(10)
        return lake_rows(
            service,
            "SELECT topic, payload, metadata->>'_invalid', extra FROM telemetry"
            f" WHERE topic <> '{topic}/probe' ORDER BY topic",
        )

    (bad_row, good_row) = running(settings(tmp_path, client_id, topic), body)
    assert bad_row[:2] == [f"{topic}/bad", bad]
    assert "Invalid time 'yesterday'" in bad_row[2]
    assert good_row == [f"{topic}/good", None, None, {"v": 2}]


# -- the session -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_message_published_while_rtclake_is_stopped_arrives_when_it_starts(
    tmp_path: Path, client_id: str, publisher: Publisher, protocol: str
) -> None:
    topic = f"rtclake-test/{RUN}/offline-{protocol}"
    config = settings(tmp_path, client_id, topic, protocol=protocol)

    async def first(service: Service) -> None:
        await subscribed(service, publisher, topic)  # the session exists from now on

    running(config, first)
    publisher.send(f"{topic}/late", b'{"while": "away"}')

    async def second(service: Service) -> list[list[Any]]:
        sql = f"SELECT count(*) FROM telemetry WHERE topic = '{topic}/late'"
        assert await until(lambda: received(service) >= 1)
        assert await service.writer.drain(10)
        return lake_rows(service, sql)

    assert running(config, second) == [[1]]


def test_a_message_the_broker_delivers_again_is_stored_once(
    tmp_path: Path, client_id: str, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run stores three messages but never acknowledges them (as if killed
    between the spool and the PUBACK); the broker sends them again, marked DUP."""
    topic = f"rtclake-test/{RUN}/redelivery"
    config = settings(tmp_path, client_id, topic)
    payloads = [b'{"n": 1}', b'{"n": 2}', bytes([0, 255, 7])]

    async def first(service: Service) -> None:
        await subscribed(service, publisher, topic)
        monkeypatch.setattr(MqttSource, "_ack", lambda self, d: False)
        for payload in payloads:
            await asyncio.to_thread(publisher.send, f"{topic}/m", payload)
        assert await until(lambda: received(service) >= 4)
        monkeypatch.undo()

    running(config, first)
    dups: list[bool] = []
    arrived = MqttSource._arrived

    def noting_dup(self: MqttSource, d: Any) -> None:
        dups.append(d.dup)
        arrived(self, d)

    monkeypatch.setattr(MqttSource, "_arrived", noting_dup)

    async def second(service: Service) -> list[list[Any]]:
        assert await until(lambda: received(service) >= 3)
        assert await service.writer.drain(10)
        return lake_rows(service, f"SELECT count(*) FROM telemetry WHERE topic = '{topic}/m'")

    assert running(config, second) == [[3]]
    assert dups == [True, True, True]
    files = str(tmp_path / "data" / "lake" / "main" / "telemetry" / "**" / "*.parquet")
    stored = duckdb.sql(f"SELECT count(*) FROM read_parquet('{files}') WHERE topic = '{topic}/m'")
    assert stored.fetchall() == [(3,)]  # the redeliveries were not stored again


def test_a_message_is_acknowledged_only_once_stored_and_kept_while_the_spool_refuses(
    tmp_path: Path, client_id: str, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"rtclake-test/{RUN}/spool-full"
    events: list[str] = []
    ack = MqttSource._ack

    def acked(self: MqttSource, d: Any) -> bool:
        if d.topic.endswith("/m"):
            events.append("ack")
        return ack(self, d)

    monkeypatch.setattr(MqttSource, "_ack", acked)

    async def body(service: Service) -> list[list[Any]]:
        await subscribed(service, publisher, topic)
        take = service.intake.take

        async def refusing(*args: Any, **kw: Any) -> Any:
            if events.count("refused") < 3:
                events.append("refused")
                raise SpoolUnavailable("spool full", retry_after=0)
            taken = await take(*args, **kw)
            events.append("durable")
            return taken

        monkeypatch.setattr(service.intake, "take", refusing)
        await asyncio.to_thread(publisher.send, f"{topic}/m", b'{"v": 1}')
        assert await until(lambda: "ack" in events)
        assert await service.writer.drain(10)
        return lake_rows(service, f"SELECT count(*) FROM telemetry WHERE topic = '{topic}/m'")

    assert running(settings(tmp_path, client_id, topic), body) == [[1]]
    assert events == ["refused", "refused", "refused", "durable", "ack"]


def test_a_publisher_retry_within_the_window_is_stored_once(
    tmp_path: Path, client_id: str, publisher: Publisher
) -> None:
    topic = f"rtclake-test/{RUN}/retry"
    sends = [
        ("a", b'{"v": 1}', None),
        ("a", b'{"v": 1}', None),  # the same payload on the same topic: a retry
        ("b", b'{"v": 1}', None),  # another topic: another message
        ("a", b'{"v": 2}', "m-1"),  # the publisher's message id decides ...
        ("a", b'{"v": 3}', "m-1"),  # ... a retry, whatever its payload
        ("a", b'{"v": 2}', "m-2"),  # ... a new message with the payload of another
    ]

    async def body(service: Service) -> list[list[Any]]:
        await subscribed(service, publisher, topic)
        for sub, payload, message_id in sends:
            props = {"UserProperty": [("message-id", message_id)]} if message_id else None
            await asyncio.to_thread(publisher.send, f"{topic}/{sub}", payload, props=props)
        assert await until(lambda: received(service) >= 7)
        assert await service.writer.drain(10)
        return lake_rows(
            service,
            "SELECT topic, (extra->>'v')::INT AS v, count(*) FROM telemetry"
            f" WHERE topic <> '{topic}/probe' GROUP BY ALL ORDER BY ALL",
        )

    assert running(settings(tmp_path, client_id, topic), body) == [
        [f"{topic}/a", 1, 1],
        [f"{topic}/a", 2, 2],
        [f"{topic}/b", 1, 1],
    ]


def test_the_dedupe_store_keys_by_dup_flag_window_and_age(tmp_path: Path) -> None:
    store = SeenStore(tmp_path / "seen.sqlite3", window=10, keep=10_000)
    a, b = SeenStore.key("t/a", b"x"), SeenStore.key("t/b", b"x")
    (first,) = store.assign([(a, False)], now_us=us(1000))
    assert store.assign([(a, False), (b, False)], now_us=us(1005)) == [first, idem(b, 1005)]
    (later,) = store.assign([(a, False)], now_us=us(1020))  # beyond the window: a new reading
    assert later == idem(a, 1020) != first
    assert store.assign([(a, True)], now_us=us(5000)) == [later]  # DUP: whatever its age
    # Pruning drops acknowledged entries past the window, and keeps the others (b's
    # redelivery after that is a new message; a's still finds its key) until `keep`.
    store._last_prune = 0
    store.assign([], [(b, idem(b, 1005))], now_us=us(5000))
    assert store.assign([(b, True), (a, True)], now_us=us(5001)) == [idem(b, 5001), later]
    store._last_prune = 0
    store.assign([], now_us=us(20_000))
    assert store.assign([(a, True)], now_us=us(20_001)) == [idem(a, 20_001)]
    store.close()


def us(seconds: int) -> int:
    return seconds * 1_000_000


def idem(key: bytes, seconds: int) -> str:
    return f"h:{key.hex()}:{us(seconds)}"


def test_a_dropped_connection_is_made_again_and_nothing_is_lost_or_doubled(
    tmp_path: Path, client_id: str, publisher: Publisher
) -> None:
    topic = f"rtclake-test/{RUN}/reconnect"
    proxy = TcpRelay(BROKER)
    config = settings(tmp_path, client_id, topic, url=f"mqtt://127.0.0.1:{proxy.port}")
    total = 300

    async def body(service: Service) -> list[list[Any]]:
        def connections() -> float:
            value = service.metrics.registry.get_sample_value(
                "rtclake_source_connections_total", {"source": "mq"}
            )
            return value or 0.0

        await subscribed(service, publisher, topic)
        for seq in range(total):
            await asyncio.to_thread(publisher.send, f"{topic}/seq", b'{"seq": %d}' % seq)
            if seq in (100, 200):
                made = connections()
                proxy.cut()  # with messages in flight: some come again, marked DUP
                assert await until(lambda: connections() > made)  # noqa: B023
        assert await until(lambda: received(service) >= total + 1, timeout=30)
        assert await service.writer.drain(10)
        assert connections() == 3
        return lake_rows(
            service,
            "SELECT count(*), count(DISTINCT extra->>'seq') FROM telemetry"
            f" WHERE topic = '{topic}/seq'",
        )

    try:
        assert running(config, body) == [[total, total]]
    finally:
        proxy.down()


# -- kill -9 mid-stream ------------------------------------------------------------------


def test_a_thousand_messages_survive_kill_9_mid_stream_each_stored_once(
    make_server: Callable[..., Server], client_id: str, tmp_path: Path
) -> None:
    topic = f"rtclake-test/{RUN}/crash"
    env = {
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.3",
        "RTCLAKE_SOURCES__SENSORS__TYPE": "mqtt",
        "RTCLAKE_SOURCES__SENSORS__TOPICS": json.dumps([topic + "/#"]),
        "RTCLAKE_SOURCES__SENSORS__CLIENT_ID": client_id,
    }
    server = make_server(**env)

    def stored() -> float:
        return server.metric("rtclake_records_received_total", source="sensors")

    pub = Publisher()
    try:
        for _ in range(100):  # until the subscription holds
            pub.send(f"{topic}/probe", b"probe", qos=0)
            if wait_for(stored, timeout=0.2):
                break
        total, sent = 1000, [0]

        def publish() -> None:
            for seq in range(total):
                pub.send(f"{topic}/seq", json.dumps({"seq": seq}).encode())
                sent[0] = seq + 1
                time.sleep(0.002)

        thread = threading.Thread(target=publish)
        thread.start()
        assert wait_for(lambda: stored() >= 300, timeout=20)
        server.stop(signal.SIGKILL)
        killed_at = sent[0]
        time.sleep(0.5)
        server.start()
        thread.join(30)
        assert sent[0] == total
    finally:
        pub.close()
    print(f"killed after {killed_at} of {total} messages were published")

    count = f"SELECT count(*) FROM telemetry WHERE topic = '{topic}/seq'"
    assert server.wait_rows(count, total, timeout=30) == total
    rows = server.query(
        "SELECT count(*), count(DISTINCT record_id), count(DISTINCT (extra->>'seq')::INT),"
        f" min((extra->>'seq')::INT), max((extra->>'seq')::INT) FROM telemetry"
        f" WHERE topic = '{topic}/seq'"
    )["rows"]
    assert rows == [[total, total, total, 0, total - 1]]  # none lost, none twice
    server.stop()
    files = str(server.data_dir / "lake" / "main" / "telemetry" / "**" / "*.parquet")
    copies = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{files}') WHERE topic = '{topic}/seq'"
    ).fetchall()[0][0]
    print(f"{copies} rows in the files for {total} messages (redeliveries: {copies - total})")


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("a/#/b", "'#' must be a whole level, and the last"),
        ("sensors#", "'#' must be a whole level, and the last"),
        ("a/b+", "'+' must be a whole level"),
        ("", "an empty topic filter"),
        ("a\0b", "a NUL character"),
    ],
)
def test_a_topic_filter_the_broker_would_refuse_is_refused_in_the_configuration(
    tmp_path: Path, topic: str, why: str
) -> None:
    # paho's network thread had stopped on "a/#/b" once connected, and nothing came after
    from rtclake.config import load_settings
    from rtclake.errors import ConfigError

    sources = {"m": {"type": "mqtt", "topics": ["sensors/#", topic]}}
    with pytest.raises(ConfigError, match=rf"sources\.m\.topics: .*: {re.escape(why)}"):
        load_settings(data_dir=tmp_path, sources=sources)


def test_topic_filters_by_the_rules_are_taken(tmp_path: Path) -> None:
    from rtclake.config import load_settings

    topics = ["sensors/#", "#", "+", "+/x/+", "$share/g/sensors/#", "a//b", "sport/+/player1"]
    settings = load_settings(data_dir=tmp_path, sources={"m": {"type": "mqtt", "topics": topics}})
    assert settings.sources["m"]["topics"] == topics
