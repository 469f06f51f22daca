"""Query: DuckDB over the lake, with one view per lake table.

Views read ``ROOT/TABLE/date=*/*.parquet`` (``date`` comes from the folder name) and, by
default, show one row per ``record_id``, so a record that was delivered twice (a client
retry, a replayed batch) is counted once. Queries through :meth:`QueryEngine.run` are
read-only: one ``SELECT`` statement, no file access outside the lake, a row limit and a
time limit.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from rtclake.errors import QueryError
from rtclake.tables import Table, TableRegistry

_ALLOWED = {"SELECT"}


def json_default(value: Any) -> Any:
    """What ``orjson`` cannot encode by itself, as DuckDB returns it."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    truncated: bool
    elapsed: float
    json_columns: frozenset[str]

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def rows(self) -> list[list[Any]]:
        """Rows as lists; JSON columns parsed into objects."""
        columns = []
        for name in self.table.column_names:
            values = self.table.column(name).to_pylist()
            if name in self.json_columns:
                values = [None if v is None else orjson.loads(v) for v in values]
            columns.append(values)
        return [list(row) for row in zip(*columns, strict=True)] if columns else []


class QueryEngine:
    """Builds DuckDB connections that see the lake's tables as views."""

    def __init__(
        self,
        lake_root: str | Path,
        tables: TableRegistry,
        *,
        dedup: bool = True,
        max_rows: int = 10_000,
        timeout: float = 30.0,
        threads: int | None = None,
    ) -> None:
        self.root = Path(lake_root).absolute()
        self.tables = tables
        self.dedup = dedup
        self.max_rows = max_rows
        self.timeout = timeout
        self.threads = threads

    def _has_files(self, table: Table) -> bool:
        return next((self.root / table.name).glob("date=*/*.parquet"), None) is not None

    def view_sql(self, table: Table) -> str:
        """The ``CREATE VIEW`` for one table, reading its Parquet files."""
        glob = str(self.root / table.name / "date=*" / "*.parquet").replace("'", "''")
        source = (
            f"read_parquet('{glob}', hive_partitioning = true, hive_types = {{'date': DATE}},"
            " union_by_name = true)"
        )
        key = ", ".join(f'"{c}"' for c in table.identity) or "record_id"
        dedup = f" QUALIFY row_number() OVER (PARTITION BY {key}) = 1" if self.dedup else ""
        derived = f"{table.identity_sql()} AS record_id, " if table.identity else ""
        return (
            f'CREATE OR REPLACE VIEW "{table.name}" AS SELECT {derived}* REPLACE'
            f" (extra::JSON AS extra) FROM {source}{dedup}"
        )

    def connect(self, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per lake table.

        With ``read_only``, the connection can read nothing but the lake and its
        configuration is locked.
        """
        config: dict[str, Any] = {}
        if self.threads:
            config["threads"] = self.threads
        con = duckdb.connect(config=config)
        con.execute("SET TimeZone = 'UTC'")
        for table in self.tables:
            if self._has_files(table):
                con.execute(self.view_sql(table))
            else:
                empty = table.schema.empty_table().append_column("date", pa.array([], pa.date32()))
                con.register(f"_empty_{table.name}", empty)
                con.execute(
                    f'CREATE OR REPLACE VIEW "{table.name}" AS SELECT * REPLACE'
                    f" (extra::JSON AS extra) FROM _empty_{table.name}"
                )
        if read_only:
            root = str(self.root).replace("'", "''")
            con.execute(f"SET allowed_directories = ['{root}/']")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        return con

    def run(
        self, sql: str, *, max_rows: int | None = None, timeout: float | None = None
    ) -> QueryResult:
        """Run one read-only SELECT with row and time limits."""
        limit = min(max_rows or self.max_rows, self.max_rows)
        timeout = timeout or self.timeout
        con = self.connect(read_only=True)
        try:
            try:
                statements = con.extract_statements(sql)
            except duckdb.Error as exc:
                raise QueryError("bad_sql", str(exc)) from exc
            if len(statements) != 1:
                raise QueryError("bad_sql", f"send exactly one statement (got {len(statements)})")
            if statements[0].type.name not in _ALLOWED:
                raise QueryError(
                    "read_only", f"only SELECT queries are allowed (got {statements[0].type.name})"
                )
            return self._execute(con, sql, limit, timeout)
        finally:
            con.close()

    @staticmethod
    def _execute(
        con: duckdb.DuckDBPyConnection, sql: str, limit: int, timeout: float
    ) -> QueryResult:
        started = time.perf_counter()
        timer = threading.Timer(timeout, con.interrupt)
        timer.start()
        try:
            result = con.execute(sql)
            json_columns = frozenset(
                d[0] for d in result.description or () if str(d[1]).upper() == "JSON"
            )
            reader = result.fetch_record_batch(min(limit + 1, 100_000))
            batches: list[pa.RecordBatch] = []
            rows = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows > limit:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise QueryError("timeout", f"query ran longer than {timeout:g} s") from exc
        except duckdb.Error as exc:
            raise QueryError("query_failed", str(exc).splitlines()[0]) from exc
        finally:
            timer.cancel()
        truncated = table.num_rows > limit
        return QueryResult(
            table.slice(0, limit), truncated, time.perf_counter() - started, json_columns
        )
