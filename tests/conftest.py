"""Shared test tooling: fixtures around :mod:`rtclake.testing` (real rtclake processes on
free loopback ports)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
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


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port (any bucket name, any credentials)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
