"""The nats sink for the sink benchmark (bench/sinks.py): this machine's NATS server
(127.0.0.1:4222, JetStream on), through a JetStream stream of the run's own (created by
the sink, de-duplicating replays by record id), deleted afterwards."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.nats import NATSConfig, NATSSink

HOST, PORT = "127.0.0.1", 4222
URL = f"nats://{HOST}:{PORT}"


def _on_server(action: Callable[[Any], Any]) -> Any:
    import nats

    async def main() -> Any:
        nc = await nats.connect(URL, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            return await action(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    try:
        socket.create_connection((HOST, PORT), timeout=1).close()
    except OSError as exc:
        print(f"nats: no server at {URL}: {exc}")
        return None
    token = uuid.uuid4().hex[:8]
    stream = f"RTCLAKE_BENCH_{token.upper()}"
    config = NATSConfig(url=URL, prefix=f"rtclakebench{token}.", stream=stream)
    sink = NATSSink(config, default_registry(), "nats")
    sink.start()

    def count() -> int:
        async def messages(js: Any) -> int:
            return int((await js.stream_info(stream)).state.messages)

        return int(_on_server(messages))

    def cleanup() -> None:
        sink.close()

        async def delete(js: Any) -> None:
            await js.delete_stream(stream)

        _on_server(delete)

    return sink, count, cleanup
