"""gRPC ingest of Kraken's contract (``kraken_grpc``): messages/s with a new connection per
message, as Kraken's collector sends (it connects, calls ProcessKrakenRequest and drops
the connection for every message), and over one reused connection.

One ``rtclake run`` serves every round; the two ways alternate round by round (the order
flips each round), so both see the same server, lake and noise. Each round starts fresh
client processes (asyncio, grpcio's aio client) that keep ``concurrency`` calls in flight
each, for a warm-up and then the measured seconds. A new connection per message uses a
channel of its own with a local subchannel pool (gRPC would otherwise share one
connection between channels to the same address); the reused way is one channel per
client process. Every call is a ~150-byte JSON reading, answered once durable. At the
end, the lake must hold every message answered.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from rich.console import Console

from bench import report
from bench.http_ingest import command, percentile
from bench.report import ms, num
from bench.server import BenchServer, free_port, lake_count, spool_leftover

SECTION = "grpc-ingest"
NEW = "new connection per message"
REUSED = "one reused connection"
MODES = (NEW, REUSED)
PATH = "/kraken.KrakenService/ProcessKrakenRequest"


@dataclass(frozen=True)
class Options:
    rounds: int = 5  # per way
    seconds: float = 5.0  # measured, per round
    warmup: float = 1.0  # per round
    concurrency: int = 16  # calls in flight per client process
    workers: int = 1  # client processes
    flush_interval: float = 1.0
    server_env: tuple[tuple[str, str], ...] = ()
    keep_data: bool = False
    write_docs: bool = True
    out_dir: Path = report.ROOT / "bench" / "out"


@dataclass
class Load:
    """What one client process saw in one round."""

    acked: int = 0  # every answer, warm-up included
    measured: int = 0  # answers completed in the measured window
    latencies: list[float] = field(default_factory=list)  # seconds, in the window
    errors: dict[str, int] = field(default_factory=dict)


def _payload(worker: int, n: int) -> bytes:
    return (
        b'{"device_id":"bench-%d-%d","time":"2026-11-23T12:00:00.%06dZ","temp":21.5,'
        b'"humidity":40.25,"battery":3.71,"rssi":-67,"site":"warehouse-7"}' % (worker, n % 64, n)
    )


async def _load(target: str, way: str, worker: int, concurrency: int, start: float,
                end: float) -> Load:  # fmt: skip
    import grpc

    from rtclake.integrations.kraken.contract import KrakenRequest, KrakenResponse

    out = Load()
    serialize, deserialize = KrakenRequest.SerializeToString, KrakenResponse.FromString
    fresh = [("grpc.use_local_subchannel_pool", 1)]  # a new TCP connection per channel
    shared = grpc.aio.insecure_channel(target) if way == REUSED else None

    async def call(request: object) -> None:
        if shared is not None:
            await shared.unary_unary(PATH, serialize, deserialize)(request, timeout=30)
            return
        async with grpc.aio.insecure_channel(target, options=fresh) as channel:
            await channel.unary_unary(PATH, serialize, deserialize)(request, timeout=30)

    async def loop(lane: int) -> None:
        n = lane
        while (sent := time.monotonic()) < end:
            request = KrakenRequest(
                collector_name="bench", content_type="application/json", metadata="{}",
                payload=_payload(worker, n),
            )  # fmt: skip
            n += concurrency
            try:
                await call(request)
            except grpc.RpcError as exc:
                name = str(exc.code())
                out.errors[name] = out.errors.get(name, 0) + 1
                continue
            done = time.monotonic()
            out.acked += 1
            if sent >= start and done <= end:
                out.measured += 1
                out.latencies.append(done - sent)

    await asyncio.gather(*(loop(lane) for lane in range(concurrency)))
    if shared is not None:
        await shared.close()
    return out


def _worker(target: str, way: str, worker: int, concurrency: int, start: float,
            end: float) -> Load:  # fmt: skip
    return asyncio.run(_load(target, way, worker, concurrency, start, end))


@dataclass
class Round:
    way: str
    seconds: float
    loads: list[Load]
    server_cpu: float  # seconds of the server's CPU in the round (warm-up included)

    @property
    def measured(self) -> int:
        return sum(load.measured for load in self.loads)

    @property
    def acked(self) -> int:
        return sum(load.acked for load in self.loads)

    @property
    def rate(self) -> float:
        return self.measured / self.seconds


def _round(server: BenchServer, target: str, way: str, opts: Options) -> Round:
    context = get_context("spawn")  # grpc must not be forked with live channels
    with ProcessPoolExecutor(opts.workers, mp_context=context) as pool:
        # the processes import grpc before the clock starts
        list(pool.map(_ready, range(opts.workers)))
        cpu = server.cpu_seconds()
        start = time.monotonic() + opts.warmup
        end = start + opts.seconds
        futures = [
            pool.submit(_worker, target, way, w, opts.concurrency, start, end)
            for w in range(opts.workers)
        ]
        loads = [f.result(timeout=opts.warmup + opts.seconds + 120) for f in futures]
    return Round(way, opts.seconds, loads, server.cpu_seconds() - cpu)


def _ready(_: int) -> None:
    import grpc  # noqa: F401

    import rtclake.integrations.kraken.contract  # noqa: F401


def _rows(rounds: Sequence[Round]) -> list[list[str]]:
    rows = []
    for way in MODES:
        mine = [r for r in rounds if r.way == way]
        rates = [r.rate for r in mine]
        latencies = sorted(lat for r in mine for load in r.loads for lat in load.latencies)
        acked = sum(r.acked for r in mine)
        cpu = sum(r.server_cpu for r in mine) / acked if acked else float("nan")
        errors = sum(sum(load.errors.values()) for r in mine for load in r.loads)
        rows.append([
            way,
            num(statistics.median(rates)),
            f"{num(min(rates))}-{num(max(rates))}",
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.99)),
            f"{cpu * 1e6:,.0f} µs",
            str(errors),
        ])  # fmt: skip
    return rows


HEADER = ["", "messages/s (median)", "range", "p50", "p99", "server CPU/message", "errors"]


def run(opts: Options, argv: Sequence[str]) -> int:
    """Alternate the two ways for ``rounds`` rounds each; print and record the table; 0 if
    every call was answered and the lake holds every answered message."""
    console = Console()
    data_dir = opts.out_dir / "grpc-ingest"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    facts = [*report.machine(opts.out_dir), report.busy_before(console)]
    target = f"127.0.0.1:{free_port()}"
    env = {
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": str(opts.flush_interval),
        "RTCLAKE_SOURCES__KRAKEN__TYPE": "kraken_grpc",
        "RTCLAKE_SOURCES__KRAKEN__LISTEN": target,
        **dict(opts.server_env),
    }
    server = BenchServer(data_dir / "data", data_dir / "server.log", env).start()
    console.print(
        f"[bold]gRPC ingest[/]: rtclake pid {server.pid}, Kraken's contract on {target};"
        f" {opts.rounds} rounds per way, {opts.warmup:g} s warm-up + {opts.seconds:g} s each,"
        f" {opts.workers} client process(es) x {opts.concurrency} calls in flight"
    )
    rounds: list[Round] = []
    try:
        for n in range(opts.rounds):
            for way in MODES if n % 2 == 0 else reversed(MODES):
                done = _round(server, target, way, opts)
                rounds.append(done)
                console.print(f"  round {n + 1}, {way}: {num(done.rate)} messages/s")
    finally:
        stopped = server.stop()
    acked = sum(r.acked for r in rounds)
    stored = lake_count(data_dir / "data", dedup=True)
    errors = sum(sum(load.errors.values()) for r in rounds for load in r.loads)
    left = spool_leftover(data_dir / "data")
    checks = [
        report.Verdict("every call answered", "0 errors", str(errors), errors == 0),
        report.Verdict(
            "the lake holds every answered message",
            f"{num(acked)} rows",
            f"{num(stored)} rows" + (f", {left} spool bytes left" if left else ""),
            stored == acked,
        ),
        report.Verdict(
            "clean shutdown",
            "exits by itself (0, or its SIGTERM re-raised)",
            str(stopped.exit_code),
            stopped.clean,
        ),
    ]
    title = f"gRPC ingest, Kraken's contract ({command(argv)})"
    report.print_tables(
        console,
        report.rich_table(title, HEADER, _rows(rounds)),
        report.rich_table(
            "Checks", ["Check", "Required", "Measured", "Result"],
            [[v.name, v.required, v.measured, v.result] for v in checks], verdict_col=3,
        ),
    )  # fmt: skip
    if opts.write_docs:
        report.update_section(SECTION, _markdown(rounds, opts, argv, facts, checks))
        console.print(f"Updated the '{SECTION}' section of {report.BENCHMARKS_MD}")
    if not opts.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if all(v.passed for v in checks) else 1


def _markdown(
    rounds: Sequence[Round],
    opts: Options,
    argv: Sequence[str],
    facts: Sequence[tuple[str, str]],
    checks: Sequence[report.Verdict],
) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in facts)
    return (
        f"## gRPC ingest (Kraken's contract)\n\nCommand: `{command(argv)}`\n\n"
        f"Machine:\n\n{machine}\n\n"
        "One `rtclake run` with a `kraken_grpc` source on 127.0.0.1 (spool fsync on, group"
        f" commit; `RTCLAKE_SPOOL__FLUSH_INTERVAL={opts.flush_interval:g}`). Each call is"
        " `ProcessKrakenRequest` with a ~150-byte JSON reading, answered once durable."
        f" {opts.workers} client process(es) (grpcio's asyncio client, on the same machine)"
        f" keep {opts.concurrency} calls in flight each; a *new connection per message* is"
        " what Kraken's collector does (connect, call, close: a TCP and HTTP/2 handshake per"
        " message), the other way is one channel per client process. The ways alternate,"
        f" {opts.rounds} rounds each of {opts.warmup:g} s warm-up and {opts.seconds:g} s"
        " measured; latency is from the call to its answer; server CPU per message counts"
        " the whole round.\n\n"
        + report.md_table(HEADER, _rows(rounds))
        + "\n\n"
        + report.md_table(
            ["Check", "Required", "Measured", "Result"],
            [[v.name, v.required, v.measured, v.result] for v in checks],
        )
    )
