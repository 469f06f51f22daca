"""A real ``rtclake run`` process for a benchmark, and what the benchmark reads of it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status`` (VmRSS, VmHWM, ...) in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name] = int(parts[0]) * 1024
    return out


def _hwm(pid: int) -> int:
    """The process's ``VmHWM`` (bytes); 0 once it has exited (a zombie has none)."""
    try:
        return proc_status(pid).get("VmHWM", 0)
    except OSError:
        return 0


def get_text(port: int, path: str, timeout: float = 2.0) -> str:
    """The body of ``GET path`` on the server (RuntimeError unless 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return body.decode()
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 2.0) -> dict[str, object]:
    data: dict[str, object] = json.loads(get_text(port, path, timeout))
    return data


# A bucket bound of rtclake_spool_fsync_seconds: fsyncs above it are counted as slow.
SLOW_FSYNC = "0.1"


@dataclass(frozen=True)
class ServerCounters:
    """Cumulative figures of the server at one moment (from ``/metrics`` and ``/proc``)."""

    at: float  # time.monotonic()
    cpu_seconds: float
    stored_rows: float  # rows the lake sink wrote
    fsyncs: float  # group-commit fsyncs of the spool
    fsync_seconds: float
    spool_bytes: float  # a level, not a count: minus() gives its growth
    slow_fsyncs: float  # fsyncs longer than SLOW_FSYNC: each one holds up every ack waiting

    def minus(self, before: ServerCounters) -> ServerCounters:
        return ServerCounters(
            self.at - before.at,
            self.cpu_seconds - before.cpu_seconds,
            self.stored_rows - before.stored_rows,
            self.fsyncs - before.fsyncs,
            self.fsync_seconds - before.fsync_seconds,
            self.spool_bytes - before.spool_bytes,
            self.slow_fsyncs - before.slow_fsyncs,
        )


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        rest = key[len(name) :]
        if rest and not rest.startswith("{"):
            continue
        if all(w in rest for w in wanted):
            total += float(value)
    return total


@dataclass
class Stopped:
    """How the server ended."""

    exit_code: int
    seconds: float  # from SIGTERM to exit (includes draining the spool into the lake)
    peak_rss: int  # bytes, over the whole life of the process (its last VmHWM read)
    killed: bool = False

    @property
    def clean(self) -> bool:
        """Exited by itself: uvicorn re-raises the SIGTERM once its shutdown is complete."""
        return not self.killed and self.exit_code in (0, -signal.SIGTERM)


@dataclass
class Sampler:
    """Samples the server's RSS and spool backlog while a phase runs."""

    server: BenchServer
    interval: float = 0.5
    max_rss: int = 0
    max_spool_bytes: int = 0
    last_spool_bytes: int = 0
    errors: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), VmRSS)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def rss_at(self, moment: float) -> int:
        """VmRSS of the first sample at or after ``moment`` (the last one if none; 0: none)."""
        later = [rss for at, rss in self.rss if at >= moment]
        return later[0] if later else self.rss[-1][1] if self.rss else 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rss = proc_status(self.server.pid)["VmRSS"]
                self.rss.append((time.monotonic(), rss))
                self.max_rss = max(self.max_rss, rss)
                spool = get_json(self.server.port, "/healthz")["spool_bytes"]
                assert isinstance(spool, int)
                self.last_spool_bytes = spool
                self.max_spool_bytes = max(self.max_spool_bytes, spool)
            except (OSError, RuntimeError, KeyError, AssertionError, ValueError):
                self.errors += 1


class BenchServer:
    """``python -m rtclake run`` on a free loopback port with its own data folder."""

    def __init__(self, data_dir: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
        env.update(
            RTCLAKE_DATA_DIR=str(self.data_dir),
            RTCLAKE_SERVER__PORT=str(self.port),
            RTCLAKE_NODE="bench",
            RTCLAKE_LOG_LEVEL="warning",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> BenchServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtclake", "run"],
            env=self.environ(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtclake exited with {self.proc.returncode}: {self.log()}")
            try:
                get_json(self.port, "/healthz", timeout=1.0)
                return self
            except (OSError, RuntimeError):
                time.sleep(0.1)
        self.stop(timeout=5)
        raise RuntimeError(f"rtclake did not start in {timeout} s: {self.log()}")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def config(self) -> dict[str, Any]:
        """The server's effective settings, as ``rtclake config`` prints them for its env."""
        done = subprocess.run(
            [sys.executable, "-m", "rtclake", "config"],
            env=self.environ(),
            capture_output=True,
            check=False,
            timeout=60,
            cwd=self.data_dir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rtclake config failed: {done.stderr.decode(errors='replace')}")
        settings: dict[str, Any] = yaml.safe_load(done.stdout)
        return settings

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far, all threads."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def counters(self) -> ServerCounters:
        text = get_text(self.port, "/metrics", timeout=10.0)
        return ServerCounters(
            at=time.monotonic(),
            cpu_seconds=self.cpu_seconds(),
            stored_rows=metric_sum(text, "rtclake_records_stored_total", sink="lake"),
            fsyncs=metric_sum(text, "rtclake_spool_fsync_seconds_count"),
            fsync_seconds=metric_sum(text, "rtclake_spool_fsync_seconds_sum"),
            spool_bytes=metric_sum(text, "rtclake_spool_bytes"),
            slow_fsyncs=metric_sum(text, "rtclake_spool_fsync_seconds_count")
            - metric_sum(text, "rtclake_spool_fsync_seconds_bucket", le=SLOW_FSYNC),
        )

    def stop(self, timeout: float = 120.0) -> Stopped:
        """SIGTERM (the server drains its spool into the lake), then wait; SIGKILL if stuck.

        The lifetime peak RSS is the process's own high-water mark (``VmHWM``), read until
        it exits (every 20 ms while it drains). Not ``wait4``'s ``ru_maxrss``: a child
        started by ``fork``/``vfork`` and ``exec`` counts the RSS its parent had then, so
        a server started by this (large) bench process showed the bench's RSS: 533.8 MB
        for both sides of ``--only catalog``.
        """
        assert self.proc is not None
        proc, killed = self.proc, False
        started = time.monotonic()
        peak = _hwm(proc.pid)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        deadline = started + timeout
        pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        while not pid:
            if time.monotonic() > deadline and not killed:
                proc.kill()
                killed = True
            peak = max(peak, _hwm(proc.pid))
            time.sleep(0.02)
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.proc = None
        if self._log is not None:
            self._log.close()
        return Stopped(proc.returncode, seconds, peak, killed)


def lake_count(
    data_dir: Path, *, dedup: bool, table: str = "telemetry", settings: dict[str, str] | None = None
) -> int:
    """``SELECT count(*)`` over the lake with ``rtclake query``, as a user would run it
    (``settings``: the server's ``RTCLAKE_*`` variables that say where the lake is)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    env.update(settings or {})
    env.update(RTCLAKE_DATA_DIR=str(data_dir), RTCLAKE_QUERY__DEDUP=str(dedup).lower())
    # A check, not a measurement: a hive lake's de-duplicating view windows over every
    # record id, which for the ~8M records of a batch phase outgrew the default 512 MiB
    # ("the query needs more memory than query.memory_limit allows", 2026-12-04).
    env.setdefault("RTCLAKE_QUERY__MEMORY_LIMIT", "4GiB")
    done = subprocess.run(
        [sys.executable, "-m", "rtclake", "query", f"SELECT count(*) FROM {table}", "-f", "csv"],
        env=env,
        capture_output=True,
        check=False,
        timeout=300,
        cwd=data_dir,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rtclake query failed: {done.stderr.decode(errors='replace')}")
    return int(done.stdout.split()[-1])


def spool_leftover(data_dir: Path, pattern: str = "*.wal") -> int:
    """Bytes of spool segments still on disk (0 once everything reached the lake).

    ``pattern="quarantine/*.wal"``: segments the writer set aside as unconvertible.
    """
    spool = data_dir / "spool"
    return sum(p.stat().st_size for p in spool.glob(pattern)) if spool.is_dir() else 0
