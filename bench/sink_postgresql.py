"""The postgresql sink for the sink benchmark (bench/sinks.py): this machine's PostgreSQL
(database ``test``), a schema of the run's own, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.sinks.base import Sink
from rtclake.sinks.postgresql import PostgreSQLConfig, PostgreSQLSink

URL = "postgresql://postgres@127.0.0.1:5432/test"


def make_sink(folder: Path) -> tuple[Sink, Callable[[], int], Callable[[], None]] | None:
    import psycopg
    from psycopg import sql

    schema = f"rtclake_bench_{uuid.uuid4().hex[:8]}"
    try:
        client = psycopg.connect(URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        print(f"postgresql: not measured, no server at {URL}: {exc}")
        return None
    config = PostgreSQLConfig(url=URL, schema=schema)  # type: ignore[arg-type]
    sink = PostgreSQLSink(config, default_registry(), "postgresql")
    sink.start()
    table = sql.Identifier(schema, "telemetry")

    def count() -> int:
        row = client.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        return int(row[0]) if row else 0

    def cleanup() -> None:
        sink.close()
        client.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        client.close()

    return sink, count, cleanup
