"""The websocket sink for the sink benchmark (bench/sinks.py): a WebSocket receiver of the
run's own on loopback (``websockets``' threaded server), which keeps each record id once,
as a receiver that drops replays does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.websocket import WebSocketConfig, WebSocketSink
from rtclake.testing import free_port


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import ServerConnection, serve

    ids: set[str] = set()
    received = [0]  # messages read by the handler

    def handle(ws: ServerConnection) -> None:
        try:
            for data in ws:
                message = orjson.loads(data)
                if "records" in message:
                    ids.update(r["record_id"] for r in message["records"])
                else:
                    ids.add(message["record_id"])
                received[0] += 1
        except ConnectionClosed:
            pass

    port = free_port()
    server = serve(handle, "127.0.0.1", port, max_size=None)
    thread = threading.Thread(target=server.serve_forever, name="bench-ws", daemon=True)
    thread.start()
    sink = WebSocketSink(
        WebSocketConfig(url=f"ws://127.0.0.1:{port}/rtclake"), default_registry(), "websocket"
    )
    sink.start()

    def count() -> int:
        # a pong confirms the receiver read the messages; its handler may be a moment behind
        last, deadline = -1, time.monotonic() + 10
        while received[0] != last and time.monotonic() < deadline:
            last = received[0]
            time.sleep(0.05)
        return len(ids)

    def cleanup() -> None:
        sink.close()
        server.shutdown()
        thread.join(10)

    return sink, count, cleanup
