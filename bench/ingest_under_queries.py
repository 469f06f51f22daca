"""HTTP ingest under queries: single-record POSTs on a fixed schedule while SQL runs back to back.

The promise of the query limits (``query.memory_limit``, ``max_temp_bytes``,
``max_result_bytes``, ``max_concurrent``, ``threads``): queries cannot take the host's
memory, and ingest stays fast while they run. A fresh ``rtclake run`` (default settings,
the flush interval of :mod:`bench.http_ingest`) takes one-record POSTs paced at 1,000
requests/s (:mod:`bench.loadgen`'s paced mode: latency counts from the scheduled send).
For the same time, query clients POST to ``/api/query`` back to back, one more client than
the server's ``query.max_concurrent``, so that every slot is always busy and one query is
waiting. Each client goes round :data:`QUERIES`: what a dashboard asks of the table being
written, one query that needs more memory than ``query.memory_limit`` allows, and one
whose result is larger than ``query.max_result_bytes``.

Checks: ingest p99 under 100 ms (the goal), the server's peak RSS under
``max_concurrent`` x ``memory_limit`` + 400 MB, every acknowledged record stored (the lake
check of :mod:`bench.http_ingest`), both hostile queries refused with a 4xx, the lake
queries answered, and no 5xx anywhere.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from bench import http_ingest, report
from bench.http_ingest import PhaseResult, Window, percentile
from bench.report import Verdict, mb, ms, num, pct
from bench.server import BenchServer

SECTION = "ingest-under-queries"

TARGET_INGEST_P99 = 0.100  # seconds
# What the server may hold besides its queries: max_concurrent x memory_limit + this.
RSS_HEADROOM = 400_000_000  # bytes: 400 MB
# Share of the offered ingest rate that must be acknowledged in the window.
KEPT_RATE = 0.99
BUSY = 429  # query.max_concurrent slots taken for query.queue_timeout: allowed, not wanted


@dataclass(frozen=True)
class Query:
    """One query the clients send, and the status it must get (or 429 when busy)."""

    name: str
    sql: str
    expected: int


LAKE_QUERIES: tuple[Query, ...] = (
    Query(
        "count by device",
        "SELECT device_id, count(*) AS records, avg((extra->>'rtt_ms')::DOUBLE) AS rtt_ms"
        " FROM telemetry GROUP BY device_id ORDER BY records DESC, device_id LIMIT 20",
        200,
    ),
    Query(
        "per-second buckets",
        "SELECT time_bucket(INTERVAL '1 second', time) AS second, count(*) AS records,"
        " avg((extra->>'rtt_ms')::DOUBLE) AS rtt_ms,"
        " quantile_cont((extra->>'jitter_ms')::DOUBLE, 0.95) AS jitter_p95"
        " FROM telemetry GROUP BY second ORDER BY second DESC LIMIT 60",
        200,
    ),
    Query(
        "moving average (window)",
        "SELECT codec, time, rtt_ms,"
        " avg(rtt_ms) OVER (PARTITION BY codec ORDER BY time"
        " ROWS BETWEEN 99 PRECEDING AND CURRENT ROW) AS rtt_avg_100,"
        " rank() OVER (PARTITION BY codec ORDER BY rtt_ms DESC) AS rtt_rank"
        " FROM (SELECT time, extra->'video'->>'codec' AS codec,"
        " (extra->>'rtt_ms')::DOUBLE AS rtt_ms FROM telemetry)"
        " ORDER BY time DESC LIMIT 100",
        200,
    ),
    Query(
        "self join",
        "SELECT a.device_id, a.time AS earlier, b.time AS later, b.time - a.time AS gap"
        " FROM telemetry a JOIN telemetry b ON a.device_id = b.device_id AND a.time < b.time"
        " ORDER BY gap DESC LIMIT 50",
        200,
    ),
    Query(
        "totals",
        "SELECT count(*) AS records, count(DISTINCT device_id) AS devices,"
        " max(time) - min(time) AS span, max(received_at) AS last_received FROM telemetry",
        200,
    ),
)
# Issue 8's query that took the server to 7.8 GB: 400 strings of 20 MB.
MEMORY_HUNGRY = Query(
    "memory-hungry",
    "SELECT max(length(s)) FROM"
    " (SELECT repeat(chr(120), 20000000) || range::VARCHAR AS s FROM range(400))",
    422,
)
# 10,000 rows of 100 kB: a 1 GB JSON body before the result limit.
LARGE_RESULT = Query("large result", "SELECT repeat('x', 100000) FROM range(10000)", 413)
QUERIES: tuple[Query, ...] = (*LAKE_QUERIES, MEMORY_HUNGRY, LARGE_RESULT)


@dataclass(frozen=True)
class Options:
    duration: float = 60.0
    warmup: float = 3.0
    flush_interval: float = 1.0
    rate: float = 1000.0  # single-record requests/s, on a fixed schedule
    connections: int = 64
    client_workers: int = 1  # load generator processes
    query_clients: int = 0  # 0: the server's query.max_concurrent + 1
    query_timeout: float = 120.0  # seconds the client waits for one answer
    baseline: bool = True  # first the same ingest without queries, to tell what they add
    server_env: tuple[tuple[str, str], ...] = ()
    keep_data: bool = False
    write_docs: bool = True
    out_dir: Path = report.ROOT / "bench" / "out"

    def ingest(self) -> http_ingest.Options:
        """The options of :mod:`bench.http_ingest` that run the ingest side."""
        return http_ingest.Options(
            duration=self.duration,
            warmup=self.warmup,
            flush_interval=self.flush_interval,
            client_workers=self.client_workers,
            server_env=self.server_env,
            keep_data=self.keep_data,
            write_docs=self.write_docs,
            out_dir=self.out_dir,
        )

    def phase(self, queries: bool = True) -> http_ingest.Phase:
        return http_ingest.Phase(
            "queries" if queries else "baseline",
            f"Single records paced at {self.rate:,.0f} requests/s"
            + (", queries back to back" if queries else ", no queries"),
            records_per_request=1,
            connections=self.connections,
            workers=self.client_workers,
            templates_per_connection=256,
            rate=self.rate,
        )


# -- the query clients -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one query got. ``status`` 0: no answer (``reason`` says what happened)."""

    query: Query
    status: int
    reason: str  # the "error" of a JSON refusal, or the client's trouble
    started: float  # time.monotonic()
    finished: float
    retry_after: float = 0.0

    @property
    def latency(self) -> float:
        return self.finished - self.started


@dataclass
class QueryClients:
    """Threads that POST :data:`QUERIES` to ``/api/query``, one query in flight each.

    Threads suffice: a client spends its time waiting for the server, and the ingest load
    generator runs in processes of its own.
    """

    requested: int  # 0: the server's query.max_concurrent + 1
    timeout: float
    limits: dict[str, Any] = field(default_factory=dict)  # the server's `query` settings
    clients: int = 0
    window: Window | None = None
    answers: list[Answer] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # per client, warm-up included

    @contextmanager
    def running(self, server: BenchServer, window: Window) -> Iterator[QueryClients]:
        """Clients from ``window.start_at`` to ``window.end``; they are stopped on exit."""
        self.limits = server.config()["query"]
        self.clients = self.requested or int(self.limits["max_concurrent"]) + 1
        self.window = window
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=self._client,
                args=(server.port, index, window, stop),
                name=f"bench-query-{index}",
                daemon=True,
            )
            for index in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            stop.set()  # normally the window is over already; on an error, stop early
            for thread in threads:
                thread.join()

    def _client(self, port: int, index: int, window: Window, stop: threading.Event) -> None:
        # Clients start at different places in the round, so different queries overlap.
        first = index * len(QUERIES) // self.clients
        order = QUERIES[first:] + QUERIES[:first]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        stop.wait(max(0.0, window.start_at - time.monotonic()))
        cpu0 = time.thread_time()
        try:
            for query in itertools.cycle(order):
                if stop.is_set() or time.monotonic() >= window.end:
                    break
                answer = _ask(conn, query)
                self.answers.append(answer)
                if answer.status == BUSY:
                    # A well-behaved client waits as told; the server may close the idle
                    # connection meanwhile (uvicorn's keep-alive is 5 s), so start afresh.
                    conn.close()
                    stop.wait(min(answer.retry_after, max(0.0, window.end - time.monotonic())))
        finally:
            conn.close()
            self.cpu_seconds.append(time.thread_time() - cpu0)

    def in_window(self) -> list[Answer]:
        """Answers that arrived in the measured window."""
        assert self.window is not None
        start, end = self.window.start, self.window.end
        return [a for a in self.answers if start <= a.finished <= end]

    @property
    def rss_limit(self) -> int:
        return int(self.limits["max_concurrent"]) * int(self.limits["memory_limit"]) + RSS_HEADROOM


def _ask(conn: http.client.HTTPConnection, query: Query) -> Answer:
    body = orjson.dumps({"sql": query.sql})
    started = time.monotonic()
    try:
        conn.request("POST", "/api/query", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request opens a new connection
        return Answer(query, 0, type(exc).__name__, started, time.monotonic())
    finished = time.monotonic()
    status = response.status
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Answer(query, status, "body is not JSON", started, finished)
    if 200 <= status < 300:
        reason = "" if isinstance(doc, dict) and "rows" in doc else "not a result"
    else:
        reason = str(doc.get("error", "?")) if isinstance(doc, dict) else "not a JSON refusal"
    wait = response.getheader("Retry-After") or ""
    return Answer(query, status, reason, started, finished, float(wait) if wait.isdigit() else 1.0)


# -- results -----------------------------------------------------------------------------


@dataclass
class Result:
    ingest: PhaseResult
    queries: QueryClients
    baseline: PhaseResult | None = None  # the same ingest without queries, run before

    def answers(self, query: Query | None = None, *, window: bool = True) -> list[Answer]:
        every = self.queries.in_window() if window else self.queries.answers
        return [a for a in every if query is None or a.query == query]

    @property
    def peak_rss(self) -> int:
        return self.ingest.peak_rss

    @property
    def rss_at_start(self) -> int:
        assert self.queries.window is not None
        return self.ingest.sampler.rss_at(self.queries.window.start)

    @property
    def query_cpu(self) -> float:
        """CPU share of the query clients over the time they ran (1.0: one core)."""
        assert self.queries.window is not None
        ran = self.queries.window.end - self.queries.window.start_at
        return sum(self.queries.cpu_seconds) / ran

    @property
    def server_5xx(self) -> int:
        ingest = sum(n for s, n in self.ingest.statuses().items() if s >= 500)
        return ingest + sum(1 for a in self.answers(window=False) if a.status >= 500)


def by_status(answers: Sequence[Answer]) -> str:
    """``12 × 200, 3 × 422 memory_limit``: answers counted by status and reason."""
    counts = Counter((a.status, a.reason) for a in answers)
    if not counts:
        return "0"
    return ", ".join(
        f"{n:,} × " + (f"HTTP {s}" if s else "no answer") + (f" {why}" if why else "")
        for (s, why), n in sorted(counts.items())
    )


def latencies(answers: Sequence[Answer], ok_only: bool = False) -> list[float]:
    return sorted(a.latency for a in answers if not ok_only or 200 <= a.status < 300)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else ms(seconds)


def mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def _limits(r: Result) -> str:
    q = r.queries.limits
    return (
        f"memory_limit {mib(q['memory_limit'])}, max_temp_bytes {mib(q['max_temp_bytes'])},"
        f" max_result_bytes {mib(q['max_result_bytes'])}, threads {q['threads']},"
        f" timeout {q['timeout']:g} s, queue_timeout {q['queue_timeout']:g} s"
    )


def _baseline(r: Result, cell: Callable[[PhaseResult], str]) -> str:
    return "not run (--no-baseline)" if r.baseline is None else cell(r.baseline)


def _rss_limit(r: Result) -> str:
    q = r.queries.limits
    return (
        f"{mb(r.queries.rss_limit)} ({q['max_concurrent']} × {mib(q['memory_limit'])}"
        f" + {mb(RSS_HEADROOM)})"
    )


def _ingest_row(label: str, shown: str | None = None) -> tuple[str, Callable[[Result], str]]:
    """A row of :mod:`bench.http_ingest`'s table, for the ingest side of this run."""
    cell = dict(http_ingest.ROWS)[label]
    return shown or label, lambda r: cell(r.ingest)


ROWS: list[tuple[str, Callable[[Result], str]]] = [
    _ingest_row("Connections (client processes)", "Ingest connections (client processes)"),
    (
        "Ingest requests/s (2xx, one record each)",
        lambda r: f"{num(r.ingest.requests_per_s)} of {num(r.ingest.phase.rate)} offered",
    ),
    _ingest_row("Latency p50", "Ingest latency p50 (from the scheduled send)"),
    _ingest_row("Latency p99", "Ingest latency p99"),
    _ingest_row("Latency max", "Ingest latency max"),
    (
        "Without queries (the run's first phase): ingest p50 / p99 / max",
        lambda r: _baseline(
            r, lambda b: " / ".join(_ms(percentile(b.latencies, q)) for q in (0.5, 0.99, 1.0))
        ),
    ),
    (
        "Without queries: spool fsyncs",
        lambda r: _baseline(r, dict(http_ingest.ROWS)["Spool fsyncs (group commits)"]),
    ),
    _ingest_row("Non-2xx answers (whole run)", "Ingest non-2xx answers (whole run)"),
    _ingest_row("Transport errors", "Ingest transport errors"),
    _ingest_row("Records/s written to the lake (writer)"),
    _ingest_row("Spool backlog"),
    _ingest_row("Spool fsyncs (group commits)"),
    (
        "Query clients (server's query.max_concurrent)",
        lambda r: f"{r.queries.clients} ({r.queries.limits['max_concurrent']})",
    ),
    ("Query limits (server's effective settings)", _limits),
    ("Queries answered in the window, by status", lambda r: by_status(r.answers())),
    ("Queries/s answered", lambda r: f"{len(r.answers()) / r.ingest.window:.1f}"),
    (
        "Query latency p50 / p99 (2xx)",
        lambda r: " / ".join(
            _ms(percentile(latencies(r.answers(), ok_only=True), q)) for q in (0.5, 0.99)
        ),
    ),
    _ingest_row("Server CPU (100 % = 1 core)"),
    _ingest_row("Client CPU (100 % = 1 core)", "Ingest client CPU (100 % = 1 core)"),
    (
        "Query client CPU, warm-up included (100 % = 1 core)",
        lambda r: pct(100 * r.query_cpu),
    ),
    (
        "Other CPU: other processes, kernel (100 % = 1 core)",
        lambda r: pct(100 * max(0.0, r.ingest.other_cpu / r.ingest.window - r.query_cpu)),
    ),
    _ingest_row("Machine CPU busy (all cores)"),
    (
        "Server RSS at window start -> end of load (VmRSS)",
        lambda r: f"{mb(r.rss_at_start)} -> {mb(r.ingest.rss_end_load)}",
    ),
    _ingest_row("Server peak RSS under load (VmHWM)"),
    _ingest_row("Server peak RSS, whole life (VmHWM)"),
    ("RSS limit: max_concurrent × memory_limit + 400 MB", _rss_limit),
    _ingest_row("Shutdown (drains the spool)"),
    _ingest_row("Lake count check"),
]


def result_rows(r: Result) -> list[list[str]]:
    return [[label, cell(r)] for label, cell in ROWS]


QUERY_HEADER = ["Query", "Expected", "Answers in the window", "p50", "p99", "max"]


def query_rows(r: Result) -> list[list[str]]:
    rows = []
    for query in QUERIES:
        answers = r.answers(query)
        lat = latencies(answers)
        rows.append(
            [
                query.name,
                str(query.expected),
                by_status(answers),
                _ms(percentile(lat, 0.5)),
                _ms(percentile(lat, 0.99)),
                _ms(lat[-1] if lat else math.nan),
            ]
        )
    return rows


def _refused(r: Result, query: Query, required: str) -> Verdict:
    """A hostile query must get a 4xx every time it is sent (and be sent at all)."""
    answers = r.answers(query, window=False)
    return Verdict(
        f"{query.name.capitalize()} query refused",
        required,
        by_status(answers) + " (whole run)",
        bool(answers) and all(400 <= a.status < 500 for a in answers),
    )


def verdicts(r: Result) -> list[Verdict]:
    ingest = r.ingest
    p99 = percentile(ingest.latencies, 0.99)
    offered = ingest.phase.rate
    lake = [a for q in LAKE_QUERIES for a in r.answers(q, window=False)]
    unanswered = sum(1 for a in r.answers(window=False) if a.status == 0)
    return [
        Verdict(
            "Ingest p99 while queries run (goal)",
            f"< {ms(TARGET_INGEST_P99)}",
            ms(p99),
            p99 < TARGET_INGEST_P99,
        ),
        Verdict(
            "Ingest keeps the offered rate",
            f"all 2xx, >= {KEPT_RATE:.0%} of {num(offered)} requests/s acknowledged",
            f"{num(ingest.requests_per_s)} requests/s, {sum(ingest.non_2xx.values()):,} non-2xx",
            not ingest.non_2xx and ingest.requests_per_s >= KEPT_RATE * offered,
        ),
        Verdict(
            "Server peak RSS (load and shutdown)",
            f"< {_rss_limit(r)}",
            mb(r.peak_rss),
            r.peak_rss < r.queries.rss_limit,
        ),
        _refused(r, MEMORY_HUNGRY, "a 4xx every time (422 memory_limit)"),
        _refused(r, LARGE_RESULT, "a 4xx every time (413 result_too_large)"),
        Verdict(
            "Lake queries answered",
            f"200 every time ({BUSY} busy allowed)",
            by_status(lake) + " (whole run)",
            bool(lake) and all(a.status == BUSY or (a.status, a.reason) == (200, "") for a in lake),
        ),
        Verdict(
            "No 5xx, every query answered",
            "0 answers >= 500 (ingest and queries), 0 queries without an answer",
            f"{r.server_5xx:,} × 5xx, {unanswered:,} unanswered",
            not r.server_5xx and not unanswered,
        ),
        http_ingest.drain_verdict(ingest),
        Verdict(
            "Lake holds exactly the acked records",
            "lake count = acked count, clean exit",
            ingest.lake_check(),
            ingest.lake_ok,
        ),
    ]


# -- reporting ---------------------------------------------------------------------------


def setup_text(opts: Options, r: Result) -> str:
    return (
        "Setup: a fresh `python -m rtclake run` on 127.0.0.1 with default settings (spool"
        " fsync on, group commit; Parquet lake, zstd; the query limits shown below) except"
        f" `RTCLAKE_SPOOL__FLUSH_INTERVAL={opts.flush_interval:g}`, so that the writer drains"
        " the spool into Parquet while the queries read the lake. Ingest: one ~230-byte"
        f" telemetry record per POST on a fixed schedule of {opts.rate:,.0f} requests/s over"
        f" {opts.connections} keep-alive connections (the load generator of the HTTP ingest"
        " benchmark, in its own process); latency counts from the scheduled send to the last"
        f" byte received. Queries: {r.queries.clients} client threads, one more than the"
        " server's `query.max_concurrent`, each POSTing to `/api/query` back to back"
        " (Retry-After honoured on a 429) and going round the queries below, starting at"
        f" different places. Both start together: {opts.warmup:g} s warm-up, then"
        f" {opts.duration:g} s measured. Peak RSS is the kernel's high-water mark (VmHWM"
        " under load and until the exit). After the load the server gets SIGTERM, drains the"
        " spool into the lake and exits; `rtclake query 'SELECT count(*) FROM telemetry'`"
        " must then equal the acknowledged count."
        + (
            " Before it, in the same run, a phase with the same ingest and no queries (a"
            " fresh server too) measures what the disk and the writer cost by themselves."
            if r.baseline is not None
            else ""
        )
        + "".join(f" Extra server setting: `{k}={v}`." for k, v in opts.server_env)
    )


def markdown(r: Result, opts: Options, argv: Sequence[str], facts: list[tuple[str, str]]) -> str:
    return "\n".join(
        [
            "## HTTP ingest under queries",
            "",
            f"Command: `{http_ingest.command(argv)}`",
            "",
            "Machine:",
            "",
            *(f"- {name}: {value}" for name, value in facts),
            "",
            setup_text(opts, r),
            "",
            "Queries (expected status):",
            "",
            *(f"- {q.name} ({q.expected}): `{q.sql}`" for q in QUERIES),
            "",
            report.md_table(["", opts.phase().title], result_rows(r)),
            "",
            report.md_table(QUERY_HEADER, query_rows(r)),
            "",
            report.md_table(
                ["Target / check", "Required", "Measured", "Result"],
                [[v.name, v.required, v.measured, v.result] for v in verdicts(r)],
            ),
        ]
    )


def run(opts: Options, argv: Sequence[str]) -> int:
    """Run the benchmark, print the tables, update the docs; 0 if every check held."""
    console = Console()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    facts = [
        *report.machine(opts.out_dir),
        report.busy_before(console),
        report.disk_fsync_probe(opts.out_dir),
    ]
    baseline = None
    if opts.baseline:
        baseline = http_ingest.run_phase(opts.phase(queries=False), opts.ingest(), console)
    clients = QueryClients(opts.query_clients, opts.query_timeout)
    phase = opts.phase()
    ingest = http_ingest.run_phase(phase, opts.ingest(), console, alongside=clients.running)
    result = Result(ingest, clients, baseline)
    checks = verdicts(result)
    report.print_tables(
        console,
        report.rich_table("Machine", ["", ""], facts),
        report.rich_table(
            f"HTTP ingest under queries ({http_ingest.command(argv)})",
            ["", phase.title],
            result_rows(result),
        ),
        report.rich_table("Queries", QUERY_HEADER, query_rows(result)),
        report.rich_table(
            "Targets and checks",
            ["Target / check", "Required", "Measured", "Result"],
            [[v.name, v.required, v.measured, v.result] for v in checks],
            verdict_col=3,
        ),
    )
    if opts.write_docs:
        report.update_section(SECTION, markdown(result, opts, argv, facts))
        console.print(f"Updated the '{SECTION}' section of {report.BENCHMARKS_MD}")
    return 0 if all(v.passed for v in checks) else 1
