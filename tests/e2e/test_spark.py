"""A distributed engine reads the lake: Spark (pyspark in local mode) reads the live files
of the current snapshot, as ``rtclake files TABLE`` prints them, and gets the counts and
sums DuckDB gets (``rtclake query``), for every table the Sora demo fills: first as
imported (several files per partition), then after ``rtclake maintain`` merged them (the
merged files also hold DuckLake's ``_ducklake_internal_*`` columns, which are not the
table's: Spark selects the table's columns).

Opt-in: ``make e2e`` (installs pyspark, needs Java 17+). The recipe is in docs/READING.md.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from rtclake.registry import load_registry

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

#: Three imports of the demo (its end, minutes): the first spans two UTC dates, and each
#: adds a file per table and date, so the 2026-11-20 partitions have several to merge.
DEMO_RUNS = (("2026-11-20T00:05:00Z", 10), ("2026-11-20T06:00:00Z", 10),
             ("2026-11-20T12:00:00Z", 5))  # fmt: skip
INTERNAL = "_ducklake_internal_"


@dataclass(frozen=True)
class Check:
    """What is compared for one table: rows, dates, distinct ids and column sums (exact
    for integers, to 1e-9 relative for doubles, which two engines add in other orders)."""

    distinct: str
    sums: tuple[str, ...] = ()
    float_sums: tuple[str, ...] = ()

    def sql(self, table: str) -> str:
        parts = [
            "count(*) AS row_count",
            "count(DISTINCT date) AS dates",
            f"count(DISTINCT {self.distinct}) AS distinct_{self.distinct}",
            *(f"sum({c}) AS sum_{c}" for c in (*self.sums, *self.float_sums)),
        ]
        return f"SELECT {', '.join(parts)} FROM {table}"


CHECKS = {
    "rtc_stats": Check(
        "connection_id", ("bytes_sent", "packets_received", "packets_lost"), ("jitter",)
    ),
    "sessions": Check("session_id", ("max_connections", "total_connections")),
    "connections": Check("connection_id"),
    "rtc_rates": Check("connection_id", ("frame_width",), ("bitrate_bps",)),
    "connection_reports": Check("connection_id", ("part",), ("score",)),
}


@dataclass(frozen=True)
class Lake:
    data_dir: Path
    env: dict[str, str]

    def rtclake(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rtclake", *args], env=self.env, cwd=self.data_dir,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        out = self.rtclake(*args)
        assert out.returncode == 0, f"rtclake {' '.join(args)}: {out.stderr}{out.stdout}"
        return out.stdout

    def files(self, table: str) -> list[str]:
        """``rtclake files TABLE``: the live files of the current snapshot."""
        return self.ok("files", table).split()

    def duckdb(self, sql: str) -> dict[str, Any]:
        """The one row of ``sql`` as ``rtclake query`` (DuckDB) answers it."""
        (row,) = orjson.loads(self.ok("query", sql, "--format", "json"))
        return dict(row)

    def glob(self, table: str) -> list[str]:
        """What a glob of the Hive paths finds (never read this way: see docs/READING.md)."""
        return sorted(str(p) for p in (self.data_dir / "lake" / "main" / table).rglob("*.parquet"))


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A local lake filled by three runs of ``rtclake demo`` (Sora logs, imported)."""
    data_dir = tmp_path_factory.mktemp("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    lake = Lake(data_dir, {**env, "RTCLAKE_DATA_DIR": str(data_dir)})
    for now, minutes in DEMO_RUNS:
        lake.ok("demo", "--seed", "1", "--now", now, "--minutes", str(minutes))
    return lake


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory, figures: list[str]) -> Iterator[SparkSession]:
    """A local Spark: two threads, a small driver, no UI, bound to the loopback."""
    pytest.importorskip("pyspark", reason="pyspark is not installed: run `make e2e`")
    from pyspark.sql import SparkSession

    scratch = tmp_path_factory.mktemp("spark")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    started = time.perf_counter()
    session = (
        SparkSession.builder.master("local[2]")
        .appName("rtclake-e2e")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.local.dir", str(scratch / "local"))
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    figures.append(
        f"Spark {session.version} (local[2], Java {java_version(session)}):"
        f" started in {time.perf_counter() - started:.1f} s"
    )
    yield session
    session.stop()


def java_version(session: SparkSession) -> str:
    jvm: Any = session.sparkContext._jvm
    return str(jvm.java.lang.System.getProperty("java.version"))


def spark_read(spark: SparkSession, table: str, files: list[str]) -> tuple[Any, list[str]]:
    """The table's rows read by Spark from exactly ``files``, with the table's columns
    (and ``date``) only; also the columns the files held beyond them."""
    registry = load_registry()
    columns = [f.name for f in registry.tables[table].stored_schema] + ["date"]
    # the date is the folder's (date=D), as Hive readers take it: the files rtclake
    # writes do not hold it (DuckLake's merged files do, with the same value)
    base = files[0].split("/date=")[0]
    frame = spark.read.option("mergeSchema", "true").option("basePath", base).parquet(*files)
    others = sorted(set(frame.columns) - set(columns))
    assert all(c.startswith(INTERNAL) for c in others), others  # nothing else unknown
    assert set(columns) <= set(frame.columns), sorted(set(columns) - set(frame.columns))
    return frame.select(*columns), others


def compare(lake: Lake, spark: SparkSession, phase: str, figures: list[str]) -> dict[str, int]:
    """Each table read by Spark from its live files equals DuckDB's view of it; returns
    the number of live files per table."""
    counts: dict[str, int] = {}
    for table, check in CHECKS.items():
        files = lake.files(table)
        assert files, f"{table}: no live files"
        counts[table] = len(files)
        expected = lake.duckdb(check.sql(table))
        started = time.perf_counter()
        frame, others = spark_read(spark, table, files)
        frame.createOrReplaceTempView(table)
        (row,) = spark.sql(check.sql(table)).collect()
        seconds = time.perf_counter() - started
        got = row.asDict()
        assert set(got) == set(expected)
        for name, value in expected.items():
            if name.removeprefix("sum_") in check.float_sums:
                assert math.isclose(got[name], value, rel_tol=1e-9), (table, name, got, expected)
            else:  # big integers come as JSON strings
                assert got[name] == int(value), (table, name, got[name], value)
        assert got["row_count"] > 0 and got["dates"] == 2
        shown = ", ".join(f"{k}={int(v) if isinstance(v, str) else v:,}" for k, v in got.items())
        internal = f"; files also hold {', '.join(others)} (dropped)" if others else ""
        figures.append(
            f"[{phase}] {table}: {len(files)} live files, Spark read + aggregate"
            f" {seconds:.2f} s; Spark == DuckDB: {shown}{internal}"
        )
    return counts


def test_spark_reads_the_live_files_as_duckdb_does(
    spark: SparkSession, lake: Lake, figures: list[str]
) -> None:
    imported = compare(lake, spark, "imported", figures)
    assert imported["rtc_stats"] > 2  # the 2026-11-20 partition has several files

    if lake.rtclake("maintain", "--help").returncode != 0:
        figures.append("rtclake maintain: not available; the merged snapshot is not read")
        return
    lake.ok("maintain")
    merged = compare(lake, spark, "merged", figures)
    assert all(merged[t] <= imported[t] for t in CHECKS), (imported, merged)
    assert merged["rtc_stats"] == 2  # one file per date
    _, others = spark_read(spark, "rtc_stats", lake.files("rtc_stats"))
    assert others, "the merged files hold no _ducklake_internal_ columns: nothing was dropped"
    leftover = {t: len(set(lake.glob(t)) - set(lake.files(t))) for t in CHECKS}
    figures.append(
        "after maintenance, files a glob of main/TABLE/date=*/ finds beyond the live ones"
        f" (replaced, not yet cleaned up): {leftover}"
    )
