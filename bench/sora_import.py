"""Sora ``rtc_stats.jsonl`` import: rtclake against Kohaku's own method, in one run.

Kohaku's ingester loads each gzipped JSON Lines object Fluent Bit uploaded into one DuckDB
file: ``read_json`` with declared columns, ``INSERT INTO rtc_stats ... ON CONFLICT DO
NOTHING`` into a table keyed ``(connection_id, rtc_id, rtc_timestamp)`` with ``rtc_data``
as JSON. Both read the same gzipped file; the lake's bytes per row are compared with the
gzipped JSON Lines (what Fluent Bit uploads).
"""

from __future__ import annotations

import gzip
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
from rich.console import Console

from bench import sora_corpus
from bench.report import (
    Verdict,
    machine,
    md_table,
    num,
    print_tables,
    rich_table,
    update_section,
)
from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.importer import Importer
from rtclake.integrations.sora.logs import table_for
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import lake_sink
from rtclake.metrics import Metrics

LINES = 1_000_000
ROUNDS = 5  # each side runs this many times, alternating; the medians are compared

_KOHAKU_COLUMNS = {
    "connection_id": "VARCHAR", "id": "VARCHAR", "label": "VARCHAR", "timestamp": "TIMESTAMP",
    "type": "VARCHAR", "version": "VARCHAR", "node_name": "VARCHAR", "session_id": "VARCHAR",
    "role": "VARCHAR", "channel_id": "VARCHAR", "spotlight": "BOOLEAN", "bundle_id": "VARCHAR",
    "client_id": "VARCHAR", "group_id": "VARCHAR", "simulcast": "BOOLEAN",
    "log_written": "BOOLEAN", "rtc_data": "JSON", "rtc_id": "VARCHAR",
    "rtc_timestamp": "DOUBLE", "rtc_type": "VARCHAR",
}  # fmt: skip


@dataclass
class Result:
    rows: int
    seconds: float
    stored_bytes: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def corpus(out: Path, lines: int) -> Path:
    """The generated rtc_stats.jsonl, gzipped as Fluent Bit uploads it (cached)."""
    plain = sora_corpus.write(out / f"rtc_stats-{lines}.jsonl", lines)
    gz = out / "upload" / "rtc_stats.jsonl.gz"
    if not gz.exists() or gz.stat().st_mtime < plain.stat().st_mtime:
        gz.parent.mkdir(parents=True, exist_ok=True)
        with plain.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return gz


def kohaku(gz: Path, work: Path) -> Result:
    db = work / "kohaku.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    cols = ", ".join(f'"{k}" {v}' for k, v in _KOHAKU_COLUMNS.items())
    con.execute(
        f"CREATE TABLE rtc_stats ({cols}, PRIMARY KEY (connection_id, rtc_id, rtc_timestamp))"
    )
    declared = "{" + ", ".join(f"'{k}': '{v}'" for k, v in _KOHAKU_COLUMNS.items()) + "}"
    started = time.perf_counter()
    con.execute(
        f"INSERT INTO rtc_stats SELECT * FROM read_json('{gz}', format = 'newline_delimited',"
        f" columns = {declared}) ON CONFLICT DO NOTHING"
    )
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    (rows,) = con.execute("SELECT count(*) FROM rtc_stats").fetchone() or (0,)
    con.close()
    return Result(int(rows), seconds, db.stat().st_size)


def rtclake_import(gz: Path, work: Path, catalog: str | None = None) -> Result:
    """``rtclake import`` into a fresh lake (``catalog``: ``lake.catalog``; default: the
    lake's own SQLite catalog)."""
    data = work / "rtclake"
    shutil.rmtree(data, ignore_errors=True)
    tables = default_registry()
    delivery = Delivery([lake_sink(data / "lake", tables, catalog=catalog)], Metrics())
    importer = Importer(
        tables, delivery, data / "import-state.json", node="bench", table_for=table_for
    )
    try:
        started = time.perf_counter()
        stats = importer.import_paths([gz])
        seconds = time.perf_counter() - started
    finally:
        importer.close()
        delivery.close()
    stored = sum(p.stat().st_size for p in (data / "lake").rglob("*.parquet"))
    engine = QueryEngine(data / "lake", tables, catalog=catalog)
    (rows,) = engine.run("SELECT count(*) FROM rtc_stats").rows()[0]
    engine.close()
    assert rows == stats.rows, (rows, stats.rows)
    return Result(int(rows), seconds, stored)


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.seconds)[len(results) // 2]


def run(out_dir: Path, write_docs: bool, lines: int = LINES, rounds: int = ROUNDS) -> list[Verdict]:
    console = Console()
    out = out_dir / "sora-import"
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"Sora import: generating {lines:,} rtc_stats lines (cached in {out}) ...")
    gz = corpus(out, lines)
    gz_per_row = gz.stat().st_size / lines
    # The machine is shared and noisy: the two sides take turns, and the medians count.
    ours_runs: list[Result] = []
    theirs_runs: list[Result] = []
    for i in range(rounds):
        console.print(f"Sora import: round {i + 1}/{rounds}: rtclake import ...")
        ours_runs.append(rtclake_import(gz, out))
        console.print(f"Sora import: round {i + 1}/{rounds}: Kohaku's method ...")
        theirs_runs.append(kohaku(gz, out))
    ours, theirs = _median(ours_runs), _median(theirs_runs)
    ratio = ours.rows_per_s / theirs.rows_per_s
    per_round = ", ".join(
        f"{a.rows_per_s / b.rows_per_s:.2f}x" for a, b in zip(ours_runs, theirs_runs, strict=True)
    )
    console.print(f"Sora import: rtclake/Kohaku rows/s round by round: {per_round}")
    size = ours.stored_bytes / ours.rows / gz_per_row
    rows = [
        ["rtclake import (Parquet lake)", num(ours.rows), f"{ours.seconds:.1f} s",
         num(ours.rows_per_s), f"{ours.stored_bytes / ours.rows:.1f}"],
        ["Kohaku (DuckDB file, INSERT ... ON CONFLICT)", num(theirs.rows),
         f"{theirs.seconds:.1f} s", num(theirs.rows_per_s),
         f"{theirs.stored_bytes / theirs.rows:.1f}"],
        ["gzipped JSON Lines (what Fluent Bit uploads)", num(lines), "", "", f"{gz_per_row:.1f}"],
    ]  # fmt: skip
    header = ["", "rows", "time", "rows/s", "bytes/row"]
    verdicts = [
        Verdict("import speed vs Kohaku (medians)", ">= 2.0x", f"{ratio:.2f}x", ratio >= 2.0),
        Verdict("lake bytes/row vs gzipped JSON Lines", "<= 0.5x", f"{size:.2f}x", size <= 0.5),
        Verdict("rows stored", f"{lines:,}", f"{ours.rows:,} / {theirs.rows:,}",
                ours.rows == theirs.rows == lines),
    ]  # fmt: skip
    vrows = [[v.name, v.required, v.measured, v.result] for v in verdicts]
    print_tables(
        console,
        rich_table("Sora rtc_stats import", header, rows),
        rich_table("Targets", ["target", "required", "measured", "result"], vrows, verdict_col=3),
    )
    if write_docs:
        facts = "\n".join(f"- {k}: {v}" for k, v in machine(out))
        body = (
            "## Sora rtc_stats import\n\nCommand: `make bench`\n\nMachine:\n\n"
            f"{facts}\n\n"
            f"Rounds: {rounds}, the two sides alternating; the table shows each side's median"
            f" run. rtclake/Kohaku rows/s round by round: {per_round}.\n\n"
            f"Input: {lines:,} generated `rtc_stats.jsonl` lines (`bench/sora_corpus.py`:"
            " 400 connections in rooms of four, every common RTCStats type, Erlang-printed"
            " floats), gzipped as Fluent Bit uploads them; both sides read that `.gz` file."
            " rtclake: `rtclake import` (validation, typed columns, Parquet zstd). Kohaku:"
            " `read_json` with declared columns, `INSERT ... ON CONFLICT DO NOTHING` into a"
            " DuckDB file keyed `(connection_id, rtc_id, rtc_timestamp)`, `rtc_data` as JSON.\n\n"
            + md_table(header, rows)
            + "\n\n"
            + md_table(["target", "required", "measured", "result"], vrows)
        )
        update_section("sora-import", body)
    return verdicts
