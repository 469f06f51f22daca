"""Several writers on one PostgreSQL catalog (issue 15, docs/SCALING.md).

1, 2 and 3 writer processes, each a lake sink on one catalog (a fresh PostgreSQL
database) and one local folder, each committing batches of 20,000 telemetry records (the
HTTP benchmark's records, converted as the writer converts a segment) as fast as it can
for a fixed number of batches, at once. Per writer count: the commit latency (one
``LakeSink.write``: de-duplication, upload, commit) at the median and p99, rows/s of each
writer and of all together, and failed commits (a conflict DuckLake's retries did not
resolve). Then one maintenance run merges the files the 3 writers left, timed. Last, the
dashboard's overview page (its seven queries, as the page runs them, over the whole
range) on Sora lakes of growing size, imported from ``bench/sora_import.py``'s corpus, to
see how its time grows with the rows it covers.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql
from rich.console import Console

from bench import lake_catalog, sora_import
from bench.report import machine, md_table, print_tables, rich_table, update_section
from rtclake.catalog import default_registry
from rtclake.config import MaintenanceConfig
from rtclake.convert import Converter
from rtclake.lake.catalog import Catalog
from rtclake.lake.maintenance import Maintenance
from rtclake.lake.query import Query, QueryEngine
from rtclake.lake.sink import LakeSink, partition_dates
from rtclake.lake.storage import storage_for
from rtclake.sinks.base import Batch

SECTION = "scaling"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCHES = 15


def _writer(index: int, url: str, root: str, start: Any, out: Any) -> None:
    tables = default_registry()
    converter = Converter(tables)
    batches = []
    for seq, entries in enumerate(lake_catalog.segments(seed=100 + index)[:BATCHES]):
        batches.append(converter.convert(f"w{index}", seq, entries))
    converter.close()
    sink = LakeSink(root, tables, catalog=url)
    sink.start()
    start.wait()
    latencies, failures, rows = [], 0, 0
    began = time.perf_counter()
    for seq, converted in enumerate(batches):
        t = time.perf_counter()
        try:
            sink.write(Batch(f"w{index}", "bench", seq, converted))
            rows += sum(x.num_rows for x in converted.values())
        except Exception:
            failures += 1
        latencies.append(time.perf_counter() - t)
    out.put((index, latencies, failures, rows, time.perf_counter() - began))
    sink.close()


def _database() -> str:
    name = f"rtclake_scaling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _drop(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def writers(work: Path, n: int) -> tuple[list[str], Path, str]:
    name = _database()
    url = f"postgres://postgres@127.0.0.1:5432/{name}"
    root = work / f"lake-{n}"
    shutil.rmtree(root, ignore_errors=True)
    # the tables exist before the writers race (as after a first start)
    first = LakeSink(root, default_registry(), catalog=url)
    first.start()
    first.close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(i, url, str(root), start, out)) for i in range(n)]
    for p in procs:
        p.start()
    time.sleep(3 + 2 * n)  # each converts its batches first
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    lat = sorted(x for _, ls, _, _, _ in results for x in ls)
    failures = sum(f for _, _, f, _, _ in results)
    rows = sum(r for _, _, _, r, _ in results)
    wall = max(s for _, _, _, _, s in results)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    per_writer = statistics.median(r / s for _, _, _, r, s in results)
    row = [str(n), f"{len(lat)}", f"{statistics.median(lat) * 1000:.0f} ms",
           f"{p99 * 1000:.0f} ms", f"{per_writer:,.0f}", f"{rows / wall:,.0f}",
           str(failures)]  # fmt: skip
    return row, root, url if n == 3 else (_drop(name) or "")


SIZES = (1, 10, 30, 100)  # the overview's lakes: copies of the imported 1M-line corpus


def grow(lake: Path, copies: range, span: timedelta) -> None:
    """Add ``copies`` of the lake's first import to it through its catalog: copy ``i`` is
    every table's rows of the original with their times ``i`` spans later and their
    connection and session ids made new (``-i``), as if the same 400 connections' next
    sessions had followed, written by pyarrow as Parquet per date (as the lake sink
    writes) and added as files."""
    tables = default_registry()
    catalog = Catalog(f"sqlite:{lake / 'catalog.sqlite'}", storage_for(lake), tables)
    con = catalog.connect()
    try:
        originals = {
            name: pq.read_table(files, partitioning=None)
            for name in sorted(tables.names())
            if (files := [f for f in catalog.live_files(con, name) if "/grow-" not in f])
        }
        for i in copies:
            for name, rows in originals.items():
                shifted = rows
                for column in ("time", "received_at"):
                    if column in rows.column_names:
                        later = pc.add(rows[column], pa.scalar(span * i, pa.duration("us")))
                        shifted = shifted.set_column(
                            rows.schema.get_field_index(column), column, later
                        )
                for column in ("connection_id", "session_id"):
                    if column in rows.column_names:
                        new_id = pc.binary_join_element_wise(rows[column], f"{i}", "-")
                        shifted = shifted.set_column(
                            rows.schema.get_field_index(column), column, new_id
                        )
                for date, part in partition_dates(shifted):
                    target = lake / "main" / name / f"date={date}" / f"grow-{i}.parquet"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(part, target, compression="zstd")
                    con.execute(
                        "CALL ducklake_add_data_files('lake', ?, ?, hive_partitioning => true)",
                        [name, str(target)],
                    )
    finally:
        con.close()


def overview(engine: QueryEngine) -> tuple[int, float]:
    """The overview page's queries over the whole lake: rtc_stats rows, the median of 3
    runs (after one warm-up)."""
    from rtclake.lake import dashboard as q
    from rtclake.web.dashboard import NODE_COLUMNS, TRAFFIC_COLUMNS

    span = engine.run(
        "SELECT epoch_us(min(time)), epoch_us(max(time)) + 1, count(*) FROM rtc_stats"
    ).rows()[0]
    first, last = (datetime.fromtimestamp(us / 1e6, UTC) for us in span[:2])
    now = last
    r = q.TimeRange(first, last)
    bucket, flow_bucket = r.bucket(), r.bucket(at_least=60)
    sqls: list[Query] = [
        functools.partial(q.active_now_sql, now),
        functools.partial(q.connection_flow_series_sql, r, flow_bucket),
        q.worst_connections_sql(r, 10, None),
        q.top_channels_sql(r, 10),
        q.sessions_sql(r, limit=50, channel=None, now=now),
        q.series_lists(q.sora_nodes_sql(r, bucket), ["node"], NODE_COLUMNS),
        q.series_lists(q.sora_traffic_sql(r, bucket), ["node"], TRAFFIC_COLUMNS),
    ]
    times = []
    for i in range(4):
        started = time.perf_counter()
        engine.run_many(sqls)
        if i:
            times.append(time.perf_counter() - started)
    return int(span[2]), statistics.median(times)


def overviews(out_dir: Path, work: Path, console: Console) -> list[list[str]]:
    """The overview over lakes of 1, 10, 30 and 100 times the 1M-line corpus (one lake,
    grown between the measurements)."""
    gz = sora_import.corpus(out_dir / "sora-import", sora_import.LINES)
    data = work / "overview"
    sora_import.rtclake_import(gz, data)
    lake = data / "rtclake" / "lake"
    probe = QueryEngine(lake, default_registry())
    first, last = probe.run("SELECT min(time), max(time) FROM rtc_stats").rows()[0]
    probe.close()
    span = (last - first) + timedelta(minutes=1)
    out, have = [], 1
    for size in SIZES:
        if size > have:
            console.print(f"scaling: growing the overview's lake to {size}x the corpus ...")
            started = time.perf_counter()
            grow(lake, range(have, size), span)
            console.print(f"scaling: grown in {time.perf_counter() - started:.0f} s")
            have = size
        engine = QueryEngine(lake, default_registry())
        rows, seconds = overview(engine)
        engine.close()
        stored = sum(p.stat().st_size for p in (lake / "main").rglob("*.parquet"))
        hours = (span * size).total_seconds() / 3600
        out.append([f"{rows:,}", f"{hours:,.0f} h", f"{stored / 1e9:.2f} GB", f"{seconds:.2f} s"])
        console.print(f"scaling: overview over {rows:,} rtc_stats rows: {seconds:.2f} s")
    shutil.rmtree(data, ignore_errors=True)
    return out


def run(out_dir: Path, write_docs: bool) -> None:
    console = Console()
    work = out_dir / "scaling"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    root, url = work, ""
    for n in (1, 2, 3):
        console.print(f"scaling: {n} writer(s) ...")
        row, root, url = writers(work, n)
        rows.append(row)
    tables = default_registry()
    catalog = Catalog(url, storage_for(root), tables)
    con = catalog.connect()
    before = len(catalog.live_files(con, "telemetry"))
    con.close()
    maintenance = Maintenance(
        catalog, MaintenanceConfig(expire_after=0, cleanup_after=0), node="bench", threads=None
    )
    started = time.perf_counter()
    report = maintenance.run()
    seconds = time.perf_counter() - started
    con = catalog.connect()
    after = len(catalog.live_files(con, "telemetry"))
    count = con.execute("SELECT count(*) FROM lake.telemetry").fetchone()
    con.close()
    merge = report.step("merge") if report else None
    merged = [[f"{before} files of {count[0] if count else 0:,} rows (3 writers x {BATCHES})",
               f"{after}", f"{merge.seconds if merge else float('nan'):.2f} s",
               f"{seconds:.2f} s"]]  # fmt: skip
    _drop(url.rsplit("/", 1)[1])
    sizes = overviews(out_dir, work, console)
    oheader = ["rtc_stats rows", "time covered", "lake on disk (all tables)",
               "overview page (7 queries, whole range)"]  # fmt: skip
    header = ["writers", "commits", "commit p50", "commit p99", "rows/s per writer",
              "rows/s together", "failed commits"]  # fmt: skip
    mheader = ["telemetry before", "files after", "merge", "whole run (4 steps)"]
    print_tables(
        console,
        rich_table("Writers on one PostgreSQL catalog", header, rows),
        rich_table("Maintenance after them", mheader, merged),
        rich_table("The overview page over all the rows", oheader, sizes),
    )
    if write_docs:
        facts = "\n".join(f"- {k}: {v}" for k, v in machine(work))
        update_section(
            SECTION,
            "## Writers on one catalog\n\nCommand: `.venv/bin/python -m bench --only scaling`"
            f"\n\nMachine:\n\n{facts}\n\nEach writer a process with its own lake sink on one"
            " PostgreSQL catalog (a fresh database) and one local folder, committing"
            f" {BATCHES} batches of 20,000 telemetry records as fast as it can, all starting"
            " together. A commit is one `LakeSink.write`: de-duplication against the lake,"
            " the Parquet upload, `ducklake_add_data_files`, the ledger row, the commit.\n\n"
            + md_table(header, rows)
            + "\n\n"
            + md_table(mheader, merged)
            + "\n\nThe dashboard's overview page (its seven queries in one `run_many`, the"
            " range covering the whole lake), the median of 3 runs after a warm-up, on one"
            " Sora lake: `bench/sora_import.py`'s 1M-line corpus imported (400 connections"
            " reporting for about two hours), then grown by copies of every table's rows,"
            " each a corpus span later in time with new connection and session ids (as if"
            " the same clients' next sessions followed), written by pyarrow per date and"
            " added through the catalog (`grow`), measured at 1, 10, 30 and 100 times the"
            " corpus. What the copies do not change: 400 connections at a time, so the"
            " page's time grows with the rows and the span, not with concurrency:\n\n"
            + md_table(oheader, sizes),
        )
