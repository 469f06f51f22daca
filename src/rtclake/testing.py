"""Helpers for testing rtclake and its extensions: a memory sink, a running server, an
HTTP receiver (a stand-in for Slack or a webhook), and polling with a deadline. rtclake's
own tests use them; so can a test of your own source, processor or sink (``from
rtclake.testing import MemorySink, RunningServer``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
        # rtclake's settings and Kraken's (KRAKENB_*, which start components) come from
        # the test alone, never from the shell that runs it
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RTCLAKE_", "KRAKENB_"))}
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


@dataclass(frozen=True)
class Received:
    """One request an :class:`HttpReceiver` got, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """An HTTP server on a free loopback port, in a thread, that records every POST and
    answers 200 ``ok``, or the statuses queued by :meth:`answer` for a path (with the body
    ``invalid_payload``, as Slack does): a stand-in for Slack, a webhook receiver or any
    HTTP API a sink calls.

    ``with HttpReceiver() as receiver:`` starts and stops it; ``receiver.url + "/hook"``.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._answers: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    queued = receiver._answers.get(self.path) or []
                    status = queued.pop(0) if queued else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append(Received("POST", self.path, headers, body, status))
                text = b"ok" if status < 300 else b"invalid_payload"
                self.send_response(status)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads self.requests instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, path: str, *statuses: int) -> None:
        """Answer the next requests to ``path`` with ``statuses``, in order (then 200)."""
        with self._lock:
            self._answers.setdefault(path, []).extend(statuses)

    def received(self, path: str) -> list[Received]:
        """The requests to ``path``, in the order they came (each with its answer)."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, every: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or the deadline
    passes (the last value is returned, for the caller's assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


class TcpRelay:
    """A TCP relay to ``target`` (host, port) on a loopback port of its own, for outage
    tests: :meth:`down` refuses connections and cuts the open ones, :meth:`up` accepts
    again, :meth:`cut` only drops the open connections (a network drop)."""

    def __init__(self, target: tuple[str, int], *, up: bool = True) -> None:
        self.target = target
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []
        if up:
            self.up()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        self.cut()

    def cut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.sockets = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            self.sockets += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for sock in (a, b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
