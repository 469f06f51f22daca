"""The lake through its catalog against the Hive writer it replaced (issue 15), one run.

- **HTTP ingest's writer path**: what the writer does with the spool's segments (the
  converter, the delivery, the lake sink), for segments of the telemetry records the HTTP
  benchmark posts (``bench/records.py``), 1,000 records an entry, one entry a request, as
  a one-second flush under the batch phase's load holds them, all waiting (the writer
  behind, as under that load), so grouped as the writer groups them
  (``rtclake.writer.GROUP_*``: the lake stores a group in one commit, the Hive writer a
  file per segment). The acknowledgement path (spool, fsync) does not change with the
  catalog: the writer is what does.
- **HTTP ingest, end to end**: the HTTP benchmark's batch phase (``bench/http_ingest.py``:
  a fresh ``rtclake run``, 1,000-record bodies, closed loop, 1 s flush), its lake through
  the catalog or ``lake.catalog: hive``: records acknowledged and written per second,
  peak RSS; the lake must hold exactly what was acknowledged.
- **Sora import**: ``rtclake import`` of the generated ``rtc_stats.jsonl.gz``
  (``bench/sora_import.py``'s corpus).
- **Queries**: the same questions over the two Sora lakes just imported: the Hive views,
  which hide repeated record ids with a window, against the catalog's, which need none.

The two sides take turns (who goes first alternates by round); the medians count.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from bench import http_ingest, records, sora_import
from bench.report import (
    Verdict,
    machine,
    mb,
    md_table,
    num,
    print_tables,
    rich_table,
    update_section,
)
from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.delivery import Delivery
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import lake_sink
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch
from rtclake.spool import Entry, EntryHeader
from rtclake.writer import GROUP_BYTES, GROUP_RECORDS, GROUP_SEGMENTS

SECTION = "lake-catalog"
ROUNDS = 3
# The writer path and the import take seconds a round: more of them, so that the medians
# hold on a host whose CPU is shared (steal time of a third was seen: one round's ratio
# ranged 0.72-1.02x in one run)
SHORT_ROUNDS = 5
SEGMENTS = 20
ENTRIES = 20  # entries of 1,000 records a segment: 20,000 records, a second of batch load
SIDES = ("catalog", "hive")
QUESTIONS = {
    "rows per channel": "SELECT channel_id, count(*) FROM rtc_stats GROUP BY 1",
    "bytes per connection": (
        "SELECT connection_id, max(bytes_sent), max(bytes_received) FROM rtc_stats GROUP BY 1"
    ),
    "one connection": (
        "SELECT count(*), round(avg(jitter), 9) FROM rtc_stats WHERE connection_id ="
        " (SELECT min(connection_id) FROM rtc_stats)"
    ),
    "video bitrate per minute": (
        "SELECT time_bucket(INTERVAL 1 minute, time) AS m, round(avg(bitrate_bps)) FROM rtc_rates"
        " WHERE media_kind = 'video' GROUP BY 1"
    ),
}

_R = TypeVar("_R", "Timed", "Ingest")


@dataclass
class Timed:
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def segments(seed: int = 1) -> list[list[Entry]]:
    rng = random.Random(seed)
    start = time.time() - SEGMENTS
    out = []
    for seq in range(SEGMENTS):
        second = records.utc_second(start + seq)  # a second of load per segment
        entries = []
        for n in range(ENTRIES):
            body = records.jsonl_body(rng, f"s{seq}", 1000)
            body = records.fill(body, seq * ENTRIES + n, second)
            head = EntryHeader(
                table="telemetry", source="http", stream="bench", kind="telemetry",
                received_us=time.time_ns() // 1000, records=1000,
            )  # fmt: skip
            entries.append(Entry(head, body.rstrip(b"\n"), n))
        out.append(entries)
    return out


def writer_groups(segs: list[list[Entry]]) -> list[list[int]]:
    """The segments as the writer groups them when they all wait (a backlog): of one run,
    within its budget of segments, records and bytes."""
    groups: list[list[int]] = []
    records = size = 0
    for seq, entries in enumerate(segs):
        more = sum(e.header.records for e in entries), sum(len(e.body) for e in entries)
        if (
            not groups
            or len(groups[-1]) == GROUP_SEGMENTS
            or records + more[0] > GROUP_RECORDS
            or size + more[1] > GROUP_BYTES
        ):
            groups.append([])
            records = size = 0
        groups[-1].append(seq)
        records, size = records + more[0], size + more[1]
    return groups


def writer_path(work: Path, side: str, segs: list[list[Entry]]) -> Timed:
    root = work / f"writer-{side}"
    shutil.rmtree(root, ignore_errors=True)
    tables = default_registry()
    delivery = Delivery([lake_sink(root, tables, catalog=side if side == "hive" else None)],
                        Metrics())  # fmt: skip
    converter = Converter(tables)
    rows = 0
    try:
        delivery.start()
        started = time.perf_counter()
        for group in writer_groups(segs):
            batches = []
            for seq in group:
                converted = converter.convert("bench", seq, segs[seq])
                batches.append(Batch("bench", "bench", seq, converted))
                rows += sum(t.num_rows for t in converted.values())
            outcome = delivery.deliver(batches, set(), lambda _sink: None)
            assert outcome.done, outcome
        seconds = time.perf_counter() - started
    finally:
        converter.close()
        delivery.close()
    return Timed(rows, seconds)


@dataclass
class Ingest:
    acked_per_s: float
    written_per_s: float
    peak_rss: int
    exact: bool

    @property
    def rate(self) -> float:
        return self.acked_per_s


def http_end_to_end(work: Path, side: str, console: Console) -> Ingest:
    env = (("RTCLAKE_LAKE__CATALOG", "hive"),) if side == "hive" else ()
    opts = http_ingest.Options(phases=("batch",), server_env=env, write_docs=False,
                               out_dir=work / f"http-{side}")  # fmt: skip
    (phase,) = http_ingest.phases(opts)
    r = http_ingest.run_phase(phase, opts, console)
    return Ingest(r.records_per_s, r.stored_per_s, r.peak_rss, r.lake_ok)


def sora(work: Path, side: str, gz: Path) -> Timed:
    result = sora_import.rtclake_import(gz, work / side, catalog=side if side == "hive" else None)
    return Timed(result.rows, result.seconds)


def alternate(
    rounds: int, run: Callable[[str], _R], console: Console, what: str
) -> dict[str, list[_R]]:
    out: dict[str, list[_R]] = {side: [] for side in SIDES}
    for i in range(rounds):
        order = SIDES if i % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            console.print(f"{what}: round {i + 1}/{rounds}: {side} ...")
            out[side].append(run(side))
    return out


def median_rate(runs: list[Timed] | list[Ingest]) -> float:
    return statistics.median(r.rate for r in runs)


def questions(work: Path, rounds: int) -> list[list[str]]:
    tables = default_registry()
    engines = {
        "catalog": QueryEngine(work / "catalog" / "rtclake" / "lake", tables, max_rows=10_000_000),
        "hive": QueryEngine(
            work / "hive" / "rtclake" / "lake", tables, catalog="hive", max_rows=10_000_000
        ),
    }
    rows = []
    for name, text in QUESTIONS.items():
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        answers: dict[str, object] = {}
        for i in range(rounds + 1):  # the first round warms the caches, not counted
            order = SIDES if i % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                started = time.perf_counter()
                result = engines[side].run(text, max_rows=10_000_000)
                if i:
                    times[side].append(time.perf_counter() - started)
                answers[side] = sorted(map(str, result.rows()))
        assert answers["catalog"] == answers["hive"], name
        hive, catalog = statistics.median(times["hive"]), statistics.median(times["catalog"])
        rows.append([name, f"{hive * 1000:.0f} ms", f"{catalog * 1000:.0f} ms",
                     f"{hive / catalog:.2f}x"])  # fmt: skip
    for engine in engines.values():
        engine.close()
    return rows


def run(
    out_dir: Path, write_docs: bool, rounds: int = ROUNDS, lines: int = sora_import.LINES
) -> list[Verdict]:
    console = Console()
    work = out_dir / "lake-catalog"
    work.mkdir(parents=True, exist_ok=True)
    segs = segments()
    short = max(rounds, SHORT_ROUNDS)
    writer = alternate(short, lambda side: writer_path(work, side, segs), console, "writer path")
    http = alternate(rounds, lambda side: http_end_to_end(work, side, console), console, "HTTP")
    gz = sora_import.corpus(out_dir / "sora-import", lines)
    imports = alternate(short, lambda side: sora(work, side, gz), console, "Sora import")
    asked = questions(work, rounds)

    def ratio(runs: dict[str, list[Timed]] | dict[str, list[Ingest]]) -> float:
        return median_rate(runs["catalog"]) / median_rate(runs["hive"])

    def by_round(runs: dict[str, list[Timed]] | dict[str, list[Ingest]]) -> str:
        return ", ".join(
            f"{c.rate / h.rate:.2f}x" for c, h in zip(runs["catalog"], runs["hive"], strict=True)
        )

    written_ratio = statistics.median(r.written_per_s for r in http["catalog"]) / statistics.median(
        r.written_per_s for r in http["hive"]
    )
    rss = {side: max(r.peak_rss for r in http[side]) for side in SIDES}
    header = ["path", "rows", "Hive writer rows/s", "catalog rows/s", "catalog/Hive",
              "round by round"]  # fmt: skip
    table = [
        ["HTTP ingest's writer path (telemetry)", num(writer["catalog"][0].rows),
         num(median_rate(writer["hive"])), num(median_rate(writer["catalog"])),
         f"{ratio(writer):.2f}x", by_round(writer)],
        ["HTTP ingest, end to end (batch phase: records acknowledged)", "",
         num(median_rate(http["hive"])), num(median_rate(http["catalog"])),
         f"{ratio(http):.2f}x", by_round(http)],
        ["HTTP ingest, end to end (batch phase: records written to the lake)", "",
         num(statistics.median(r.written_per_s for r in http["hive"])),
         num(statistics.median(r.written_per_s for r in http["catalog"])),
         f"{written_ratio:.2f}x", ""],
        ["HTTP ingest, end to end: the server's peak RSS (MB, lower is better)", "",
         mb(rss["hive"]), mb(rss["catalog"]), f"{rss['hive'] / rss['catalog']:.2f}x", ""],
        ["Sora import (rtc_stats.jsonl.gz)", num(imports["catalog"][0].rows),
         num(median_rate(imports["hive"])), num(median_rate(imports["catalog"])),
         f"{ratio(imports):.2f}x", by_round(imports)],
    ]  # fmt: skip
    qheader = ["question (1M rtc_stats rows)", "Hive views (de-duplicating)", "catalog views",
               "gain"]  # fmt: skip
    verdicts = [
        Verdict("HTTP ingest's writer path, catalog / Hive", ">= 0.9x", f"{ratio(writer):.2f}x",
                ratio(writer) >= 0.9),
        Verdict("HTTP ingest end to end (acknowledged), catalog / Hive", ">= 0.9x",
                f"{ratio(http):.2f}x", ratio(http) >= 0.9),
        Verdict("HTTP ingest end to end (written), catalog / Hive", ">= 0.9x",
                f"{written_ratio:.2f}x", written_ratio >= 0.9),
        Verdict("HTTP ingest end to end: the lake holds exactly what was acknowledged",
                "every round", f"{sum(r.exact for side in SIDES for r in http[side])} of"
                f" {rounds * len(SIDES)}", all(r.exact for side in SIDES for r in http[side])),
        Verdict("Sora import, catalog / Hive", ">= 0.9x", f"{ratio(imports):.2f}x",
                ratio(imports) >= 0.9),
    ]  # fmt: skip
    vrows = [[v.name, v.required, v.measured, v.result] for v in verdicts]
    print_tables(
        console,
        rich_table("The lake's catalog against the Hive writer", header, table),
        rich_table("Queries", qheader, asked),
        rich_table("Targets", ["target", "required", "measured", "result"], vrows, verdict_col=3),
    )
    if write_docs:
        facts = "\n".join(f"- {k}: {v}" for k, v in machine(work))
        body = (
            "## The lake's catalog against the Hive writer\n\n"
            "Command: `make bench` (this part alone: `.venv/bin/python -m bench --only"
            " catalog`)\n\nMachine:\n\n"
            f"{facts}\n\n"
            f"Rounds: {rounds} of HTTP ingest end to end, {short} of the writer path and of"
            " the Sora import, the two sides alternating (who goes first alternates); the"
            " medians count. Writer path: "
            f"{SEGMENTS} segments of {ENTRIES} entries of 1,000 generated telemetry records"
            " (`bench/records.py`), all waiting, each converted and delivered as the writer"
            " does with a backlog (`Converter`, `Delivery`, the lake sink; groups of"
            f" {', '.join(str(len(g)) for g in writer_groups(segs))} segments by"
            " `rtclake.writer`'s budget: one commit a group through the catalog, a file a"
            " segment for Hive); the HTTP acknowledgement path (spool, fsync) is the same"
            " for both. HTTP ingest end to end: the HTTP benchmark's batch phase"
            " (`bench/http_ingest.py`, fresh `rtclake run`, 1,000-record bodies, 8 connections,"
            " closed loop, 3 s warm-up + 15 s measured, 1 s flush), Hive side with"
            " `RTCLAKE_LAKE__CATALOG=hive`; written = rows the writer stored in the window;"
            " the lake then holds exactly what was acknowledged (checked). Sora import:"
            " `rtclake import` of the generated"
            f" {lines:,}-line `rtc_stats.jsonl.gz` (`bench/sora_import.py`'s corpus). Queries:"
            " the two Sora lakes just imported, each question run once to warm the caches,"
            f" then {rounds} times a side, alternating; the same answers checked.\n\n"
            + md_table(header, table)
            + "\n\n"
            + md_table(qheader, asked)
            + "\n\n"
            + md_table(["target", "required", "measured", "result"], vrows)
        )
        update_section(SECTION, body)
    return verdicts
