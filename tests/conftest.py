"""Shared test tooling: fixtures around :mod:`rtclake.testing` (real rtclake processes on
free loopback ports)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtclake.testing import RunningServer, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # copies of the public-format samples
Server = RunningServer  # the name the tests use
__all__ = ["FIXTURES", "ROOT", "Server", "free_port", "wait_for"]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """Factory of started servers; every server is stopped at the end of the test."""
    servers: list[Server] = []

    def make(data_dir: Path | None = None, **env: str) -> Server:
        server = Server(data_dir or tmp_path / "data", env=env)
        server.data_dir.mkdir(parents=True, exist_ok=True)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        if server.proc is not None:
            server.stop(signal.SIGKILL)


@pytest.fixture
def server(make_server: Any) -> Server:
    server: Server = make_server()
    return server
