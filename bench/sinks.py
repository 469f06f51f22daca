"""Sink rates: records/s each sink writes into its local server, beside the lake's, in one
run (issue 14).

The same batches for every sink: ``batches`` spool segments of ``records`` telemetry
records each (~230-byte readings: a device id, a time, five numbers, a nested object),
converted once as the writer converts them. Each round, every sink writes every batch
(``Sink.write``, on this thread, as the delivery calls it); the order of the sinks turns
by one each round, so no sink always runs first or last. Rounds after the first write the
same batches again: they are replays, and each sink's destination must still hold every
record once at the end (counted in the destination). A sink's figure is its records
over the seconds its ``write`` calls took, the median of its rounds; the first round
(tables, indexes and templates created, connections opened) is reported apart.

A sink whose server cannot be had here (Elasticsearch, MongoDB) is listed with the reason
and not measured; set its ``RTCLAKE_TEST_*_URL`` to measure it against a real server.
Each sink is built by ``bench/sink_<type>.py``'s ``make_sink(folder)``.
"""

from __future__ import annotations

import importlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from rich.console import Console

from bench import report
from bench.http_ingest import command
from bench.report import num
from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.lake.sink import LakeSink
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import Entry, EntryHeader

SECTION = "sink-rates"
SINKS = ("redis", "postgresql", "influxdb", "nats", "websocket", "elasticsearch", "mongodb")

Made = tuple[Sink, Callable[[], int], Callable[[], None]]


@dataclass(frozen=True)
class Options:
    batches: int = 10
    records: int = 5_000  # per batch
    rounds: int = 3
    write_docs: bool = True
    out_dir: Path = report.ROOT / "bench" / "out"


@dataclass
class Result:
    name: str
    seconds: list[float] = field(default_factory=list)  # one per round
    stored: int | None = None
    skipped: str | None = None
    error: str | None = None


def reading(batch: int, n: int) -> bytes:
    return (
        b'{"device_id":"dev-%d","time":"2026-12-02T10:%02d:%02d.%06dZ","temp":%d.5,'
        b'"humidity":%d,"pressure":1013.%d,"battery":%d,"rssi":-%d,'
        b'"pos":{"lat":35.6%d,"lon":139.7%d}}'
        % (n % 500, batch, (n // 1000) % 60, n, 20 + n % 10, 40 + n % 30, n % 10, n % 100,
           60 + n % 30, n % 10, n % 7)
    )  # fmt: skip


def make_batches(options: Options) -> list[Batch]:
    """The batches every sink writes (converted once, as the writer does)."""
    tables = default_registry()
    converter = Converter(tables)
    out = []
    try:
        for segment in range(options.batches):
            body = b"\n".join(reading(segment, n) for n in range(options.records))
            head = EntryHeader(table="telemetry", source="bench", stream="sensors",
                               kind="telemetry", received_us=1_764_669_600_000_000,
                               records=options.records)  # fmt: skip
            converted = converter.convert("bench", segment, [Entry(head, body, 0)])
            out.append(Batch("bench", "sinks", segment, converted))
    finally:
        converter.close()
    return out


def lake(folder: Path) -> Made:
    sink = LakeSink(folder / "lake", default_registry())
    sink.name = "lake"
    sink.start()

    def count() -> int:
        files = str(folder / "lake" / "telemetry" / "**" / "*.parquet")
        sql = f"SELECT count(DISTINCT record_id) FROM read_parquet('{files}')"
        row = duckdb.sql(sql).fetchone()
        return int(row[0]) if row else 0

    return sink, count, sink.close


def build(name: str, folder: Path) -> Made | str:
    """The sink ``name`` against its local server, or why it cannot be had."""
    if name == "lake":
        return lake(folder)
    try:
        module = importlib.import_module(f"bench.sink_{name}")
    except ModuleNotFoundError:
        return f"no bench/sink_{name}.py"
    made: Made | str | None = module.make_sink(folder)
    if made is None:
        return getattr(module, "UNAVAILABLE", "its server cannot be had here")
    return made


def measure(options: Options, console: Console) -> tuple[list[Result], int]:
    batches = make_batches(options)
    records = sum(b.num_rows for b in batches)
    results: dict[str, Result] = {}
    made: dict[str, Made] = {}
    tmp = Path(tempfile.mkdtemp(prefix="rtclake-sinks-", dir=options.out_dir))
    try:
        for name in ("lake", *SINKS):
            folder = tmp / name
            folder.mkdir()
            results[name] = Result(name)
            try:
                built = build(name, folder)
            except Exception as exc:  # a server that is down: say so, measure the rest
                results[name].error = f"{type(exc).__name__}: {exc}"
                continue
            if isinstance(built, str):
                results[name].skipped = built
            else:
                made[name] = built
        order = list(made)
        for r in range(options.rounds):
            turn = order[r % len(order) :] + order[: r % len(order)] if order else []
            for name in turn:
                sink = made[name][0]
                if results[name].error:
                    continue
                started = time.perf_counter()
                try:
                    for batch in batches:
                        sink.write(batch)
                except Exception as exc:
                    results[name].error = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                results[name].seconds.append(time.perf_counter() - started)
                console.print(f"  round {r + 1}, {name}: {records / results[name].seconds[-1]:,.0f}"
                              " records/s")  # fmt: skip
        for name, (_, count, _) in made.items():
            try:
                results[name].stored = count()
            except Exception as exc:
                results[name].error = results[name].error or f"count: {exc}"
    finally:
        for _sink, _count, cleanup in made.values():
            try:
                cleanup()
            except Exception as exc:
                console.print(f"cleanup failed: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)
    return list(results.values()), records


def rows(results: Sequence[Result], records: int) -> list[list[str]]:
    out = []
    lake_rate = _median_rate(next(r for r in results if r.name == "lake"), records)
    for r in results:
        if r.skipped or (r.error and not r.seconds):
            out.append([r.name, "", "", "", "", r.skipped or f"error: {r.error}"])
            continue
        rate = _median_rate(r, records)
        first = records / r.seconds[0]
        ratio = f"{rate / lake_rate:.2f}x" if lake_rate and rate else ""
        once = "" if r.stored is None else f"{num(r.stored)} of {num(records)}"
        out.append([r.name, num(rate), num(first), ratio, once, r.error or ""])
    return out


def _median_rate(result: Result, records: int) -> float:
    later = result.seconds[1:] or result.seconds
    return records / statistics.median(later) if later else 0.0


HEADER = ["sink", "records/s (median of replays)", "records/s (first round)",
          "of the lake's", "records stored once", "note"]  # fmt: skip


def run(options: Options, argv: Sequence[str]) -> int:
    console = Console()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    facts = [*report.machine(options.out_dir), report.busy_before(console)]
    results, records = measure(options, console)
    table = rows(results, records)
    report.print_tables(console, report.rich_table(f"Sink rates ({command(argv)})", HEADER, table))
    ok = all(r.stored == records for r in results if r.seconds and not r.error)
    if options.write_docs:
        body = "\n".join([
            "## Sink rates (issue 14)",
            "",
            f"Command: `{command(argv)}`",
            "",
            "Machine:",
            "",
            *(f"- {k}: {v}" for k, v in facts),
            "",
            f"{options.batches} batches of {num(options.records)} telemetry records"
            f" ({num(records)} in all), converted once as the writer does; each of"
            f" {options.rounds} rounds, every sink writes every batch with `Sink.write`"
            " (the order of the sinks turning each round); rounds after the first are"
            " replays, so each destination must still hold every record once. Servers:"
            " this machine's (PostgreSQL 15, Redis 7, NATS with JetStream, Debian's"
            " InfluxDB 1.6 started for the run, a local websockets receiver); the lake"
            " is the Parquet sink into a local folder.",
            "",
            report.md_table(HEADER, table),
        ])  # fmt: skip
        report.update_section(SECTION, body)
        console.print(f"Updated the '{SECTION}' section of {report.BENCHMARKS_MD}")
    return 0 if ok else 1
