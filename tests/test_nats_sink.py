"""The nats sink against the NATS server on this machine (127.0.0.1:4222, JetStream on),
with a stream and subjects of each test's own, deleted afterwards: a replay stores
nothing twice (the stream's de-duplication by ``Nats-Msg-Id``), core NATS when no stream
takes a subject, an outage as SinkError, refusals (max_payload, a stream's max_msg_size)
to ``dead_letters`` behind the writer, and a server that starts after the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.js.api import StreamConfig
from pydantic import SecretStr

from rtclake.catalog import default_registry
from rtclake.errors import SinkError
from rtclake.sinks.base import Rejected
from rtclake.sinks.nats import NATSConfig, NATSSink
from rtclake.testing import free_port
from tests.test_query import batch
from tests.test_redis_sink import BEYOND_FLOATS
from tests.test_sora_webhooks import App

URL = "nats://127.0.0.1:4222"
SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _reachable("127.0.0.1", 4222), reason="no NATS server on 127.0.0.1:4222"
)


def run(coro_fn: Callable[[Any], Any], url: str = URL) -> Any:
    """Run ``coro_fn(nc)`` on a connection of the test's own."""

    async def main() -> Any:
        nc = await nats.connect(url)
        try:
            return await coro_fn(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


class Names:
    """A stream and a subject prefix of one test."""

    def __init__(self) -> None:
        token = uuid.uuid4().hex[:8]
        self.stream = f"RTCLAKE_TEST_{token.upper()}"
        self.prefix = f"rtclaketest{token}."

    def count(self, url: str = URL) -> int:
        async def messages(nc: Any) -> int:
            info = await nc.jetstream().stream_info(self.stream)
            return int(info.state.messages)

        return int(run(messages, url))

    def count_soon(self, url: str, want: int, timeout: float) -> int:
        """Poll :meth:`count` until it is ``want`` or ``timeout`` passed; a server still
        starting or a stream not created yet counts as not there yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.count(url) >= want:
                    break
            except Exception:  # (the final count below raises what is still wrong)
                pass
            time.sleep(0.1)
        return self.count(url)

    def stored(self, url: str = URL) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """The stream's messages: headers and record."""
        return [(headers, orjson.loads(data)) for headers, data in self.payloads(url)]

    def payloads(self, url: str = URL) -> list[tuple[dict[str, str], bytes]]:
        """The stream's messages: headers and payload, as published."""

        async def read(nc: Any) -> list[tuple[dict[str, str], bytes]]:
            js = nc.jetstream()
            info = await js.stream_info(self.stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(self.stream, seq)
                out.append((dict(msg.headers or {}), msg.data))
            return out

        return list(run(read, url))

    def delete(self, url: str = URL) -> None:
        async def delete(nc: Any) -> None:
            with contextlib.suppress(Exception):  # not created by the test
                await nc.jetstream().delete_stream(self.stream)

        run(delete, url)


@pytest.fixture
def names() -> Iterator[Names]:
    made = Names()
    yield made
    made.delete()


def lines(n: int, device: str = "d") -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "%s%d", "temp": %d}'
        % (i, device.encode(), i, 20 + i)
        for i in range(n)
    )


def sink(names: Names, **settings: Any) -> NATSSink:
    config = NATSConfig(prefix=names.prefix, **{"stream": names.stream, **settings})
    made = NATSSink(config, default_registry(), "n")
    made.start()
    return made


def test_a_replayed_batch_stores_nothing_twice_in_the_stream(names: Names) -> None:
    writer = sink(names, duplicate_window=120)
    made = batch(1, lines(5))
    writer.write(made)
    assert names.count() == 5 and writer.duplicates == 0
    writer.write(made)  # the writer delivers at least once: a replay
    assert names.count() == 5  # unchanged
    assert writer.duplicates == 5  # every PubAck said duplicate
    stored = names.stored()
    ids = made.tables["telemetry"]["record_id"].to_pylist()
    assert [headers["Nats-Msg-Id"] for headers, _ in stored] == ids
    assert [record["record_id"] for _, record in stored] == ids
    record = stored[2][1]
    assert record["device_id"] == "d2" and record["extra"] == {"temp": 22}
    assert record["time"] == "2026-11-20T00:00:02Z"

    async def config(nc: Any) -> Any:
        return (await nc.jetstream().stream_info(names.stream)).config

    created = run(config)
    assert created.subjects == [names.prefix + ">"] and created.duplicate_window == 120
    writer.close()
    writer.close()  # twice: nothing left to close


def test_without_a_stream_records_go_out_as_core_nats_messages_with_their_ids(
    names: Names,
) -> None:
    writer = sink(names, stream=None)

    async def listen(nc: Any) -> list[Any]:
        got: list[Any] = []

        async def take(msg: Any) -> None:
            got.append(msg)

        sub = await nc.subscribe(names.prefix + ">", cb=take)
        await nc.flush()
        made = batch(1, lines(3))
        await asyncio.to_thread(writer.write, made)
        await asyncio.to_thread(writer.write, made)  # core NATS: a replay goes out again
        deadline = time.monotonic() + 5
        while len(got) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await sub.unsubscribe()
        return got

    got = run(listen)
    writer.close()
    assert [msg.subject for msg in got] == [names.prefix + "telemetry"] * 6
    ids = [msg.headers["Nats-Msg-Id"] for msg in got]
    assert len(set(ids)) == 3 and ids[:3] == ids[3:]  # a subscriber drops the replay by id
    assert orjson.loads(got[0].data)["record_id"] == ids[0]


def test_numbers_beyond_a_float_are_published_as_written_with_the_rest_of_the_batch(
    names: Names,
) -> None:
    writer = sink(names)
    made = batch(1, lines(2) + b"\n" + BEYOND_FLOATS)
    writer.write(made)  # no refusal: each record is well-formed
    writer.close()
    stored = names.payloads()
    ids = made.tables["telemetry"]["record_id"].to_pylist()
    assert [headers["Nats-Msg-Id"] for headers, _ in stored] == ids
    payloads = [payload for _, payload in stored]
    assert b'"extra":{"big":1e400}' in payloads[2]
    assert b'"extra":{"env":{"low":-1e400}}' in payloads[3]
    assert b'"extra":{"digits":' + b"9" * 400 + b"}" in payloads[4]
    assert json.loads(payloads[4])["extra"]["digits"] == 10**400 - 1  # still JSON


def test_always_jetstream_without_a_stream_is_an_outage(names: Names) -> None:
    writer = sink(names, stream=None, jetstream="always", timeout=1)
    with pytest.raises(SinkError, match="NoStreamResponseError"):
        writer.write(batch(1, lines(1)))
    writer.close()


def test_an_unreachable_server_is_an_outage_and_the_retry_publishes_the_batch(
    names: Names,
) -> None:
    config = NATSConfig(url=f"nats://127.0.0.1:{free_port()}", prefix=names.prefix,
                        stream=names.stream, timeout=1)  # fmt: skip
    writer = NATSSink(config, default_registry(), "n")
    writer.start()  # logs; the first write meets the outage
    made = batch(1, lines(3))
    with pytest.raises(SinkError, match="nats: cannot connect"):
        writer.write(made)
    writer.config = config.model_copy(update={"url": SecretStr(URL)})  # the server is back
    writer.write(made)
    assert names.count() == 3
    writer.close()


def test_messages_refused_for_good_are_returned_and_the_rest_stored(names: Names) -> None:
    writer = sink(names)
    big = b'{"time": "2026-11-20T00:01:00Z", "big": "' + b"x" * 1_100_000 + b'"}'
    with pytest.raises(Rejected) as refused:
        writer.write(batch(1, lines(2) + b"\n" + big))
    assert refused.value.rows == {
        "telemetry": [(2, "nats: the message is over the server's max_payload")]
    }
    assert refused.value.outage is None  # the server answered: the sink is up
    assert names.count() == 2
    writer.close()


def test_an_outage_longer_than_give_up_after_sends_the_batch_to_dead_letters(
    names: Names,
) -> None:
    config = NATSConfig(url=f"nats://127.0.0.1:{free_port()}", prefix=names.prefix,
                        stream=names.stream, timeout=1, give_up_after=60)  # fmt: skip
    writer = NATSSink(config, default_registry(), "n")
    clock = [100.0]
    writer.clock = lambda: clock[0]
    made = batch(1, lines(2))
    for later in (0, 59):
        clock[0] += later
        with pytest.raises(SinkError):
            writer.write(made)
    clock[0] += 1
    with pytest.raises(Rejected) as refused:
        writer.write(made)
    [(first, reason), (second, _)] = refused.value.rows["telemetry"]
    assert (first, second) == (0, 1)
    assert reason.startswith("gave up after 60 s of outage: nats: cannot connect")
    assert refused.value.outage == reason  # the server is out: the sink counts as down
    writer.close()


def test_behind_the_writer_a_record_the_stream_refuses_is_a_dead_letter_with_its_reason(
    tmp_path: Path, names: Names
) -> None:
    async def small_stream(nc: Any) -> None:  # made by its operator, with a size limit
        await nc.jetstream().add_stream(StreamConfig(
            name=names.stream, subjects=[names.prefix + ">"], max_msg_size=1500))  # fmt: skip

    run(small_stream)
    sinks = {"n": {"type": "nats", "prefix": names.prefix, "tables": ["telemetry"]}}
    app = App(tmp_path, sinks=sinks, writer={"retry_initial": 0.05, "retry_max": 0.2}).start()
    try:
        big = b'{"time": "2026-11-20T00:01:00Z", "device_id": "big", "note": "' + b"x" * 3000
        assert app.post("/ingest/sensors", lines(3) + b"\n" + big + b'"}').status_code == 200
        assert app.wait_rows("SELECT count(*) FROM dead_letters", 1) == 1
        [[sink_name, table, reason, device]] = app.rows(
            "SELECT sink, table_name, reason, record->>'device_id' FROM dead_letters"
        )
        assert (sink_name, table, device) == ("n", "telemetry", "big")
        assert reason.startswith("nats: the stream refused it: 400 message size exceeds maximum")
        assert names.count() == 3
        assert app.service.delivery.health()["n"] == {"ok": True}  # the server answers
    finally:
        app.stop()


def test_behind_the_writer_a_sink_that_gave_up_on_its_server_is_down_not_healthy(
    tmp_path: Path,
) -> None:
    sinks = {"n": {"type": "nats", "url": f"nats://127.0.0.1:{free_port()}", "timeout": 1,
                   "tables": ["telemetry"], "give_up_after": 1}}  # fmt: skip
    app = App(tmp_path, sinks=sinks, writer={"retry_initial": 0.05, "retry_max": 0.2}).start()
    try:
        assert app.post("/ingest/sensors", lines(1, "a")).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM dead_letters", 1) == 1
        assert app.post("/ingest/sensors", lines(1, "b")).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM dead_letters", 2) == 2
        health = httpx.get(app.url + "/healthz").json()
        assert health["status"] == "degraded", health
        state = health["sinks"]["n"]
        assert state["ok"] is False
        assert state["error"].startswith("gave up after 1 s of outage: nats: cannot connect")
        up = app.service.metrics.registry.get_sample_value("rtclake_sink_up", {"sink": "n"})
        assert up == 0
    finally:
        app.stop()


@pytest.mark.skipif(not Path(SERVER).exists(), reason="no nats-server binary on this machine")
def test_behind_the_writer_nothing_is_lost_while_the_server_is_not_yet_up(tmp_path: Path) -> None:
    names = Names()  # on the test's own server, which goes with the test
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    sinks = {"n": {"type": "nats", "url": url, "prefix": names.prefix, "stream": names.stream,
                   "tables": ["telemetry"], "timeout": 1}}  # fmt: skip
    app = App(tmp_path / "app", sinks=sinks,
              writer={"retry_initial": 0.05, "retry_max": 0.3}).start()  # fmt: skip
    server: subprocess.Popen[bytes] | None = None
    try:
        for part in range(3):  # no server yet: the records wait in the spool
            body = lines(5).replace(b'"d', b'"p%d-' % part)
            assert app.post("/ingest/sensors", body).status_code == 200
        time.sleep(1.0)
        server = subprocess.Popen(
            [SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # the lake took the batch at once; the NATS sink creates its stream once the server
        # answers (until then the stream is not there: none counted yet)
        assert app.wait_rows("SELECT count(*) FROM telemetry", 15, timeout=30) == 15
        assert names.count_soon(url, 15, timeout=20) == 15
        stored = {headers["Nats-Msg-Id"] for headers, _ in names.stored(url)}
        assert stored == {row[0] for row in app.rows("SELECT record_id FROM telemetry")}
    finally:
        app.stop()
        if server is not None:
            server.terminate()
            server.wait(10)


@pytest.mark.skipif(not Path(SERVER).exists(), reason="no nats-server binary on this machine")
def test_a_lost_connection_is_an_outage_and_the_sink_connects_again(tmp_path: Path) -> None:
    names = Names()
    port = free_port()
    url = f"nats://127.0.0.1:{port}"

    def serve() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _reachable("127.0.0.1", port):
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)
        return server

    server = serve()
    writer = sink(names, url=url, timeout=1)
    try:
        writer.write(batch(1, lines(3)))
        server.terminate()
        server.wait(10)
        later = batch(2, lines(2, device="e"))
        with pytest.raises(SinkError):
            writer.write(later)
        server = serve()  # back, with its stream on disk
        writer.write(later)
        writer.write(later)  # and a replay
        assert names.count(url) == 5
    finally:
        writer.close()
        server.terminate()
        server.wait(10)
