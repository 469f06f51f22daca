"""MQTT ingest: messages/s from a QoS 1 publish to a durable record, through Mosquitto.

The benchmark starts a Mosquitto of its own on a free loopback port (``mosquitto`` from
Debian's package; in memory, ``max_queued_messages`` raised from 1000 so that a burst
faster than the subscriber waits in the broker instead of being dropped there). A fresh
``rtclake run`` subscribes (source type ``mqtt``, QoS 1, its defaults) to it. Publisher
processes (paho-mqtt, QoS 1, MQTT 5) connect, then all start at the same moment and
publish their share of the messages as fast as the broker acknowledges them: ~230-byte
unique telemetry records (:mod:`bench.records`). Measured from that moment:

- *published*: the broker acknowledged every message to its publisher (PUBACK);
- *durable*: rtclake counted every message as received, which it does once the message
  is fsync'd in its spool, just before it sends the broker its PUBACK.

Then the server gets SIGTERM, drains its spool into the lake and exits; the lake must
hold every message once.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bench import report
from bench.records import fill, telemetry_record, utc_second
from bench.report import Verdict, num
from bench.server import BenchServer, get_text, lake_count, metric_sum

if TYPE_CHECKING:  # paho-mqtt loads in the processes that use it
    from paho.mqtt.client import Client

SECTION = "mqtt-ingest"
SOURCE = "bench_mqtt"
MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
"""
# The benchmark gives up when rtclake stored nothing new for this long.
STALL_S = 30.0


@dataclass(frozen=True)
class Options:
    messages: int = 50_000
    publishers: int = 2  # processes
    in_flight: int = 500  # unacknowledged messages per publisher
    flush_interval: float = 1.0
    keep_data: bool = False
    write_docs: bool = True
    out_dir: Path = report.ROOT / "bench" / "out"


@dataclass(frozen=True)
class Result:
    messages: int
    published_s: float  # from the start to the last publisher's last PUBACK
    durable_s: float  # from the start to rtclake's last message made durable
    cpu_s: float  # the server's CPU seconds meanwhile
    fsyncs: float  # group-commit fsyncs of the spool meanwhile
    lake_rows: int  # after SIGTERM (the drain): must equal messages (+ probes)
    expected_rows: int


def _client() -> Client:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[int]:
    """A Mosquitto of the benchmark's own on a free loopback port (yields the port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = folder / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port))
    with open(folder / "mosquitto.log", "ab") as log:
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _publish(
    port: int, index: int, topic: str, count: int, in_flight: int, start_at: float
) -> float:
    """One publisher process: connect, wait for ``start_at`` (wall clock), publish
    ``count`` QoS 1 messages, wait for every PUBACK; returns when that was (wall clock)."""
    client = _client()
    client.max_inflight_messages_set(in_flight)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    template = telemetry_record(random.Random(index), f"p{index}", 0, index)
    time.sleep(max(0.0, start_at - time.time()))
    second, at = utc_second(), time.monotonic()
    sent = []
    for n in range(count):
        if n % 1000 == 0 and time.monotonic() - at >= 1:
            second, at = utc_second(), time.monotonic()
        sent.append(client.publish(topic, fill(template, n, second), qos=1))
    for info in sent:
        info.wait_for_publish(120)
    done = time.time()
    client.disconnect()
    client.loop_stop()
    return done


def _received(server: BenchServer) -> float:
    text = get_text(server.port, "/metrics", timeout=10.0)
    return metric_sum(text, "rtclake_records_received_total", source=SOURCE)


def measure(opts: Options, console: Console) -> Result:
    run = uuid.uuid4().hex[:8]
    data = opts.out_dir / f"mqtt-{run}"
    data.mkdir(parents=True)
    try:
        with mosquitto(data) as port:
            return _measure(opts, console, data, port)
    finally:
        if not opts.keep_data:
            shutil.rmtree(data, ignore_errors=True)


def _measure(opts: Options, console: Console, data: Path, port: int) -> Result:
    topic = "rtclake-bench"
    env = {
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": f"{opts.flush_interval:g}",
        f"RTCLAKE_SOURCES__{SOURCE.upper()}__TYPE": "mqtt",
        f"RTCLAKE_SOURCES__{SOURCE.upper()}__URL": f"mqtt://127.0.0.1:{port}",
        f"RTCLAKE_SOURCES__{SOURCE.upper()}__TOPICS": f'["{topic}/#"]',
    }
    server = BenchServer(data / "rtclake", data / "rtclake.log", env).start()
    try:
        probe = _client()
        probe.connect("127.0.0.1", port)
        probe.loop_start()
        deadline = time.monotonic() + 30
        while not _received(server):  # until the subscription holds
            if time.monotonic() > deadline:
                raise RuntimeError(f"rtclake never subscribed: {server.log()}")
            probe.publish(f"{topic}/probe", b"probe", qos=0)
            time.sleep(0.1)
        probe.disconnect()
        probe.loop_stop()
        time.sleep(0.5)
        probes = int(_received(server))
        shares = [opts.messages // opts.publishers] * opts.publishers
        shares[0] += opts.messages - sum(shares)
        console.print(f"MQTT ingest: {opts.messages:,} messages from {opts.publishers} publishers")
        with ProcessPoolExecutor(opts.publishers, mp_context=get_context("spawn")) as pool:
            start_at = time.time() + 3.0  # the publishers connect meanwhile
            futures = [
                pool.submit(_publish, port, i, f"{topic}/m", n, opts.in_flight, start_at)
                for i, n in enumerate(shares)
            ]
            before = server.counters()
            seen, progress_at = 0.0, time.monotonic()
            while seen < probes + opts.messages:
                failed = [f.exception() for f in futures if f.done() and f.exception()]
                if failed:
                    raise RuntimeError(f"a publisher failed: {failed[0]}")
                if time.monotonic() - progress_at > STALL_S:
                    console.print(f"[red]rtclake stored nothing for {STALL_S:g} s; stopping")
                    break
                time.sleep(0.01)
                now = _received(server)
                if now > seen:
                    seen, progress_at = now, time.monotonic()
            durable_at = time.time()
            after = server.counters()
            published_at = max(f.result() for f in futures)
        stopped = server.stop()
        if not stopped.clean:
            raise RuntimeError(f"rtclake did not stop cleanly: {server.log()}")
        rows = lake_count(server.data_dir, dedup=True)
    finally:
        if server.proc is not None:
            server.stop(timeout=30)
    spent = after.minus(before)
    return Result(
        opts.messages, published_at - start_at, durable_at - start_at, spent.cpu_seconds,
        spent.fsyncs, rows, probes + opts.messages,
    )  # fmt: skip


def rows_of(r: Result) -> list[list[str]]:
    return [
        ["Messages (QoS 1)", num(r.messages)],
        ["Published (broker PUBACKs), messages/s", num(r.messages / r.published_s)],
        ["Durable in rtclake, messages/s", num(r.messages / r.durable_s)],
        ["Time to the last durable message", f"{r.durable_s:.2f} s"],
        ["Server CPU per 1,000 messages", f"{r.cpu_s / r.messages * 1000 * 1000:.0f} ms"],
        ["Messages per spool fsync", num(r.messages / max(r.fsyncs, 1), 1)],
        ["Lake rows after the drain (probes included)", num(r.lake_rows)],
    ]


def verdicts(r: Result) -> list[Verdict]:
    return [
        Verdict(
            "every message in the lake once",
            f"{num(r.expected_rows)} rows",
            f"{num(r.lake_rows)} rows",
            r.lake_rows == r.expected_rows,
        )
    ]


def command(argv: Sequence[str]) -> str:
    return "make bench" if not argv else ".venv/bin/python -m bench " + shlex.join(argv)


def markdown(r: Result, opts: Options, argv: Sequence[str], facts: list[tuple[str, str]]) -> str:
    return "\n".join(
        [
            "## MQTT ingest",
            "",
            f"Command: `{command(argv)}`",
            "",
            "Machine:",
            "",
            *(f"- {name}: {value}" for name, value in facts),
            "",
            "Setup: a Mosquitto of its own on 127.0.0.1 (Debian's package, in memory,"
            " `max_queued_messages 10000000`: with the default 1000 a burst faster than the"
            " subscriber is dropped by the broker); a fresh"
            f" `python -m rtclake run` with one `mqtt` source (QoS 1, MQTT 5, its defaults)"
            f" and `RTCLAKE_SPOOL__FLUSH_INTERVAL={opts.flush_interval:g}`;"
            f" {opts.publishers} paho-mqtt publisher processes, QoS 1, up to"
            f" {opts.in_flight} unacknowledged messages each, ~230-byte unique telemetry"
            " records, all starting at one moment. *Durable*: rtclake counted the last"
            " message received (fsync'd in its spool, which is when it acknowledges it to"
            " the broker).",
            "",
            report.md_table(["", "value"], rows_of(r)),
            "",
            report.md_table(
                ["Check", "Required", "Measured", "Result"],
                [[v.name, v.required, v.measured, v.result] for v in verdicts(r)],
            ),
        ]
    )


def run(opts: Options, argv: Sequence[str]) -> int:
    """Measure, print the tables, update the docs; 0 if the lake holds every message once."""
    console = Console()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    facts = [*report.machine(opts.out_dir), report.busy_before(console)]
    result = measure(opts, console)
    checks = verdicts(result)
    report.print_tables(
        console,
        report.rich_table(f"MQTT ingest ({command(argv)})", ["", "value"], rows_of(result)),
        report.rich_table(
            "Checks",
            ["Check", "Required", "Measured", "Result"],
            [[v.name, v.required, v.measured, v.result] for v in checks],
            verdict_col=3,
        ),
    )
    if opts.write_docs:
        report.update_section(SECTION, markdown(result, opts, argv, facts))
        console.print(f"Updated the '{SECTION}' section of {report.BENCHMARKS_MD}")
    return 0 if all(v.passed for v in checks) else 1
