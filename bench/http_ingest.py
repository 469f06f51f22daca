"""HTTP ingest: records/s, latency and server memory for batched and single-record POSTs.

Each phase gets a fresh ``rtclake run`` process (default settings: fsync'd spool with
group commit, Parquet lake with zstd) on a free loopback port with its own data folder,
and a flush interval of 1 s, so the writer drains the spool into Parquet *during* the
measurement, as in production. Load comes from separate processes (:mod:`bench.loadgen`).

Phases:

- ``batch``: JSON Lines bodies of 1,000 records, closed loop (each connection sends its
  next request when the previous one is answered): the most the server acknowledges.
- ``paced``: the same bodies on a fixed schedule at the target rate (100,000 records/s):
  can the whole pipeline, writer included, *sustain* that rate? The spool backlog must not
  grow and the writer must store what comes in. Latency counts from the scheduled send.
- ``single``: one ~230-byte record per request, closed loop, many connections.

After the load the server gets SIGTERM, drains its spool into the lake and exits; the
lake must then hold exactly the records the server acknowledged with a 2xx.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from bench import report
from bench.loadgen import LoadSpec, WorkerResult, run_worker
from bench.report import Verdict, mb, ms, num, pct
from bench.server import (
    SLOW_FSYNC,
    BenchServer,
    Sampler,
    ServerCounters,
    Stopped,
    get_json,
    lake_count,
    spool_leftover,
)

SECTION = "http-ingest"

TARGET_BATCH_RECORDS_PER_S = 100_000
TARGET_SINGLE_REQUESTS_PER_S = 3_000
TARGET_PEAK_RSS = 400_000_000  # bytes: 400 MB
BATCH_RECORDS = 1000
# The paced phase passes if the writer stored at least this share of what was acked.
SUSTAINED_SHARE = 0.9
# rtclake's shutdown gives the writer this long to drain the spool (Service.stop, and
# uvicorn's graceful shutdown limit); records left after it replay on the next start.
DRAIN_TIME_LIMIT = 30.0
# A per-connection request cap far above what one connection can reach, so that it only
# stops a runaway loop; hitting it is reported.
MAX_REQUESTS_PER_S_PER_CONNECTION = 2_000


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    records_per_request: int
    connections: int
    workers: int  # client processes; connections are split between them
    templates_per_connection: int  # distinct pre-built bodies per connection
    rate: float = 0.0  # requests/s on a fixed schedule; 0: closed loop

    @property
    def stream(self) -> str:
        return f"bench-{self.name}"


@dataclass(frozen=True)
class Options:
    duration: float = 15.0
    warmup: float = 3.0
    flush_interval: float = 1.0
    request_timeout: float = 30.0
    batch_connections: int = 8
    paced_connections: int = 16
    paced_records_per_s: float = TARGET_BATCH_RECORDS_PER_S
    single_connections: int = 64
    client_workers: int = 1
    phases: tuple[str, ...] = ("batch", "paced", "single")
    server_env: tuple[tuple[str, str], ...] = ()  # extra settings, e.g. to try a change
    keep_data: bool = False
    write_docs: bool = True
    out_dir: Path = report.ROOT / "bench" / "out"


@dataclass(frozen=True)
class Window:
    """When a phase's load runs, in ``time.monotonic()`` seconds: from ``start_at`` (warm-up
    first), measured from ``start`` to ``end``; nothing is sent after ``end``."""

    start_at: float
    start: float
    end: float


# Work that runs beside a phase's ingest load, such as query clients: entered with the
# server and the window before the load starts, exited once the load generator is done.
Alongside = Callable[[BenchServer, Window], AbstractContextManager[object]]


def phases(opts: Options) -> list[Phase]:
    every = {
        "batch": Phase(
            "batch",
            f"Batched ({BATCH_RECORDS:,} records/request), max",
            BATCH_RECORDS,
            opts.batch_connections,
            opts.client_workers,
            templates_per_connection=4,
        ),
        "paced": Phase(
            "paced",
            f"Batched, paced at {opts.paced_records_per_s:,.0f} records/s",
            BATCH_RECORDS,
            opts.paced_connections,
            opts.client_workers,
            templates_per_connection=4,
            rate=opts.paced_records_per_s / BATCH_RECORDS,
        ),
        "single": Phase(
            "single",
            "Single record/request, max",
            1,
            opts.single_connections,
            opts.client_workers,
            templates_per_connection=256,
        ),
    }
    return [every[name] for name in opts.phases]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``nan`` if empty)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class PhaseResult:
    phase: Phase
    window: float  # seconds measured
    workers: list[WorkerResult]
    server: ServerCounters  # what the server did in the window
    machine_busy: float  # share of all CPUs busy in the window, 0..1
    rss_peak_load: int  # VmHWM at the end of the load
    rss_end_load: int  # VmRSS at the end of the load
    sampler: Sampler
    stopped: Stopped
    lake: int  # count(*) FROM telemetry, deduplicated by record_id (the default view)
    lake_raw: int  # the same without deduplication: every stored row
    leftover: int  # spool bytes still on disk at the end (after a replay, if one was needed)
    unflushed: int = 0  # spool bytes the shutdown left (drain timeout); replayed by a restart
    replay: Stopped | None = None
    quarantined: int = 0  # bytes of segments the writer set aside as unconvertible
    latencies: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.latencies = sorted(lat for w in self.workers for lat in w.latencies)

    def total(self, name: str) -> int:
        return sum(getattr(w, name) for w in self.workers)

    def statuses(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for w in self.workers:
            out.update(w.statuses)
        return out

    def errors(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for w in self.workers:
            out.update(w.errors)
        return out

    @property
    def requests_per_s(self) -> float:
        return self.total("window_requests") / self.window

    @property
    def records_per_s(self) -> float:
        return self.total("window_records") / self.window

    @property
    def stored_per_s(self) -> float:
        return self.server.stored_rows / self.window

    @property
    def acked(self) -> int:
        return self.total("acked_records")

    @property
    def non_2xx(self) -> Counter[int]:
        return Counter({s: n for s, n in self.statuses().items() if not 200 <= s < 300})

    @property
    def client_cpu(self) -> float:
        """CPU seconds of the load generator in the window."""
        return sum(w.window_cpu_seconds for w in self.workers)

    @property
    def other_cpu(self) -> float:
        """CPU seconds spent in the window by neither the server nor the load generator."""
        busy = self.machine_busy * (psutil.cpu_count() or 1) * self.window
        return max(0.0, busy - self.server.cpu_seconds - self.client_cpu)

    @property
    def mean_fsync(self) -> float:
        return self.server.fsync_seconds / self.server.fsyncs if self.server.fsyncs else math.nan

    @property
    def peak_rss(self) -> int:
        replay = self.replay.peak_rss if self.replay else 0
        return max(self.rss_peak_load, self.stopped.peak_rss, replay)

    @property
    def lake_ok(self) -> bool:
        unknown = self.total("unanswered_records")
        exact = self.acked <= self.lake <= self.acked + unknown and self.lake_raw == self.lake
        clean = self.stopped.clean and (self.replay is None or self.replay.clean)
        return exact and clean and not self.leftover and not self.quarantined

    def lake_check(self) -> str:
        unknown = self.total("unanswered_records")
        told = f"{num(self.lake)} in lake / {num(self.acked)} acked"
        if unknown:
            told += f" (+ up to {num(unknown)} unanswered)"
        if self.lake_raw != self.lake:
            told += f", {num(self.lake_raw - self.lake)} duplicate rows"
        if self.leftover:
            told += f", {mb(self.leftover)} left in the spool"
        if self.quarantined:
            told += f", {mb(self.quarantined)} quarantined"
        if self.replay:
            told += f" (after a restart replayed {mb(self.unflushed)} the shutdown left spooled)"
        return told


# -- running -----------------------------------------------------------------------------


def run_phase(
    phase: Phase, opts: Options, console: Console, alongside: Alongside | None = None
) -> PhaseResult:
    base = opts.out_dir / "http-ingest"
    data_dir = base / phase.name
    shutil.rmtree(data_dir, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    log_path = base / f"{phase.name}-server.log"
    log_path.unlink(missing_ok=True)
    env = {"RTCLAKE_SPOOL__FLUSH_INTERVAL": str(opts.flush_interval), **dict(opts.server_env)}
    server = BenchServer(data_dir, log_path, env).start()
    mode = f"paced at {phase.rate:,.0f} requests/s" if phase.rate else "closed loop"
    console.print(
        f"[bold]{phase.title}[/]: rtclake pid {server.pid} on 127.0.0.1:{server.port}; "
        f"{phase.connections} connections in {phase.workers} client process(es), {mode}; "
        f"{opts.warmup:g} s warm-up + {opts.duration:g} s measured"
    )
    try:
        load = _load(server, phase, opts, console, alongside)
    except BaseException:
        server.stop(timeout=10)
        raise
    stopped = server.stop()
    unflushed = spool_leftover(data_dir)
    replay = None
    if unflushed:
        # The shutdown drain has a time limit; what it left is durable and replays on the
        # next start. Do that, so the lake check still counts every acknowledged record.
        console.print(
            f"[yellow]shutdown left {mb(unflushed)} in the spool; restarting rtclake to replay it"
        )
        replay = replay_spool(BenchServer(data_dir, log_path, env))
    lake_settings = {k: v for k, v in opts.server_env if k.startswith("RTCLAKE_LAKE__")}
    lake = lake_count(data_dir, dedup=True, settings=lake_settings)
    lake_raw = lake_count(data_dir, dedup=False, settings=lake_settings)
    leftover = spool_leftover(data_dir)
    quarantined = spool_leftover(data_dir, "quarantine/*.wal")
    if not stopped.clean or leftover or quarantined:
        console.print(f"[yellow]server log ({log_path}):[/]\n{server.log()}")
    if not opts.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    workers, counters, busy, status, sampler = load
    return PhaseResult(
        phase,
        opts.duration,
        workers,
        server=counters,
        machine_busy=busy,
        rss_peak_load=status["VmHWM"],
        rss_end_load=status["VmRSS"],
        sampler=sampler,
        stopped=stopped,
        lake=lake,
        lake_raw=lake_raw,
        leftover=leftover,
        unflushed=unflushed,
        replay=replay,
        quarantined=quarantined,
    )


def replay_spool(server: BenchServer, timeout: float = 600.0) -> Stopped:
    """Start ``server`` on a data dir with spooled records, wait until they are stored, stop."""
    server.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if get_json(server.port, "/healthz").get("spool_bytes") == 0:
                break
            time.sleep(0.5)
    except BaseException:
        server.stop(timeout=10)
        raise
    return server.stop()


def _load(
    server: BenchServer,
    phase: Phase,
    opts: Options,
    console: Console,
    alongside: Alongside | None = None,
) -> tuple[list[WorkerResult], ServerCounters, float, dict[str, int], Sampler]:
    start_at = time.monotonic() + 3.0  # time for the workers to start and build requests
    window_start = start_at + opts.warmup
    window_end = window_start + opts.duration
    per_worker = _split(phase.connections, phase.workers)
    max_requests = int(MAX_REQUESTS_PER_S_PER_CONNECTION * (opts.warmup + opts.duration))
    specs = [
        LoadSpec(
            worker=i,
            host="127.0.0.1",
            port=server.port,
            path=f"/ingest/{phase.stream}",
            records_per_request=phase.records_per_request,
            connections=n,
            templates_per_connection=phase.templates_per_connection,
            start_at=start_at,
            window_start=window_start,
            window_end=window_end,
            max_requests_per_connection=max_requests,
            request_timeout=opts.request_timeout,
            rate=phase.rate * n / phase.connections,
            seed=len(phase.name),
        )
        for i, n in enumerate(per_worker)
    ]
    limit = window_end + opts.request_timeout + 30.0
    with (
        ProcessPoolExecutor(len(specs), mp_context=get_context("spawn")) as pool,
        Sampler(server) as sampler,
        alongside(server, Window(start_at, window_start, window_end))
        if alongside
        else contextlib.nullcontext(),
    ):
        futures = [pool.submit(run_worker, spec) for spec in specs]
        _sleep_until(window_start)
        before, cpu_before = server.counters(), psutil.cpu_times()
        _sleep_until(window_end)
        after, cpu_after = server.counters(), psutil.cpu_times()
        try:
            results = [f.result(timeout=max(1.0, limit - time.monotonic())) for f in futures]
        except FutureTimeout:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
            raise RuntimeError("the load generator did not finish in time") from None
        status = server.status()
    for r in results:
        if r.late_start > 0:
            console.print(f"[yellow]client process {r.worker} started {r.late_start:.2f} s late")
        if r.capped:
            console.print(f"[yellow]{r.capped} connection(s) hit the request cap")
    busy = _busy_share(cpu_before, cpu_after)
    return results, after.minus(before), busy, status, sampler


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _busy_share(before: Any, after: Any) -> float:
    """The share of all CPUs that was busy between two ``psutil.cpu_times()``."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
    return 1 - idle / total if total > 0 else math.nan


# -- reporting ---------------------------------------------------------------------------


def _non_2xx(r: PhaseResult) -> str:
    bad = r.non_2xx
    return ", ".join(f"{n:,} × HTTP {s}" for s, n in sorted(bad.items())) if bad else "0"


def _errors(r: PhaseResult) -> str:
    errors = r.errors()
    text = ", ".join(f"{n:,} × {e}" for e, n in errors.items()) if errors else "0"
    if r.total("accepted_mismatch"):
        text += f"; {r.total('accepted_mismatch'):,} answers with a wrong accepted count"
    return text


def _shutdown(r: PhaseResult) -> str:
    text = f"{r.stopped.seconds:.1f} s, exit {r.stopped.exit_code}"
    if r.stopped.killed:
        text += " (killed)"
    if r.unflushed:
        text += f"; left {mb(r.unflushed)} spooled"
    return text


def _backlog(r: PhaseResult) -> str:
    growth = r.server.spool_bytes / r.window
    return f"max {mb(r.sampler.max_spool_bytes)}; growth in window {growth / 1e6:+,.1f} MB/s"


ROWS: list[tuple[str, Callable[[PhaseResult], str]]] = [
    ("Connections (client processes)", lambda r: f"{r.phase.connections} ({len(r.workers)})"),
    ("Requests/s (2xx)", lambda r: num(r.requests_per_s)),
    ("Records/s acknowledged (durable)", lambda r: num(r.records_per_s)),
    ("Latency p50", lambda r: ms(percentile(r.latencies, 0.50))),
    ("Latency p99", lambda r: ms(percentile(r.latencies, 0.99))),
    ("Latency max", lambda r: ms(r.latencies[-1]) if r.latencies else "-"),
    ("Non-2xx answers (whole run)", _non_2xx),
    ("Transport errors", _errors),
    ("Records/s written to the lake (writer)", lambda r: num(r.stored_per_s)),
    ("Spool backlog", _backlog),
    (
        "Spool fsyncs (group commits)",
        lambda r: (
            f"{num(r.server.fsyncs / r.window)}/s, mean {ms(r.mean_fsync)},"
            f" {num(r.server.slow_fsyncs)} over {float(SLOW_FSYNC) * 1000:g} ms"
        ),
    ),
    ("Server CPU (100 % = 1 core)", lambda r: pct(100 * r.server.cpu_seconds / r.window)),
    ("Client CPU (100 % = 1 core)", lambda r: pct(100 * r.client_cpu / r.window)),
    (
        "Other CPU: other processes, kernel (100 % = 1 core)",
        lambda r: pct(100 * r.other_cpu / r.window),
    ),
    ("Machine CPU busy (all cores)", lambda r: pct(100 * r.machine_busy)),
    ("Server peak RSS under load (VmHWM)", lambda r: mb(r.rss_peak_load)),
    ("Server RSS at end of load (VmRSS)", lambda r: mb(r.rss_end_load)),
    ("Server peak RSS, whole life (VmHWM)", lambda r: mb(r.peak_rss)),
    ("Shutdown (drains the spool)", _shutdown),
    ("Lake count check", lambda r: r.lake_check()),
]


def result_rows(results: Sequence[PhaseResult]) -> list[list[str]]:
    return [[label, *(cell(r) for r in results)] for label, cell in ROWS]


def verdicts(results: Sequence[PhaseResult]) -> list[Verdict]:
    by_name = {r.phase.name: r for r in results}
    out: list[Verdict] = []
    if batch := by_name.get("batch"):
        out.append(
            Verdict(
                "Batched ingest, durable (fsync'd) acknowledgement",
                f">= {num(TARGET_BATCH_RECORDS_PER_S)} records/s",
                f"{num(batch.records_per_s)} records/s",
                batch.records_per_s >= TARGET_BATCH_RECORDS_PER_S,
            )
        )
    if paced := by_name.get("paced"):
        offered = paced.phase.rate * paced.phase.records_per_request
        out.append(
            Verdict(
                f"Batched ingest sustained at {num(offered)} records/s (writer keeps up)",
                f"all 2xx, acked >= 99 % of offered, lake writes >= {SUSTAINED_SHARE:.0%} of acked",
                f"{num(paced.records_per_s)} acked/s, {num(paced.stored_per_s)} written/s, "
                f"{sum(paced.non_2xx.values()):,} non-2xx",
                not paced.non_2xx
                and paced.records_per_s >= 0.99 * offered
                and paced.stored_per_s >= SUSTAINED_SHARE * paced.records_per_s,
            )
        )
    if single := by_name.get("single"):
        out.append(
            Verdict(
                "Single small records",
                f">= {num(TARGET_SINGLE_REQUESTS_PER_S)} requests/s",
                f"{num(single.requests_per_s)} requests/s",
                single.requests_per_s >= TARGET_SINGLE_REQUESTS_PER_S,
            )
        )
    if results:
        worst = max(results, key=lambda r: r.peak_rss)
        out.append(
            Verdict(
                "Server peak RSS (every phase, shutdown included)",
                f"< {mb(TARGET_PEAK_RSS)}",
                f"{mb(worst.peak_rss)} ({worst.phase.name})",
                worst.peak_rss < TARGET_PEAK_RSS,
            )
        )
    for r in results:
        out.append(drain_verdict(r))
    for r in results:
        out.append(
            Verdict(
                f"Lake holds exactly the acked records ({r.phase.name})",
                "lake count = acked count, clean exit",
                r.lake_check(),
                r.lake_ok,
            )
        )
    return out


def drain_verdict(r: PhaseResult) -> Verdict:
    """On SIGTERM the server must store everything spooled, unless its drain time runs out."""
    seconds = r.stopped.seconds
    if not r.unflushed:
        measured, passed = f"all stored in {seconds:.1f} s", True
    elif seconds >= DRAIN_TIME_LIMIT - 1:
        measured, passed = f"drain limit reached, {mb(r.unflushed)} left to replay", True
    else:
        measured, passed = f"exited after {seconds:.1f} s leaving {mb(r.unflushed)} spooled", False
    return Verdict(
        f"Shutdown stores what is spooled ({r.phase.name})",
        f"nothing left, unless the {DRAIN_TIME_LIMIT:g} s drain limit is reached",
        measured,
        passed,
    )


def command(argv: Sequence[str]) -> str:
    return "make bench" if not argv else ".venv/bin/python -m bench " + shlex.join(argv)


def setup_text(opts: Options) -> str:
    return (
        "Setup: a fresh `python -m rtclake run` per phase on 127.0.0.1 with default settings"
        " (spool fsync on, group commit; Parquet lake, zstd) except"
        f" `RTCLAKE_SPOOL__FLUSH_INTERVAL={opts.flush_interval:g}`, so that the writer drains"
        " the spool into Parquet during the measurement. Client: separate processes with"
        " asyncio/uvloop raw sockets, HTTP/1.1 keep-alive, one request in flight per"
        " connection, ~230-byte unique telemetry records (device id, RFC 3339 time with"
        " microseconds, five numbers, a nested object), 503s honoured with Retry-After."
        f" Each phase: {opts.warmup:g} s warm-up, then {opts.duration:g} s measured; rates"
        " and latencies (first byte sent, or the scheduled send time when paced, to last byte"
        " received) count the 2xx answers completed in the measured window. Peak RSS is the"
        " kernel's high-water mark (VmHWM, under load and until the exit). After the load the"
        " server gets SIGTERM, drains the spool into the lake and exits; `rtclake query"
        " 'SELECT count(*) FROM telemetry'` must then equal the acknowledged count (if the"
        " shutdown's drain time limit leaves records spooled, a restart replays them first)."
        + "".join(f" Extra server setting: `{k}={v}`." for k, v in opts.server_env)
    )


def markdown(
    results: Sequence[PhaseResult], opts: Options, argv: Sequence[str], facts: list[tuple[str, str]]
) -> str:
    checks = verdicts(results)
    return "\n".join(
        [
            "## HTTP ingest",
            "",
            f"Command: `{command(argv)}`",
            "",
            "Machine:",
            "",
            *(f"- {name}: {value}" for name, value in facts),
            "",
            setup_text(opts),
            "",
            report.md_table(["", *(r.phase.title for r in results)], result_rows(results)),
            "",
            report.md_table(
                ["Target / check", "Required", "Measured", "Result"],
                [[v.name, v.required, v.measured, v.result] for v in checks],
            ),
        ]
    )


def run(opts: Options, argv: Sequence[str]) -> int:
    """Run the phases, print the tables, update the docs; 0 if every target and check held."""
    console = Console()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    facts = [*report.machine(opts.out_dir), report.busy_before(console)]
    results = [run_phase(phase, opts, console) for phase in phases(opts)]
    checks = verdicts(results)
    report.print_tables(
        console,
        report.rich_table("Machine", ["", ""], facts),
        report.rich_table(
            f"HTTP ingest ({command(argv)})",
            ["", *(r.phase.title for r in results)],
            result_rows(results),
        ),
        report.rich_table(
            "Targets and checks",
            ["Target / check", "Required", "Measured", "Result"],
            [[v.name, v.required, v.measured, v.result] for v in checks],
            verdict_col=3,
        ),
    )
    if opts.write_docs:
        report.update_section(SECTION, markdown(results, opts, argv, facts))
        console.print(f"Updated the '{SECTION}' section of {report.BENCHMARKS_MD}")
    return 0 if all(v.passed for v in checks) else 1
