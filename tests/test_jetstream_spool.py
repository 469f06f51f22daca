"""The replicated spool (``spool.backend: jetstream``) against the NATS server of this
machine (one server: replication is documented, docs/SPOOL-JETSTREAM.md, not tested).

Every acknowledged record is in the lake exactly once, counted by identity: raw rows (the
views' de-duplication off) per record ``seq`` and per ``record_id``. Half the records
carry a time of their own, half do not (their record id is their entry's position, which
must survive a redelivery). Each test uses a stream and subjects of its own and deletes
them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from rtclake.catalog import default_registry
from rtclake.config import SpoolConfig
from rtclake.delivery import Delivery
from rtclake.errors import ConfigError
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch
from rtclake.spool import EntryHeader, frame
from rtclake.spool_jetstream import JetStreamSpool, JetStreamWriter
from rtclake.testing import MemorySink, TcpRelay, free_port
from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP, post, stored_counts

NATS_URL = os.environ.get("RTCLAKE_TEST_NATS_URL", "nats://127.0.0.1:4222")
T = TypeVar("T")


def _nats_up() -> bool:
    host, port = NATS_URL.removeprefix("nats://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not _nats_up(), reason=f"no NATS server at {NATS_URL}"),
    pytest.mark.timeout(60),
]


def on_nats(call: Callable[[Client, JetStreamContext], Awaitable[T]]) -> T:
    """Run ``call`` with a fresh connection (for the test's own look at the streams)."""

    async def run() -> T:
        nc = await nats.connect(NATS_URL)
        try:
            return await call(nc, nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


class Stream:
    """A stream name and subject prefix of one test, and the settings naming them."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        self.name = f"RTCLAKE_TEST_{tag}"
        self.prefix = f"rtclake-test.{tag}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "RTCLAKE_SPOOL__BACKEND": "jetstream",
            "RTCLAKE_SPOOL__JETSTREAM__URL": NATS_URL,
            "RTCLAKE_SPOOL__JETSTREAM__STREAM": self.name,
            "RTCLAKE_SPOOL__JETSTREAM__SUBJECT_PREFIX": self.prefix,
            "RTCLAKE_SPOOL__JETSTREAM__ACK_WAIT": "2",
            **NO_DEDUP,
            **extra,
        }

    def config(self, **jetstream: Any) -> SpoolConfig:
        """A spool's settings for this stream (ack_wait 2 s, as :meth:`env`'s)."""
        return SpoolConfig.model_validate(
            {
                "backend": "jetstream",
                "flush_interval": 0.5,
                "jetstream": {
                    "url": NATS_URL,
                    "stream": self.name,
                    "subject_prefix": self.prefix,
                    "ack_wait": 2,
                    **jetstream,
                },
            }
        )

    def state(self) -> Any:
        async def call(nc: Client, js: JetStreamContext) -> Any:
            return (await js.stream_info(self.name)).state

        return on_nats(call)

    def shared(self) -> tuple[int, float]:
        """The stream's max_bytes and the consumer's ack_wait, as the server has them."""

        async def call(nc: Client, js: JetStreamContext) -> tuple[int, float]:
            stream = (await js.stream_info(self.name)).config
            consumer = (await js.consumer_info(self.name, "rtclake-writer")).config
            assert stream.max_bytes is not None and consumer.ack_wait is not None
            return stream.max_bytes, consumer.ack_wait

        return on_nats(call)

    def delete(self) -> None:
        async def call(nc: Client, js: JetStreamContext) -> None:
            for name in (self.name, f"{self.name}-quarantine"):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)

        on_nats(call)


@pytest.fixture
def stream() -> Iterator[Stream]:
    made = Stream()
    yield made
    made.delete()


def batch(first: int, n: int) -> bytes:
    # Half the records carry a time, half do not (their record id is their position).
    return b"\n".join(
        orjson.dumps({"seq": i, **({"time": 1_795_132_800 + i} if i % 2 else {})})
        for i in range(first, first + n)
    )


def ids(server: Server, stream: str) -> tuple[int, int]:
    """Rows and distinct record ids of one stream's records in the lake (raw rows)."""
    rows = server.query(
        f"SELECT count(*), count(DISTINCT record_id) FROM telemetry WHERE stream = '{stream}'"
    )["rows"][0]
    return int(rows[0]), int(rows[1])


def stored(server: Server, stream: str, n: int, timeout: float = 20) -> bool:
    return bool(wait_for(lambda: sum(stored_counts(server, stream).values()) >= n, timeout))


def test_every_acknowledged_record_is_stored_once(make_server: Any, stream: Stream) -> None:
    server: Server = make_server(**stream.env())
    assert server.health().json()["spool_backend"] == "jetstream"
    for first in range(0, 1000, 100):
        assert post(server, "k", batch(first, 100)).json() == {"accepted": 100}
    assert stored(server, "k", 1000)
    assert stored_counts(server, "k") == Counter(range(1000))
    assert ids(server, "k") == (1000, 1000)
    # acknowledged after the lake's commit, the entries left the (work-queue) stream
    assert wait_for(lambda: stream.state().messages == 0, 5)
    assert stream.state().last_seq == 10  # one message per request


@pytest.mark.parametrize("step", ["jetstream.before_ack", "lake.before_commit"])
def test_writer_killed_before_the_ack_stores_nothing_twice(
    make_server: Any, tmp_path: Path, stream: Stream, step: str
) -> None:
    data = tmp_path / "data"
    # the first batch passes the point, the second kills the writer there
    server: Server = make_server(data, RTCLAKE_FAULTS=f"{step}=kill@1", **stream.env())
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert stored(server, "k", 100)
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert server.proc is not None
    server.proc.wait(20)
    assert server.proc.returncode == -signal.SIGKILL

    # the consumer redelivers the unacknowledged entries (ack_wait: 2 s) to the new run
    again: Server = make_server(data, **stream.env())
    assert post(again, "k", batch(200, 100)).json() == {"accepted": 100}
    assert stored(again, "k", 300, timeout=25)
    wait_for(lambda: stream.state().messages == 0, 10)
    assert stored_counts(again, "k") == Counter(range(300))
    assert ids(again, "k") == (300, 300)


def test_ingest_node_disk_lost_after_acknowledging(
    make_server: Any, tmp_path: Path, stream: Stream
) -> None:
    lake = str(tmp_path / "lake")
    ingest_dir = tmp_path / "ingest"
    # an ingest-only node: it publishes, it does not consume
    ingest: Server = make_server(
        ingest_dir,
        RTCLAKE_NODE="ingest",
        RTCLAKE_LAKE__ROOT=lake,
        RTCLAKE_SPOOL__JETSTREAM__CONSUME="false",
        **stream.env(),
    )
    for first in range(0, 500, 100):
        assert post(ingest, "k", batch(first, 100)).json() == {"accepted": 100}
    assert stream.state().messages == 5  # in the stream, nobody consumed them
    ingest.stop(signal.SIGKILL)
    shutil.rmtree(ingest_dir)  # the node and its disk are gone

    writer: Server = make_server(
        tmp_path / "writer", RTCLAKE_NODE="writer", RTCLAKE_LAKE__ROOT=lake, **stream.env()
    )
    assert stored(writer, "k", 500)
    assert stored_counts(writer, "k") == Counter(range(500))
    assert ids(writer, "k") == (500, 500)


def test_a_retry_with_the_same_idempotency_key_is_stored_once(
    make_server: Any, stream: Stream
) -> None:
    server: Server = make_server(**stream.env())
    body = batch(0, 100)
    key = {"Idempotency-Key": "req-1"}
    assert post(server, "k", body, **key).json() == {"accepted": 100}
    assert post(server, "k", body, **key).json() == {"accepted": 100}  # a retry
    assert stream.state().last_seq == 1  # JetStream dropped the copy (Nats-Msg-Id)
    assert stored(server, "k", 100)
    # a retry after the first was stored and left the stream: the lake finds the ids
    assert post(server, "k", body, **key).json() == {"accepted": 100}
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert stored(server, "k", 200)
    assert wait_for(lambda: stream.state().messages == 0, 10)
    assert stored_counts(server, "k") == Counter(range(200))
    assert ids(server, "k") == (200, 200)


def test_a_message_that_is_not_an_entry_is_quarantined(make_server: Any, stream: Stream) -> None:
    server: Server = make_server(**stream.env())

    async def publish(nc: Client, js: JetStreamContext) -> None:
        await js.publish(f"{stream.prefix}.telemetry", b"not an entry")

    on_nats(publish)
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert stored(server, "k", 100)
    assert stored_counts(server, "k") == Counter(range(100))

    async def quarantined(nc: Client, js: JetStreamContext) -> Any:
        return await js.get_last_msg(
            f"{stream.name}-quarantine", f"{stream.prefix}-quarantine.telemetry"
        )

    copy = on_nats(quarantined)
    assert copy.data == b"not an entry"
    assert "not an rtclake spool entry" in copy.headers["Rtclake-Reason"]
    assert wait_for(lambda: stream.state().messages == 0, 10)


def test_more_replicas_than_servers_is_refused_at_start(stream: Stream) -> None:
    config = SpoolConfig.model_validate(
        {
            "backend": "jetstream",
            "jetstream": {
                "url": NATS_URL,
                "stream": stream.name,
                "subject_prefix": stream.prefix,
                "replicas": 3,
            },
        }
    )

    async def start() -> None:
        spool = JetStreamSpool(config, node="test")
        try:
            await spool.start()
        finally:
            await spool.close()

    with pytest.raises(ConfigError, match="replicas"):
        asyncio.run(start())


def test_rtclake_run_that_cannot_start_says_why_in_one_line(tmp_path: Path, stream: Stream) -> None:
    """`rtclake run` refused by NATS (a stream of more replicas than servers) exits 3
    with the reason in one log line, not the server's traceback of its start."""
    from tests.test_cli import rtclake

    out = rtclake("run", cwd=tmp_path, RTCLAKE_SERVER__PORT=str(free_port()),
                  **stream.env(RTCLAKE_SPOOL__JETSTREAM__REPLICAS="3"))  # fmt: skip
    assert out.returncode == 3, out.stderr
    lines = [line for line in out.stderr.splitlines() if "rtclake cannot start" in line]
    assert len(lines) == 1 and "replicas > 1 not supported" in lines[0], out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "Application startup failed" in out.stderr


def test_no_pub_ack_no_acknowledgement(make_server: Any, stream: Stream) -> None:
    """NATS out of reach: ingest answers 503 (nothing buffered for later), /healthz says
    so; once it is back, ingest goes on and only what was acknowledged is stored."""
    host, port = NATS_URL.removeprefix("nats://").rsplit(":", 1)
    relay = TcpRelay((host, int(port)))
    try:
        server: Server = make_server(
            **stream.env(
                RTCLAKE_SPOOL__JETSTREAM__URL=f"nats://127.0.0.1:{relay.port}",
                RTCLAKE_SPOOL__JETSTREAM__TIMEOUT="2",
            )
        )
        assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
        assert stored(server, "k", 100)
        relay.down()
        refused = post(server, "k", batch(1000, 100))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "jetstream_unavailable"
        assert refused.headers["retry-after"]
        assert wait_for(lambda: server.health().status_code == 503, 5)
        relay.up()
        assert wait_for(lambda: server.health().status_code == 200, 15)
        assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
        assert stored(server, "k", 200)
        assert wait_for(lambda: stream.state().messages == 0, 10)
        assert stored_counts(server, "k") == Counter(range(200))
    finally:
        relay.down()


def test_an_entry_over_the_servers_max_payload_is_refused(make_server: Any, stream: Stream) -> None:
    server: Server = make_server(**stream.env())
    line = orjson.dumps({"pad": "x" * 1000})
    refused = post(server, "k", b"\n".join([line] * 1100))  # ~1.1 MB, over 1 MiB
    assert refused.status_code == 413, refused.text
    assert "max_payload" in refused.json()["message"]
    assert stream.state().messages == 0


def test_a_batch_that_cannot_be_stored_is_quarantined_after_five_tries(
    make_server: Any, stream: Stream
) -> None:
    server: Server = make_server(**stream.env(RTCLAKE_WRITER__RETRY_INITIAL="0.05"))
    header = EntryHeader(
        table="no_such_table", source="x", stream="k", kind="x", received_us=1, records=1
    )

    async def publish(nc: Client, js: JetStreamContext) -> None:
        await js.publish(
            f"{stream.prefix}.no_such_table",
            frame(header, b'{"a": 1}'),
            headers={"Rtclake-Position": "jsbad:0:1"},
        )

    on_nats(publish)

    async def quarantined(nc: Client, js: JetStreamContext) -> Any:
        try:
            return await js.get_last_msg(
                f"{stream.name}-quarantine", f"{stream.prefix}-quarantine.no_such_table"
            )
        except NotFoundError:
            return None

    copy = wait_for(lambda: on_nats(quarantined), 15)
    assert copy is not None and copy.data == frame(header, b'{"a": 1}')
    assert "cannot convert" in copy.headers["Rtclake-Reason"]
    assert copy.headers["Rtclake-Origin"] == f"{stream.name}:1"
    assert server.metric("rtclake_spool_quarantined_segments_total") == 1
    # the batches behind it flow
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert stored(server, "k", 100)
    assert wait_for(lambda: stream.state().messages == 0, 10)


GiB = 1024 * 1024 * 1024  # spool.max_bytes' default, the stream's max_bytes


def test_a_node_with_other_shared_settings_is_refused_and_changes_nothing(
    make_server: Any, tmp_path: Path, stream: Stream
) -> None:
    """The stream and the consumer are shared: a node started with another max_bytes or
    ack_wait exits 3 naming the setting and both values, and the stream and consumer
    keep theirs (it had applied its own to them, under the nodes running)."""
    from tests.test_cli import rtclake

    server: Server = make_server(**stream.env())
    assert stream.shared() == (GiB, 2.0)
    for setting, value, expected in [
        ("MAX_BYTES", "50000000", f"max_bytes {GiB} (this node: 50000000)"),
        ("ACK_WAIT", "30", "ack_wait 2 (this node: 30)"),
    ]:
        out = rtclake("run", cwd=tmp_path, timeout=30, RTCLAKE_SERVER__PORT=str(free_port()),
                      **stream.env(**{f"RTCLAKE_SPOOL__JETSTREAM__{setting}": value}))  # fmt: skip
        assert out.returncode == 3, out.stderr
        lines = [line for line in out.stderr.splitlines() if "rtclake cannot start" in line]
        assert len(lines) == 1 and expected in lines[0], out.stderr
        assert "nothing was changed" in lines[0]
        assert stream.shared() == (GiB, 2.0)
    assert server.health().status_code == 200


def header() -> EntryHeader:
    return EntryHeader(
        table="telemetry", source="t", stream="k", kind="telemetry", received_us=1, records=1
    )


class SlowSink(MemorySink):
    """A sink whose write takes ``seconds`` (a slow commit); ``writing`` is set once a
    write began."""

    def __init__(self, seconds: float) -> None:
        super().__init__("lake")
        self.seconds = seconds
        self.writing = threading.Event()

    def write(self, batch: Batch) -> None:
        self.writing.set()
        time.sleep(self.seconds)
        super().write(batch)


def test_a_writer_renews_by_the_consumers_ack_wait_not_its_own(stream: Stream) -> None:
    """The consumer's ack_wait is lowered to 2 s under a writer configured with 30 (as
    an operator's `nats consumer edit --wait 2s` does): a batch it holds 5 s while
    committing is not redelivered to another writer (it had renewed every 10 s, by its
    own setting)."""
    sink = SlowSink(5)

    async def scenario() -> tuple[list[Any], int]:
        spool = JetStreamSpool(stream.config(ack_wait=30), node="a")
        await spool.start()
        metrics = Metrics()
        delivery = Delivery([sink], metrics)
        writer = JetStreamWriter(spool, delivery, default_registry(), metrics, node="a")
        await writer.start()
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            have = (await js.consumer_info(stream.name, "rtclake-writer")).config
            await js.add_consumer(stream.name, replace(have, ack_wait=2.0))
            await spool.append(header(), b'{"seq": 1}')
            assert await asyncio.to_thread(sink.writing.wait, 10)
            # another writer of the same consumer, asking while the batch is committed
            other = await js.pull_subscribe_bind("rtclake-writer", stream.name)
            try:
                redelivered = await other.fetch(1, timeout=6)
            except TimeoutError:
                redelivered = []
            assert await writer.drain(10)
            info = await js.stream_info(stream.name)
            return redelivered, info.state.messages
        finally:
            await nc.close()
            await writer.stop()
            await spool.close()
            delivery.close()

    redelivered, left = asyncio.run(scenario())
    assert redelivered == []
    assert left == 0  # acknowledged after the commit
    assert sink.column("telemetry", "stream") == ["k"]  # stored once


def test_without_manage_stream_the_stream_and_consumer_are_used_as_they_are(
    stream: Stream,
) -> None:
    """``manage_stream: false``: a node of other settings neither changes nor is refused
    by the existing stream and consumer; it works by their values."""

    async def scenario() -> tuple[int, float]:
        first = JetStreamSpool(stream.config(), node="a")
        await first.start()
        await first.subscribe()
        await first.close()
        other = JetStreamSpool(
            stream.config(manage_stream=False, ack_wait=30, max_bytes=50_000_000), node="b"
        )
        await other.start()
        try:
            await other.subscribe()
            return other.max_bytes, await other.read_ack_wait()
        finally:
            await other.close()

    assert asyncio.run(scenario()) == (GiB, 2.0)
    assert stream.shared() == (GiB, 2.0)
