"""The postgresql sink against the PostgreSQL on this machine (a schema of each test's own
in the database ``test``, dropped afterwards): typed columns, a replay that stores nothing
twice, refused rows singled out and dead-lettered, a new column added, an outage (a closed
port, a terminated session, a relay that is down for a while) as SinkError with nothing
lost, and end to end behind the writer. TimescaleDB is not installed here: its hypertable
test skips with the reason."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from rtclake.catalog import default_registry
from rtclake.config import load_settings
from rtclake.errors import SinkError
from rtclake.registry import load_registry
from rtclake.sinks.base import Batch, Rejected
from rtclake.sinks.postgresql import PostgreSQLConfig, PostgreSQLSink
from rtclake.tables import OUTBOX
from rtclake.testing import TcpRelay, wait_for
from tests.conftest import free_port
from tests.test_query import batch
from tests.test_sora_webhooks import App

HOST, PORT = "127.0.0.1", 5432
URL = os.environ.get("RTCLAKE_TEST_POSTGRESQL_URL", f"postgresql://postgres@{HOST}:{PORT}/test")


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of the test's own, dropped afterwards."""
    name = f"rtclake_test_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(URL, autocommit=True) as client:
        client.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def query(text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(URL, autocommit=True) as client:
        cursor = client.execute(text, params or None)
        return cursor.fetchall() if cursor.description else []


def count(schema: str, table: str = "telemetry") -> int:
    try:
        return int(query(f'SELECT count(*) FROM "{schema}"."{table}"')[0][0])
    except psycopg.errors.UndefinedTable:  # not made yet
        return 0


def lines(n: int, device: str = "d") -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-20T00:00:%02dZ", "device_id": "%s%d", "temp": %d}'
        % (i, device.encode(), i, 20 + i)
        for i in range(n)
    )


def sink(schema: str, url: str = URL, **settings: Any) -> PostgreSQLSink:
    config = PostgreSQLConfig(url=url, schema=schema, timeout=5, **settings)  # type: ignore[arg-type]
    return PostgreSQLSink(config, default_registry(), "pg")


def test_tables_are_created_with_typed_columns_and_record_id_as_key(schema: str) -> None:
    writer = sink(schema)
    writer.start()
    writer.close()
    types = dict(
        query(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s",
            schema,
        )
    )
    assert {
        "telemetry.record_id": "text",
        "telemetry.time": "timestamp with time zone",
        "telemetry.device_id": "text",
        "telemetry.metadata": "jsonb",
        "telemetry.payload": "bytea",
        "telemetry.extra": "jsonb",
        "rtc_stats.record_id": "text",  # an identity table: record ids come with its rows
        "rtc_stats.bytes_sent": "bigint",
        "rtc_stats.jitter": "double precision",
        "rtc_stats.simulcast": "boolean",
        "rtc_stats.rtc_timestamp": "timestamp with time zone",
        "rtc_stats.quality_limitation_durations": "jsonb",
    }.items() <= types.items()
    assert not any(name.startswith("dead_letters.") for name in types)
    keys = query(
        "SELECT c.relname, a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indisprimary AND n.nspname = %s AND c.relname IN ('telemetry', 'rtc_stats')",
        schema,
    )
    assert sorted(keys) == [("rtc_stats", "record_id"), ("telemetry", "record_id")]


def test_a_replayed_batch_stores_nothing_twice_and_values_keep_their_types(schema: str) -> None:
    writer = sink(schema, prefix="rtc_", tables=["telemetry"], chunk=3)
    writer.start()
    made = batch(1, lines(7))
    writer.write(made)
    writer.write(made)  # the writer delivers at least once: a replay
    writer.write(batch(2, lines(2)))  # the same devices at the same times: the same ids
    writer.close()
    assert count(schema, "rtc_telemetry") == 7
    rows = query(
        f'SELECT record_id, time, device_id, extra, payload FROM "{schema}".rtc_telemetry'
        " ORDER BY time"
    )
    assert [r[0] for r in rows] == made.tables["telemetry"]["record_id"].to_pylist()
    assert rows[3][1:] == (
        dt.datetime(2026, 11, 20, 0, 0, 3, tzinfo=dt.UTC), "d3", {"temp": 23}, None,
    )  # fmt: skip


def test_every_arrow_kind_round_trips(schema: str) -> None:
    """Text with quotes, commas and newlines, empty text apart from NULL, bytes, numbers
    at their limits, booleans, times: as the lake has them."""
    table = default_registry()["telemetry"]
    now = dt.datetime(2026, 11, 20, 1, 2, 3, 456789, tzinfo=dt.UTC)
    rows = [
        {"record_id": "a", "time": now, "received_at": now, "source": "s", "stream": "x",
         "kind": "telemetry", "type": "", "device_id": 'quote " comma , newline \n end',
         "payload": b"\x00\x01\xff", "metadata": '{"k": [1, 2]}', "extra": '{"n": null}'},
        {"record_id": "b", "time": now, "received_at": now, "source": "s", "stream": "x",
         "kind": "telemetry", "type": None, "device_id": "", "payload": b"", "extra": None},
    ]  # fmt: skip
    telemetry = pa.Table.from_pylist(rows, schema=table.schema)
    extra = pa.table({
        "big": pa.array([2**63 - 1, None], pa.int64()),
        "ratio": pa.array([float("inf"), 1e-300], pa.float64()),
        "flag": pa.array([True, None], pa.bool_()),
    })  # fmt: skip
    for name in extra.column_names:  # columns the lake table does not have: added
        telemetry = telemetry.append_column(name, extra[name])
    writer = sink(schema, tables=["telemetry"])
    writer.write(Batch("n", "r", 1, {"telemetry": telemetry}))
    writer.close()
    got = query(
        f"SELECT record_id, type, device_id, payload, metadata, extra, big, ratio, flag, time"
        f' FROM "{schema}".telemetry ORDER BY record_id'
    )
    assert got == [
        ("a", "", 'quote " comma , newline \n end', b"\x00\x01\xff", {"k": [1, 2]},
         {"n": None}, 2**63 - 1, float("inf"), True, now),
        ("b", None, "", b"", None, None, None, 1e-300, None, now),
    ]  # fmt: skip
    types = dict(
        query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND column_name IN ('big', 'ratio', 'flag')",
            schema,
        )
    )
    assert types == {"big": "bigint", "ratio": "double precision", "flag": "boolean"}


def test_a_table_made_before_gets_the_columns_the_lake_table_has_since(schema: str) -> None:
    query(f'CREATE SCHEMA "{schema}"')
    query(
        f'CREATE TABLE "{schema}".telemetry (record_id text PRIMARY KEY, time timestamptz,'
        " extra jsonb)"
    )
    writer = sink(schema, tables=["telemetry"])
    writer.start()
    made = batch(1, lines(3))
    writer.write(made)
    writer.close()
    assert count(schema) == 3
    assert query(f'SELECT device_id FROM "{schema}".telemetry ORDER BY time LIMIT 1') == [("d0",)]


def test_a_table_without_a_key_on_record_id_is_refused_with_why(schema: str) -> None:
    query(f'CREATE SCHEMA "{schema}"')
    query(f'CREATE TABLE "{schema}".telemetry (record_id text, time timestamptz)')
    writer = sink(schema, tables=["telemetry"])
    with pytest.raises(SinkError, match="no primary key or unique index on record_id"):
        writer.start()
    writer.close()


def test_refused_rows_are_singled_out_and_the_rest_is_stored(schema: str) -> None:
    writer = sink(schema, tables=["telemetry"], chunk=4)
    writer.start()
    query(f"ALTER TABLE \"{schema}\".telemetry ADD CONSTRAINT cold CHECK (device_id <> 'hot')")
    body = lines(9).split(b"\n")
    body[2] = b'{"time": "2026-11-20T00:01:00Z", "device_id": "a\\u0000b"}'  # NUL in text
    body[5] = b'{"time": "2026-11-20T00:01:01Z", "device_id": "x", "note": "a\\u0000b"}'
    body[6] = b'{"time": "2026-11-20T00:01:02Z", "device_id": "hot"}'  # the CHECK
    made = batch(1, b"\n".join(body))
    for _ in range(2):  # and again, replayed: the same refusals, nothing twice
        with pytest.raises(Rejected) as refused:
            writer.write(made)
        reasons = dict(refused.value.rows["telemetry"])
        assert sorted(reasons) == [2, 5, 6]
        assert reasons[2].startswith("postgresql 22021: invalid byte sequence")
        assert reasons[5].startswith("postgresql 22P05: unsupported Unicode escape sequence")
        assert "(column extra)" in reasons[5]
        assert reasons[6].startswith("postgresql 23514: ") and "(constraint cold)" in reasons[6]
        assert count(schema) == 6
    writer.close()


def test_of_the_outbox_only_the_rows_addressed_to_this_sink(schema: str) -> None:
    now = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    rows = [
        {"record_id": f"o{i}", "time": now, "received_at": now, "source": "broker",
         "stream": "s", "kind": "message", "sinks": orjson.dumps(sinks).decode(),
         "text": f"t{i}"}
        for i, sinks in enumerate([["pg"], ["slack"], ["slack", "pg"], []])
    ]  # fmt: skip
    outbox = pa.Table.from_pylist(rows, schema=OUTBOX.schema)
    writer = sink(schema, tables=["outbox"])
    writer.write(Batch("n", "r", 1, {"outbox": outbox}))
    writer.close()
    assert query(f'SELECT record_id, sinks FROM "{schema}".outbox ORDER BY 1') == [
        ("o0", ["pg"]),
        ("o2", ["slack", "pg"]),
    ]


def test_an_unreachable_server_is_an_outage() -> None:
    writer = sink("public", url=f"postgresql://postgres@{HOST}:{free_port()}/test")
    with pytest.raises(SinkError, match="cannot connect"):
        writer.start()
    with pytest.raises(SinkError, match="cannot connect"):
        writer.write(batch(1, lines(1)))


def test_a_terminated_session_is_an_outage_and_the_retry_stores_everything_once(
    schema: str,
) -> None:
    writer = sink(schema, tables=["telemetry"])
    writer.write(batch(1, lines(3)))
    assert writer._conn is not None
    pid = writer._conn.info.backend_pid
    assert query("SELECT pg_terminate_backend(%s)", pid) == [(True,)]
    second = batch(2, lines(5, device="e"))
    with pytest.raises(SinkError, match="postgresql"):
        writer.write(second)
    writer.write(second)  # the delivery's retry: a new session
    writer.write(second)
    writer.close()
    assert count(schema) == 8


def test_timescaledb_on_without_the_extension_is_an_outage_and_auto_makes_plain_tables(
    schema: str,
) -> None:
    if query("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        pytest.skip("timescaledb is installed here: the hypertable test covers it")
    with pytest.raises(SinkError, match="timescaledb: on, but the timescaledb extension"):
        sink(schema, timescaledb="on").start()
    writer = sink(schema, tables=["telemetry"])
    writer.start()
    writer.close()
    assert not writer.timescale and "timescaledb" in writer.timescale_reason
    assert count(schema) == 0


def test_timescaledb_off_or_on_unquoted_in_yaml_is_taken_as_written(
    tmp_path: Path, schema: str
) -> None:
    path = tmp_path / "rtclake.yaml"  # YAML reads these unquoted as booleans
    path.write_text(
        "sinks:\n"
        f"  plain: {{type: postgresql, url: '{URL}', schema: {schema}, timescaledb: off}}\n"
        f"  hyper: {{type: postgresql, url: '{URL}', timescaledb: on}}\n"
        f"  hyper2: {{type: postgresql, url: '{URL}', timescaledb: yes}}\n"
    )
    configs = {}
    for name, _, config in load_registry().configured("sink", load_settings(path).sinks):
        assert isinstance(config, PostgreSQLConfig)
        configs[name] = config
    assert {name: config.timescaledb for name, config in configs.items()} == {
        "plain": "off", "hyper": "on", "hyper2": "on",
    }  # fmt: skip
    plain = configs["plain"]
    writer = PostgreSQLSink(plain, default_registry(), "plain")
    writer.start()
    writer.close()
    assert (writer.timescale, writer.timescale_reason) == (False, "timescaledb: off")


def test_with_timescaledb_tables_are_hypertables_on_time(schema: str) -> None:
    if not query("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        pytest.skip(
            "the timescaledb extension is not installed in this machine's PostgreSQL"
            " (pg_available_extensions has no timescaledb; Debian has no package for it)"
        )
    writer = sink(schema, tables=["telemetry"], timescaledb="on")
    writer.start()
    made = batch(1, lines(4))
    writer.write(made)
    writer.write(made)
    writer.close()
    assert writer.timescale
    assert count(schema) == 4
    assert query(
        "SELECT column_name FROM timescaledb_information.dimensions"
        " WHERE hypertable_schema = %s AND hypertable_name = 'telemetry'",
        schema,
    ) == [("time",)]


def test_behind_the_writer_records_wait_out_an_outage_and_arrive_once(
    tmp_path: Path, schema: str
) -> None:
    relay = TcpRelay((HOST, PORT), up=False)
    url = f"postgresql://postgres@{HOST}:{relay.port}/test"
    sinks = {"pg": {"type": "postgresql", "url": url, "schema": schema, "timeout": 2}}
    app = App(tmp_path, sinks=sinks, writer={"retry_max": 0.5}).start()
    try:
        # down from the start: the sink cannot start, the records wait in the spool.
        # One request: the writer drains segments in order, so a second request sealed
        # in a segment of its own would wait behind the first, which the sink lacks
        # (the lake would then hold 5, not 10, until the sink is back).
        body = b"\n".join(lines(5).replace(b'"d', b'"p%d-' % part) for part in range(2))
        assert app.post("/ingest/sensors", body).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM telemetry", 10) == 10  # the lake has them
        relay.up()
        assert wait_for(lambda: count(schema) == 10, timeout=20)
        relay.down()  # and down again, with a session open
        body = lines(5).replace(b'"d', b'"p2-')
        assert app.post("/ingest/sensors", body).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM telemetry", 15) == 15
        time.sleep(1)
        assert count(schema) == 10
        relay.up()
        assert wait_for(lambda: count(schema) == 15, timeout=20)
        errors = app.service.metrics.registry.get_sample_value(
            "rtclake_sink_errors_total", {"sink": "pg"}
        )
        assert errors and errors >= 2
    finally:
        app.stop()
        relay.down()
    assert query(f'SELECT count(DISTINCT record_id) FROM "{schema}".telemetry') == [(15,)]


def test_behind_the_writer_a_refused_record_lands_in_dead_letters_with_its_reason(
    tmp_path: Path, schema: str
) -> None:
    sinks = {"pg": {"type": "postgresql", "url": URL, "schema": schema, "tables": ["telemetry"]}}
    app = App(tmp_path, sinks=sinks, writer={"retry_max": 0.5}).start()
    try:
        body = lines(3) + b'\n{"time": "2026-11-20T00:02:00Z", "device_id": "nul\\u0000here"}'
        assert app.post("/ingest/sensors", body).status_code == 200
        assert app.wait_rows("SELECT count(*) FROM dead_letters", 1) == 1
        letter = app.rows("SELECT sink, table_name, reason, record FROM dead_letters")[0]
        assert letter[:2] == ["pg", "telemetry"]
        assert letter[2].startswith("postgresql 22021: invalid byte sequence")
        assert orjson.loads(letter[3])["device_id"] == "nul\x00here"
        assert wait_for(lambda: count(schema) == 3, timeout=10)
        assert app.wait_rows("SELECT count(*) FROM telemetry", 4) == 4  # the lake has it all
    finally:
        app.stop()
