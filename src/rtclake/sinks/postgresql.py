"""The postgresql sink: records into PostgreSQL (or TimescaleDB) tables with typed columns,
written so a replay stores nothing twice.

What it accepts: the rows of the tables listed in ``tables`` (default: every table but
``dead_letters``; of ``outbox``, the rows a broker addressed to this sink). Each lake
table goes to the table ``{schema}.{prefix}{table}``, created at start (or when a table
is first seen) with one column per column of the lake table: text, ``bigint``, ``double
precision``, ``boolean``, ``timestamptz``, ``bytea``, and ``jsonb`` for the JSON columns
and ``extra``; ``record_id`` is the primary key. A column the lake table gains later is
added (``ALTER TABLE … ADD COLUMN IF NOT EXISTS``). With TimescaleDB (``timescaledb:
auto`` and the extension installable, or ``on``) a new table is a hypertable on ``time``,
its primary key ``(record_id, time)``.

What it guarantees: at least once into PostgreSQL, once per record id. A batch is one
transaction: its rows are copied (``COPY … FROM STDIN``, CSV, ``chunk`` rows at a time)
into a temporary table, then ``INSERT … SELECT … ON CONFLICT (record_id) DO NOTHING``
into the target, so a replayed batch adds nothing. A row the server refuses (a value out
of range for its column, a NUL character in text or JSON, a CHECK or NOT NULL of a table
someone altered: a data or integrity error) is found by halving the rows of the failing
chunk, each part in its own savepoint; the other rows are stored and the refused ones go
to ``dead_letters`` with the server's SQLSTATE and message. Anything else (connection
refused, the server shutting down or ending the session, a timeout, a serialization
failure, missing privileges) is an outage: :class:`~rtclake.errors.SinkError`, nothing of
the batch is committed, it stays in the spool and is retried with backoff on a new
connection.

What it reports: the delivery's metrics under the sink's name
(``rtclake_batch_write_seconds{sink}``, ``rtclake_sink_errors_total{sink}``, ...).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import structlog
from pydantic import Field, SecretStr, field_validator

from rtclake.errors import SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink, addressed, check_tables, rows_taken
from rtclake.tables import DEAD_LETTERS, OUTBOX, TableRegistry

if TYPE_CHECKING:
    import psycopg

log = structlog.get_logger(__name__)

_CSV = pa_csv.WriteOptions(include_header=False)
_COLUMN_IN_CONTEXT = re.compile(r"\bcolumn (\S+?):")


# BaseModel has a (deprecated) method called schema: pydantic warns that the field shadows
# it, and the field is what `schema` means in a PostgreSQL sink's settings.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", 'Field name "schema"', UserWarning)

    class PostgreSQLConfig(SinkConfig):
        """A table per lake table with typed columns, ``record_id`` its key; with
        TimescaleDB a hypertable on ``time``."""

        url: SecretStr = Field(
            description="a libpq connection URI, postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            " (masked in `rtclake config`)"
        )
        tables: list[str] | None = Field(
            default=None,
            description="the tables written; default every table but dead_letters (of outbox,"
            " the rows addressed to this sink)",
        )
        schema: str = Field(  # type: ignore[assignment]
            default="public",
            description="the PostgreSQL schema of the tables (created when missing)",
        )
        prefix: str = Field(default="", description="before each table's name")
        timescaledb: Literal["auto", "on", "off"] = Field(
            default="auto",
            description="auto: new tables are hypertables on time when the timescaledb extension"
            " is (or can be) installed; on: required (an outage until it is); off: plain tables",
        )
        chunk: int = Field(
            default=10_000, gt=0, description="rows per COPY (and per retry of a refused part)"
        )
        timeout: float = Field(
            default=30.0, gt=0, description="seconds to connect, and for each statement"
        )

        @field_validator("timescaledb", mode="before")
        @classmethod
        def _yaml_boolean(cls, value: Any) -> Any:
            # YAML reads an unquoted off/on (no/yes) as a boolean
            if isinstance(value, bool):
                return "on" if value else "off"
            return value


def pg_type(arrow: pa.DataType, json: bool = False) -> str:
    """The PostgreSQL type of a column of Arrow type ``arrow`` (``json``: a JSON column)."""
    if json:
        return "jsonb"
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        return "text"
    if pa.types.is_boolean(arrow):
        return "boolean"
    if pa.types.is_integer(arrow):
        return "bigint"
    if pa.types.is_floating(arrow):
        return "double precision"
    if pa.types.is_timestamp(arrow):
        return "timestamptz"
    if pa.types.is_date(arrow):
        return "date"
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow):
        return "bytea"
    if pa.types.is_decimal(arrow):
        return "numeric"
    return "jsonb"  # lists, structs, maps: as JSON


@dataclass
class Target:
    """A destination table as the server has it: its name, columns and conflict key."""

    name: Any  # psycopg.sql.Composable: the schema-qualified identifier
    columns: dict[str, str]  # name -> type
    key: list[str]  # the columns of ON CONFLICT (...)
    stage: Any = None  # this transaction's temporary table, once made


@dataclass
class Refusals:
    rows: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def add(self, table: str, row: int, reason: str) -> None:
        self.rows.setdefault(table, []).append((row, reason))


class PostgreSQLSink(Sink):
    """COPYs rows into a temporary table and inserts them once (see the module doc)."""

    def __init__(self, config: PostgreSQLConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.needs_record_id = True
        self.names = config.tables or [n for n in tables.names() if n != DEAD_LETTERS.name]
        self.timescale = False
        #: Why TimescaleDB is not used, when it is not (for the log and the tests).
        self.timescale_reason = ""
        self._conn: psycopg.Connection[Any] | None = None
        self._targets: dict[str, Target] = {}
        self._started = False
        self._stages = 0

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop_connection()
        timeout_ms = int(self.config.timeout * 1000)
        try:
            self._conn = psycopg.connect(
                self.config.url.get_secret_value(),
                autocommit=True,  # transactions are explicit: conn.transaction()
                connect_timeout=max(1, round(self.config.timeout)),
                application_name=f"rtclake-{self.name}",
                client_encoding="utf8",
                options=f"-c statement_timeout={timeout_ms} -c TimeZone=UTC",
            )
        except psycopg.Error as exc:
            raise SinkError(f"postgresql: cannot connect: {_text(exc)}") from exc
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken one may fail: it is gone anyway
                self._conn.close()
            self._conn = None
        self._targets = {}

    def close(self) -> None:
        self._drop_connection()

    # -- setup ------------------------------------------------------------------------------

    def start(self) -> None:
        import psycopg
        from psycopg import sql

        conn = self._connect()
        try:
            self._find_timescale(conn)
            with conn.transaction():
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(self.config.schema)
                    )
                )
                for name in self.names:
                    if name in self.tables:
                        self._ensure(conn, name, self.tables[name].schema)
        except psycopg.Error as exc:
            self._fail(exc)
        self._started = True

    def _find_timescale(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        self.timescale, self.timescale_reason = False, "timescaledb: off"
        if self.config.timescaledb == "off":
            return
        installed = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if installed is None:
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                installed = ("",)
            except psycopg.Error as exc:
                if conn.broken:
                    raise
                self.timescale_reason = f"the timescaledb extension cannot be created: {_text(exc)}"
        if installed is None:
            if self.config.timescaledb == "on":
                raise SinkError(f"postgresql: timescaledb: on, but {self.timescale_reason}")
            log.info("postgresql: plain tables", sink=self.name, reason=self.timescale_reason)
            return
        self.timescale, self.timescale_reason = True, ""

    def _ensure(self, conn: psycopg.Connection[Any], name: str, schema: pa.Schema) -> Target:
        """The target of lake table ``name``, created when missing, with a column for each
        field of ``schema`` (and of the lake table's schema) it lacks. Runs inside the
        caller's transaction."""
        from psycopg import sql

        json_columns = {"extra"}
        wanted = list(schema)
        if name in self.tables:
            table = self.tables[name]
            json_columns |= {c.name for c in table.columns if c.kind == "json"}
            known = set(schema.names)
            wanted += [f for f in table.schema if f.name not in known]
        target = self._targets.get(name)
        if target is None:
            ident = sql.Identifier(self.config.schema, f"{self.config.prefix}{name}")
            target = self._create(conn, ident, wanted, json_columns)
            self._targets[name] = target
        missing = [f for f in wanted if f.name not in target.columns]
        if missing:
            conn.execute(
                sql.SQL("ALTER TABLE {} {}").format(
                    target.name,
                    sql.SQL(", ").join(
                        sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                            sql.Identifier(f.name),
                            sql.SQL(pg_type(f.type, f.name in json_columns)),
                        )
                        for f in missing
                    ),
                )
            )
            for f in missing:
                target.columns[f.name] = pg_type(f.type, f.name in json_columns)
            log.info(
                "postgresql: columns added", sink=self.name, table=name,
                columns=[f.name for f in missing],
            )  # fmt: skip
        return target

    def _create(
        self,
        conn: psycopg.Connection[Any],
        ident: Any,
        fields: list[pa.Field],
        json_columns: set[str],
    ) -> Target:
        from psycopg import sql

        key = ["record_id", "time"] if self.timescale else ["record_id"]
        definitions = [
            sql.SQL("{} {}{}").format(
                sql.Identifier(f.name),
                sql.SQL(pg_type(f.type, f.name in json_columns)),
                sql.SQL(" NOT NULL" if f.name in key else ""),
            )
            for f in fields
        ]
        definitions.append(
            sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key)))
        )
        qualified = ident.as_string(conn)
        found = conn.execute("SELECT to_regclass(%s)", (qualified,)).fetchone()
        existed = found is not None and found[0] is not None
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                ident, sql.SQL(", ").join(definitions)
            )
        )
        if self.timescale and not existed:  # a table made before stays as it is
            conn.execute(
                "SELECT create_hypertable(%s::regclass, 'time', if_not_exists => TRUE,"
                " migrate_data => TRUE)",
                (qualified,),
            )
        columns = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (qualified,),
            )
        }
        # The conflict key: a unique index (the primary key, or one someone made) on
        # record_id, with time besides it at most (a hypertable's).
        unique = conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL"
            " GROUP BY i.indexrelid, i.indisprimary ORDER BY i.indisprimary DESC",
            (qualified,),
        ).fetchall()
        for (names,) in unique:
            if "record_id" in names and set(names) <= {"record_id", "time"}:
                return Target(ident, columns, list(names))
        raise SinkError(
            f"postgresql: {qualified} has no primary key or unique index on record_id"
            " (alone or with time): a replay could not be told apart"
        )

    # -- writing ----------------------------------------------------------------------------

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.names, self.name)

    def write(self, batch: Batch) -> None:
        import psycopg

        if not self._started:
            self.start()
        conn = self._connect()
        refusals = Refusals()
        try:
            with conn.transaction():  # the batch: all or nothing
                for name in self.names:
                    if name not in batch.tables:
                        continue
                    rows, indices = self._rows(batch, name)
                    if rows.num_rows == 0:
                        continue
                    if "record_id" not in rows.schema.names:
                        raise SinkError(f"postgresql: table {name} came without record_id")
                    target = self._ensure(conn, name, rows.schema)
                    self._stage(conn, target, rows.schema.names)
                    size = self.config.chunk
                    for start in range(0, rows.num_rows, size):
                        part = rows.slice(start, size)
                        self._store(conn, target, name, part, indices[start : start + size],
                                    refusals)  # fmt: skip
                    target.stage = None  # dropped at commit
        except psycopg.Error as exc:
            self._fail(exc)
        except BaseException:
            self._targets = {}  # the transaction's DDL was rolled back
            raise
        if refusals.rows:
            raise Rejected(refusals.rows)

    def _fail(self, exc: psycopg.Error) -> None:
        """An outage: forget what the rolled-back transaction made, drop a broken
        connection, raise SinkError."""
        self._targets = {}
        if self._conn is None or self._conn.broken or self._conn.closed:
            self._drop_connection()
        raise SinkError(f"postgresql: {_text(exc)}") from exc

    def _rows(self, batch: Batch, name: str) -> tuple[pa.Table, list[int]]:
        """The rows of ``name`` this sink takes, and their indices in the batch."""
        table = batch.tables[name]
        indices = list(range(table.num_rows))
        if name != OUTBOX.name or "sinks" not in table.schema.names:
            return table, indices
        keep = [addressed(text, self.name) for text in table.column("sinks").to_pylist()]
        return table.filter(pa.array(keep, pa.bool_())), [i for i in indices if keep[i]]

    def _stage(self, conn: psycopg.Connection[Any], target: Target, columns: list[str]) -> None:
        """A temporary table of the target's types for ``columns`` (without its
        constraints: the target checks them), dropped at the end of the transaction."""
        from psycopg import sql

        self._stages += 1
        target.stage = sql.Identifier(f"rtclake_stage_{self._stages}")
        conn.execute(
            sql.SQL(
                "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
            ).format(target.stage, _idents(columns), target.name)
        )

    def _store(
        self,
        conn: psycopg.Connection[Any],
        target: Target,
        name: str,
        part: pa.Table,
        indices: list[int],
        refusals: Refusals,
    ) -> None:
        """COPY ``part`` into the stage and insert it into the target, in a savepoint; on a
        data or integrity error, the halves apart, down to the rows refused."""
        import psycopg
        from psycopg import sql

        columns = _idents(part.schema.names)
        try:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute(sql.SQL("TRUNCATE {}").format(target.stage))
                copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(target.stage, columns)
                with cursor.copy(copy) as sink:
                    for block in csv_blocks(part):
                        sink.write(block)
                cursor.execute(
                    sql.SQL(
                        "INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO NOTHING"
                    ).format(target.name, columns, columns, target.stage, _idents(target.key))
                )
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if part.num_rows == 1:
                refusals.add(name, indices[0], _reason(exc))
                return
            half = part.num_rows // 2
            self._store(conn, target, name, part.slice(0, half), indices[:half], refusals)
            self._store(conn, target, name, part.slice(half), indices[half:], refusals)


def csv_blocks(part: pa.Table) -> Iterator[bytes]:
    """``part`` as CSV for COPY: NULL unquoted and empty, text quoted, bytea as ``\\x`` hex,
    nested values as JSON."""
    columns = []
    for column in part.columns:
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            column = pa.array(
                [None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string()
            )
        elif pa.types.is_nested(kind) or pa.types.is_dictionary(kind):
            column = pa.array(
                [None if v is None else orjson.dumps(v, default=str).decode()
                 for v in column.to_pylist()], pa.string(),
            )  # fmt: skip
        elif pa.types.is_timestamp(kind) and kind.tz is None:
            column = pc.assume_timezone(column, "UTC")
        columns.append(column)
    table = pa.Table.from_arrays(columns, names=part.schema.names)
    out = pa.BufferOutputStream()
    pa_csv.write_csv(table, out, _CSV)
    yield out.getvalue().to_pybytes()


def _idents(names: Iterable[str]) -> Any:
    from psycopg import sql

    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _reason(exc: psycopg.Error) -> str:
    """The server's SQLSTATE and message, with the column or constraint it names."""
    diag = exc.diag
    text = f"postgresql {exc.sqlstate}: {diag.message_primary or exc}"
    column = diag.column_name
    if column is None and diag.context:
        found = _COLUMN_IN_CONTEXT.search(diag.context)
        column = found.group(1) if found else None
    if column:
        text += f" (column {column})"
    if diag.constraint_name:
        text += f" (constraint {diag.constraint_name})"
    return text[:1000]


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]


def build(config: PostgreSQLConfig, ctx: BuildContext) -> PostgreSQLSink:
    check_tables(config.tables, ctx)
    return PostgreSQLSink(config, ctx.tables, ctx.name)


POSTGRESQL = ComponentType(
    "sink", "postgresql", PostgreSQLConfig, build,
    "Records into PostgreSQL or TimescaleDB: COPY, then INSERT … ON CONFLICT DO NOTHING.",
)  # fmt: skip
