"""The websocket sink against a WebSocket server of the test's own (``websockets``, on
loopback): one text message per record with its id (or chunks), a replay that sends the
same ids again (the receiver's dedupe by id keeps its count), confirmation by pong or by
the receiver's acks, an outage as SinkError, and refusals (a nack, a message over the
receiver's max_size) in ``dead_letters`` behind the writer."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from rtclake.catalog import default_registry
from rtclake.errors import ConfigError, SinkError
from rtclake.sinks.base import Rejected
from rtclake.sinks.websocket import WebSocketConfig, WebSocketSink
from rtclake.sinks.websocket import build as build_sink
from rtclake.testing import free_port
from tests.test_query import batch
from tests.test_redis_sink import BEYOND_FLOATS
from tests.test_sora_webhooks import App


class Receiver:
    """A WebSocket server on loopback: keeps every message (parsed), the handshake
    headers and, as a receiver should, the records by id (a replay adds nothing). In ack
    mode it answers each record with ``{"ack": id}``, or ``{"nack": id, "reason": ...}``
    when ``refuse(record)`` gives a reason."""

    def __init__(self, ack: bool = False, max_size: int = 2**20, silent: bool = False) -> None:
        self.port = free_port()
        self.ack, self.max_size, self.silent = ack, max_size, silent
        self.refuse: Callable[[dict[str, Any]], str | None] = lambda record: None
        self.messages: list[dict[str, Any]] = []
        self.headers: list[Headers] = []
        self.records: dict[str, dict[str, Any]] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/records"

    def start(self) -> Receiver:
        self._server = serve(self._handle, "127.0.0.1", self.port, max_size=self.max_size)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            assert self._thread is not None
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers.append(ws.request.headers)
        with contextlib.suppress(ConnectionClosed):  # as when a message is over max_size
            self._receive(ws)

    def _receive(self, ws: ServerConnection) -> None:
        for data in ws:
            assert isinstance(data, str)  # text frames
            message = orjson.loads(data)
            self.messages.append(message)
            if "records" in message:
                assert set(message) == {"table", "batch", "records"}
                records = message["records"]
            else:
                assert set(message) == {"record_id", "table", "batch", "record"}
                assert message["record"]["record_id"] == message["record_id"]
                records = [message["record"]]
            for record in records:
                reason = self.refuse(record)
                if reason is None:
                    self.records.setdefault(record["record_id"], record)
                if self.ack and not self.silent:
                    answer = {"ack": record["record_id"]} if reason is None else {
                        "nack": record["record_id"], "reason": reason}  # fmt: skip
                    ws.send(orjson.dumps(answer).decode())


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait for ``condition``: without acks, the sink's confirmation (a pong) says the
    receiver's WebSocket layer read the messages, not that its handler is done with them."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def lines(n: int, device: str = "d") -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "%s%d", "temp": %d}'
        % (i, device.encode(), i, 20 + i)
        for i in range(n)
    )


def sink(url: str, **settings: Any) -> WebSocketSink:
    made = WebSocketSink(WebSocketConfig(url=url, **settings), default_registry(), "ws")
    made.start()
    return made


def test_one_text_message_per_record_with_its_id_and_a_replay_adds_nothing() -> None:
    with Receiver() as receiver:
        writer = sink(receiver.url, headers={"Authorization": "Bearer t0ken"})
        made = batch(1, lines(5))
        writer.write(made)
        writer.write(made)  # the writer delivers at least once: a replay, the same ids
        writer.close()
        ids = made.tables["telemetry"]["record_id"].to_pylist()
        assert until(lambda: len(receiver.messages) == 10)
        assert [m["record_id"] for m in receiver.messages] == ids + ids
        assert list(receiver.records) == ids  # the receiver's dedupe by id: 5, not 10
        first = receiver.messages[0]
        assert (first["table"], first["batch"]) == ("telemetry", made.name)
        assert first["record"]["device_id"] == "d0" and first["record"]["extra"] == {"temp": 20}
        assert first["record"]["time"] == "2026-11-20T00:00:00Z"
        assert receiver.headers[0]["Authorization"] == "Bearer t0ken"
        assert len(receiver.headers) == 1  # one connection for both writes


def test_chunks_hold_up_to_chunk_records_and_stay_under_max_message_bytes() -> None:
    with Receiver() as receiver:
        writer = sink(receiver.url, chunk=3)
        writer.write(batch(1, lines(7)))
        assert until(lambda: len(receiver.records) == 7)
        assert [len(m["records"]) for m in receiver.messages] == [3, 3, 1]
        assert len(receiver.records) == 7
        receiver.messages.clear()
        small = sink(receiver.url, chunk=100, max_message_bytes=1200)
        small.write(batch(2, lines(7)))
        assert until(lambda: sum(len(m["records"]) for m in receiver.messages) == 7)
        sizes = [len(orjson.dumps(m)) for m in receiver.messages]
        assert len(sizes) > 1 and max(sizes) <= 1200
        assert sum(len(m["records"]) for m in receiver.messages) == 7
        writer.close()
        small.close()


def test_numbers_beyond_a_float_are_sent_as_written() -> None:
    for chunk in (1, 10):
        writer = WebSocketSink(WebSocketConfig(url="ws://127.0.0.1:9", chunk=chunk),
                               default_registry(), "ws")  # fmt: skip
        body = b"\n".join(m.body for m in writer._messages(batch(1, BEYOND_FLOATS)))
        assert b'"extra":{"big":1e400}' in body
        assert b'"extra":{"env":{"low":-1e400}}' in body
        assert b'"extra":{"digits":' + b"9" * 400 + b"}" in body


def test_a_record_larger_than_max_message_bytes_is_refused_and_the_rest_sent() -> None:
    with Receiver() as receiver:
        writer = sink(receiver.url, max_message_bytes=2000)
        body = lines(2) + b'\n{"time": "2026-11-20T00:01:00Z", "big": "' + b"x" * 3000 + b'"}'
        with pytest.raises(Rejected) as refused:
            writer.write(batch(1, body))
        [(row, reason)] = refused.value.rows["telemetry"]
        assert row == 2 and "over max_message_bytes (2000)" in reason
        assert until(lambda: len(receiver.records) == 2)
        writer.close()


def test_a_message_the_receiver_closes_on_as_too_big_is_refused_and_the_rest_sent() -> None:
    with Receiver(max_size=2000) as receiver:  # the receiver's limit is below ours
        writer = sink(receiver.url)
        big = b'{"time": "2026-11-20T00:01:00Z", "big": "' + b"x" * 3000 + b'"}'
        made = batch(1, lines(3) + b"\n" + big + b"\n" + lines(2, device="e"))
        with pytest.raises(Rejected) as refused:
            writer.write(made)
        [(row, reason)] = refused.value.rows["telemetry"]
        assert row == 3 and "closed the connection with 1009 (message too big)" in reason
        ids = made.tables["telemetry"]["record_id"].to_pylist()
        assert until(lambda: set(receiver.records) == set(ids) - {ids[3]})
        writer.write(batch(2, lines(2, device="f")))  # the next batch: all at once again
        assert until(lambda: len(receiver.records) == 7)
        writer.close()


def test_with_acks_a_nacked_record_is_refused_with_the_receivers_reason() -> None:
    with Receiver(ack=True) as receiver:
        receiver.refuse = lambda r: "no device d1 here" if r["device_id"] == "d1" else None
        writer = sink(receiver.url, ack=True, window=2)
        made = batch(1, lines(4))
        with pytest.raises(Rejected) as refused:
            writer.write(made)
        assert refused.value.rows == {
            "telemetry": [(1, "the receiver refused it: no device d1 here")]
        }
        assert sorted(r["device_id"] for r in receiver.records.values()) == ["d0", "d2", "d3"]
        chunked = sink(receiver.url, ack=True, chunk=10)
        with pytest.raises(Rejected) as refused:  # a nack refuses its record, not the chunk
            chunked.write(batch(2, lines(4)))
        assert [row for row, _ in refused.value.rows["telemetry"]] == [1]
        writer.close()
        chunked.close()


def test_no_ack_in_time_is_an_outage_and_the_retry_sends_again() -> None:
    with Receiver(ack=True, silent=True) as receiver:
        writer = sink(receiver.url, ack=True, timeout=0.5)
        made = batch(1, lines(2))
        with pytest.raises(SinkError, match="no acknowledgement of 2 records"):
            writer.write(made)
        receiver.silent = False
        writer.write(made)  # the same ids again: the receiver keeps each once
        assert len(receiver.messages) == 4 and len(receiver.records) == 2
        writer.close()


def test_a_receiver_down_is_an_outage_and_once_back_it_gets_everything() -> None:
    receiver = Receiver()
    writer = WebSocketSink(WebSocketConfig(url=receiver.url, timeout=2), default_registry(), "ws")
    writer.start()  # logs the outage; the first write meets it
    made = batch(1, lines(3))
    with pytest.raises(SinkError, match="cannot connect"):
        writer.write(made)
    with receiver:
        writer.write(made)  # the delivery's retry of the same batch
        assert until(lambda: len(receiver.records) == 3)
    # the receiver went away (its connection closed): the next batch waits for it
    later = batch(2, lines(2, device="e"))
    with pytest.raises(SinkError):
        writer.write(later)
    with receiver:
        writer.write(later)
        assert until(lambda: len(receiver.records) == 5)
    writer.close()


def test_an_outage_longer_than_give_up_after_sends_the_batch_to_dead_letters() -> None:
    receiver = Receiver()
    writer = WebSocketSink(
        WebSocketConfig(url=receiver.url, give_up_after=60), default_registry(), "ws"
    )
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
    assert reason.startswith("gave up after 60 s of outage: websocket: cannot connect")
    assert refused.value.outage == reason  # the receiver is out: the sink counts as down
    with pytest.raises(Rejected) as refused:  # the outage goes on: the next batch at once
        writer.write(batch(2, lines(1, device="e")))
    assert refused.value.outage is not None
    with receiver:
        writer.write(batch(3, lines(1, device="f")))  # back: delivered, the clock stops
        assert until(lambda: len(receiver.records) == 1)
    clock[0] += 600
    with pytest.raises(SinkError):  # a new outage starts its own clock
        writer.write(batch(4, lines(1, device="g")))
    writer.close()


def test_only_ws_urls_and_known_tables_are_taken() -> None:
    from rtclake.config import Settings
    from rtclake.metrics import Metrics
    from rtclake.registry import BuildContext, load_registry

    registry = load_registry()
    ctx = BuildContext("ws", Settings(node="t"), registry, Metrics())
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        build_sink(WebSocketConfig(url="http://127.0.0.1:9/"), ctx)
    with pytest.raises(ConfigError, match="unknown tables"):
        build_sink(WebSocketConfig(url="ws://127.0.0.1:9/", tables=["telemetri"]), ctx)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(ack=True)
    yield made
    made.stop()


def test_behind_the_writer_nothing_is_lost_while_the_receiver_is_down_and_refusals_are_dead_letters(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.refuse = lambda r: "unknown device" if "bad" in str(r["device_id"]) else None
    sinks = {"ws": {"type": "websocket", "url": receiver.url, "tables": ["telemetry"],
                    "ack": True, "timeout": 2}}  # fmt: skip
    app = App(tmp_path, sinks=sinks, writer={"retry_initial": 0.05, "retry_max": 0.2}).start()
    try:
        for part in range(3):  # the receiver is down: the records wait in the spool
            body = lines(5).replace(b'"d', b'"p%d-' % part)
            assert app.post("/ingest/sensors", body).status_code == 200
        time.sleep(1.0)  # the delivery tries, and backs off
        assert receiver.records == {}
        receiver.start()
        # the writer takes batches in order for every sink: the lake waited for it too
        assert app.wait_rows("SELECT count(*) FROM telemetry", 15) == 15
        assert until(lambda: len(receiver.records) == 15, 20)
        ids = {row[0] for row in app.rows("SELECT record_id FROM telemetry")}
        assert set(receiver.records) == ids
        assert app.post("/ingest/sensors", lines(2, device="bad")).status_code == 200
        letters = "SELECT count(*) FROM dead_letters"
        assert app.wait_rows(letters, 2) == 2
        assert app.rows(
            "SELECT sink, table_name, reason, record->>'device_id' FROM dead_letters"
            " ORDER BY 4"
        ) == [["ws", "telemetry", "the receiver refused it: unknown device", f"bad{i}"]
              for i in range(2)]  # fmt: skip
        assert len(receiver.records) == 15
    finally:
        app.stop()
