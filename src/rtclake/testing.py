"""Helpers for testing rtclake and its extensions: a memory sink, a running server, and
polling with a deadline. rtclake's own tests use them; so can a test of your own source,
processor or sink (``from rtclake.testing import MemorySink, RunningServer``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from rtclake.sinks.base import Batch, Sink

T = TypeVar("T")


class QueryFailed(AssertionError):
    """A query of :meth:`RunningServer.query` did not answer 200."""


class MemorySink(Sink):
    """A sink that keeps every batch in memory, by batch name (a batch delivered again
    replaces itself, as the lake's files do). Thread-safe to read while the writer
    writes."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.batches: dict[str, Batch] = {}
        self._lock = threading.Lock()

    def write(self, batch: Batch) -> None:
        with self._lock:
            self.batches[batch.name] = batch

    def table(self, name: str) -> pa.Table | None:
        """Every row stored for lake table ``name`` (None if there is none)."""
        with self._lock:
            parts = [b.tables[name] for b in self.batches.values() if name in b.tables]
        return pa.concat_tables(parts, promote_options="default") if parts else None

    def column(self, table: str, name: str) -> list[Any]:
        """The values of one column of one lake table, over every batch."""
        rows = self.table(table)
        return [] if rows is None else rows[name].to_pylist()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """An ``rtclake run`` subprocess with its own data folder and a free loopback port:
    :meth:`start` returns once ``/healthz`` answers, :meth:`stop` sends a signal (SIGTERM
    by default; SIGKILL for a crash) and waits. Its output goes to ``server-PORT.log``
    beside the data folder (:meth:`log`)."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
        env.update(
            RTCLAKE_DATA_DIR=str(self.data_dir),
            RTCLAKE_SERVER__PORT=str(self.port),
            RTCLAKE_NODE="test",
            RTCLAKE_SPOOL__FLUSH_INTERVAL="0.5",
            RTCLAKE_LOG_LEVEL="warning",
        )
        env.update(self.env)
        return env

    def start(self, timeout: float = 20.0) -> RunningServer:
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtclake", "run"],
            env=self.environ(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtclake exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"rtclake did not start in {timeout} s: {self.log()}")

    def log(self) -> str:
        path = self.data_dir.parent / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def query(self, sql: str, **kw: Any) -> dict[str, Any]:
        """The JSON answer of ``POST /api/query``; raises :class:`QueryFailed` otherwise."""
        response = httpx.post(self.url + "/api/query", json={"sql": sql, **kw}, timeout=30)
        if response.status_code != 200:
            raise QueryFailed(f"{response.status_code}: {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def health(self) -> httpx.Response:
        """The answer of ``GET /healthz``."""
        return httpx.get(self.url + "/healthz", timeout=5)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on ``/metrics`` (0 if absent)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    def wait_rows(self, sql: str, expected: int, timeout: float = 20.0) -> int:
        """Poll ``sql`` (a single count) until it returns ``expected``; return the last value."""
        deadline = time.monotonic() + timeout
        value = -1
        while time.monotonic() < deadline:
            value = self.query(sql)["rows"][0][0]
            if value == expected:
                return int(value)
            time.sleep(0.2)
        return int(value)


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, every: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or the deadline
    passes (the last value is returned, for the caller's assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
