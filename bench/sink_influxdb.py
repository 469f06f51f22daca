"""The influxdb sink for the sink benchmark (bench/sinks.py): Debian's InfluxDB 1.6
(``influxd``), started for the run in its folder on free loopback ports (as the tests
start it) and stopped afterwards; v1 ``/write``, the default points of ``telemetry``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.influxdb import InfluxDBConfig, InfluxDBSink

UNAVAILABLE = "influxd is not installed (Debian's influxdb package; scripts/test-deps.sh)"


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    from tests.test_influxdb_sink import INFLUXD, Influxd

    if INFLUXD is None:
        print(f"influxdb: not measured, {UNAVAILABLE}")
        return None
    server = Influxd(folder / "influxd").start()
    config = InfluxDBConfig(type="influxdb", url=server.url, database="bench")
    sink = InfluxDBSink(config, default_registry(), "influxdb")
    sink.start()

    def count() -> int:
        series = server.query("SELECT count(temp) FROM telemetry", "bench")
        return int(series[0]["values"][0][1]) if series else 0

    def cleanup() -> None:
        sink.close()
        server.stop()

    return sink, count, cleanup
