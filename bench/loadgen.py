"""A lean HTTP/1.1 load generator: asyncio (uvloop) raw sockets with keep-alive.

Each connection sends one request, reads the full response (status line, headers up to
``Content-Length``, body), and sends the next one: a closed loop, so latency is measured
from the first byte sent to the last byte received. Requests are pre-built (see
:mod:`bench.records`). A worker process runs many connections; the benchmark may start
several workers. Every phase is bounded in time and in request count, and a request that
gets no answer within ``request_timeout`` is given up and counted as *unanswered*: the
server may still have stored it, so the lake check allows for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import uvloop

from bench.records import fill, jsonl_body, post_request, utc_second


@dataclass(frozen=True)
class LoadSpec:
    """What one worker process does (picklable)."""

    worker: int
    host: str
    port: int
    path: str
    records_per_request: int
    connections: int
    templates_per_connection: int
    start_at: float  # time.monotonic() (CLOCK_MONOTONIC, shared by all processes)
    window_start: float  # results of requests completing in [window_start, window_end]
    window_end: float  # no request is sent after this
    max_requests_per_connection: int
    request_timeout: float
    rate: float = 0.0  # requests/s of this worker on a fixed schedule; 0: closed loop
    seed: int = 0


@dataclass
class WorkerResult:
    """What one worker saw. ``acked_records`` counts every 2xx, warm-up included."""

    worker: int
    statuses: Counter[int] = field(default_factory=Counter)  # every answer, whole run
    acked_records: int = 0
    window_requests: int = 0  # 2xx answers completed in the window
    window_records: int = 0
    window_rejected: Counter[int] = field(default_factory=Counter)  # non-2xx in the window
    latencies: list[float] = field(default_factory=list)  # seconds, 2xx in the window
    errors: Counter[str] = field(default_factory=Counter)
    unanswered_requests: int = 0
    unanswered_records: int = 0
    accepted_mismatch: int = 0  # 2xx whose {"accepted": N} differs from what was sent
    cpu_seconds: float = 0.0
    window_cpu_seconds: float = 0.0
    late_start: float = 0.0  # seconds the worker was not ready at start_at
    capped: int = 0  # connections that stopped at max_requests_per_connection


class ProtocolError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """Status code, head and body of one HTTP/1.1 response with a ``Content-Length``."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ProtocolError(f"unexpected status line {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ProtocolError("response without Content-Length")
    end = lower.find(b"\r\n", at + 2)
    length = int(lower[at + 17 : end])
    body = await reader.readexactly(length) if length else b""
    return status, lower, body


def retry_after(head: bytes, default: float = 1.0) -> float:
    """Seconds from a lower-cased head's ``Retry-After`` (``default`` if absent)."""
    at = head.find(b"\r\nretry-after:")
    if at < 0:
        return default
    end = head.find(b"\r\n", at + 2)
    value = head[at + 14 : end].strip()
    return float(value) if value.isdigit() else default


def accepted_count(body: bytes) -> int:
    """N from the ingest answer ``{"accepted":N}`` (-1 if the body is something else)."""
    key = b'"accepted":'
    at = body.find(key)
    if at < 0:
        return -1
    digits = body[at + len(key) :].strip().rstrip(b"}").strip()
    return int(digits) if digits.isdigit() else -1


class Worker:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.result = WorkerResult(spec.worker)
        rng = random.Random(spec.seed * 1000 + spec.worker)
        self.templates: list[list[bytes]] = []
        for conn in range(spec.connections):
            tag = f"w{spec.worker}c{conn:03d}"
            self.templates.append(
                [
                    post_request(
                        spec.host,
                        spec.port,
                        spec.path,
                        jsonl_body(rng, f"{tag}t{t}", spec.records_per_request),
                    )
                    for t in range(spec.templates_per_connection)
                ]
            )
        self._second = 0
        self._second_bytes = b""
        self._cpu_at_start = 0.0

    def _now_second(self) -> bytes:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._second_bytes = utc_second(now)
        return self._second_bytes

    async def run(self) -> WorkerResult:
        spec = self.spec
        loop = asyncio.get_running_loop()
        self.result.late_start = max(0.0, time.monotonic() - spec.start_at)
        await asyncio.sleep(spec.start_at - time.monotonic())
        cpu0 = time.process_time()
        # loop.time() is time.monotonic() for asyncio and uvloop alike.
        marks = [
            loop.call_at(spec.window_start, self._mark_window_cpu, True),
            loop.call_at(spec.window_end, self._mark_window_cpu, False),
        ]
        await asyncio.gather(*(self._connection(i) for i in range(spec.connections)))
        for mark in marks:
            mark.cancel()
        self.result.cpu_seconds = time.process_time() - cpu0
        return self.result

    def _mark_window_cpu(self, start: bool) -> None:
        if start:
            self._cpu_at_start = time.process_time()
        else:
            self.result.window_cpu_seconds = time.process_time() - self._cpu_at_start

    async def _connection(self, index: int) -> None:
        spec, result = self.spec, self.result
        templates = self.templates[index]
        records = spec.records_per_request
        latencies = result.latencies
        sent = 0
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        # Paced: this connection's k-th request is due at start_at + (k * connections +
        # index) / rate, and its latency counts from then (no coordinated omission).
        interval = spec.connections / spec.rate if spec.rate > 0 else 0.0
        due = spec.start_at + (index / spec.rate if spec.rate > 0 else 0.0)
        while sent < spec.max_requests_per_connection and time.monotonic() < spec.window_end:
            if interval:
                await asyncio.sleep(due - time.monotonic())
                if due >= spec.window_end:
                    break
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                except OSError as exc:
                    result.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.1)
                    continue
            assert reader is not None
            data = fill(templates[sent % len(templates)], sent, self._now_second())
            sent += 1
            started = due if interval else time.monotonic()
            due += interval
            try:
                async with asyncio.timeout(spec.request_timeout):
                    writer.write(data)
                    await writer.drain()
                    status, head, body = await read_response(reader)
            except TimeoutError:
                result.unanswered_requests += 1
                result.unanswered_records += records
                result.errors["timeout"] += 1
                writer = await _close(writer)
                continue
            except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
                # The request may or may not have been stored: count it as unanswered.
                result.unanswered_requests += 1
                result.unanswered_records += records
                result.errors[type(exc).__name__] += 1
                writer = await _close(writer)
                continue
            finished = time.monotonic()
            result.statuses[status] += 1
            in_window = spec.window_start <= finished <= spec.window_end
            if 200 <= status < 300:
                accepted = accepted_count(body)
                if accepted != records:
                    result.accepted_mismatch += 1
                acked = max(accepted, 0)
                result.acked_records += acked
                if in_window:
                    result.window_requests += 1
                    result.window_records += acked
                    latencies.append(finished - started)
            else:
                if in_window:
                    result.window_rejected[status] += 1
                if status == 503 and not interval:
                    # Spool full: back off as told, like a well-behaved client.
                    pause = min(retry_after(head), spec.window_end - time.monotonic())
                    await asyncio.sleep(max(0.0, pause))
        if sent >= spec.max_requests_per_connection:
            result.capped += 1
        if writer is not None:
            await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def run_worker(spec: LoadSpec) -> WorkerResult:
    """Entry point of a worker process."""
    worker = Worker(spec)
    gc.collect()
    gc.freeze()  # the templates are long-lived; keep the collector off them
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(worker.run())
