"""Every DuckDB type comes back as JSON (over HTTP and from ``rtclake query``), as CSV and
in the table view; columns that share a name are told apart."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from rtclake.catalog import default_registry
from rtclake.cli import app
from rtclake.lake.sink import LakeSink
from tests.conftest import Server
from tests.test_query import batch

# Types test_all_types() has no column of, with a value to cast to each.
SAMPLES = {
    "NULL": "NULL",
    "TIME_NS": "'10:11:12.123456789'",
    "VARIANT": "{'a': [1, 2]}",
}


def duckdb_types() -> list[str]:
    """DuckDB's own list of its types, one name per logical type."""
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT DISTINCT logical_type FROM duckdb_types() ORDER BY 1").fetchall()
        return [row[0] for row in rows]
    finally:
        con.close()


def sample_sql(logical_type: str) -> str:
    """A query returning NULL, the minimum and the maximum of a type (or a sample value)."""
    con = duckdb.connect()
    try:
        described = con.execute("DESCRIBE SELECT * FROM test_all_types()").fetchall()
    finally:
        con.close()
    # DESCRIBE names a column's type in full ("DECIMAL(4,1)", "INTEGER[]"); match its kind.
    kinds = {"[]": "LIST", "]": "ARRAY"}
    columns = []
    for name, type_name, *_ in described:
        kind = next((k for end, k in kinds.items() if type_name.endswith(end)), None)
        kind = kind or type_name.split("(")[0]
        if kind == logical_type:
            columns.append(f'"{name}"')
    if columns:
        return f"SELECT {', '.join(columns)} FROM test_all_types()"
    assert logical_type in SAMPLES, f"add a sample value of {logical_type} to SAMPLES"
    value = SAMPLES[logical_type]
    return f'SELECT NULL::"{logical_type}" AS n, {value}::"{logical_type}" AS v'


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder whose lake holds 30 telemetry rows over three days."""
    data = tmp_path_factory.mktemp("results") / "data"
    sink = LakeSink(data / "lake", default_registry())
    sink.start()
    body = b"\n".join(
        b'{"time": "2026-11-%02dT10:00:00Z", "device_id": "d%d", "v": %d}' % (1 + i % 3, i, i)
        for i in range(30)
    )
    sink.write(batch(1, body))
    sink.close()  # as a writer that stopped: the server opens the catalog on its own
    return data


@pytest.fixture(scope="module")
def api(data_dir: Path) -> Iterator[Server]:
    server = Server(data_dir).start()
    yield server
    server.stop()


def http_query(api: Server, sql: str) -> httpx.Response:
    response = httpx.post(api.url + "/api/query", json={"sql": sql}, timeout=60)
    assert response.status_code == 200, response.text
    return response


def cli(data_dir: Path, sql: str, fmt: str) -> str:
    result = CliRunner().invoke(
        app, ["query", sql, "--format", fmt], env={"RTCLAKE_DATA_DIR": str(data_dir)}
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def values(api: Server, sql: str) -> list[Any]:
    """The first row of ``sql`` as the HTTP API returns it."""
    row: list[Any] = http_query(api, sql).json()["rows"][0]
    return row


@pytest.mark.parametrize("logical_type", [*duckdb_types(), "test_all_types()"])
def test_every_duckdb_type_is_returned_as_json_csv_and_table(
    api: Server, data_dir: Path, logical_type: str
) -> None:
    if logical_type == "test_all_types()":  # every column at once, fixed-size arrays too
        sql = "SELECT * FROM test_all_types()"
    else:
        sql = sample_sql(logical_type)
    body = http_query(api, sql).json()
    assert body["row_count"] >= 1 and len(body["rows"][0]) == len(body["columns"])
    from_cli = orjson.loads(cli(data_dir, sql, "json"))
    assert [list(row.values()) for row in from_cli] == body["rows"]
    table = list(csv.reader(io.StringIO(cli(data_dir, sql, "csv"))))
    assert table[0] == body["columns"] and len(table) == body["row_count"] + 1
    assert cli(data_dir, sql, "table").strip()


def test_interval_is_an_iso_8601_duration(api: Server) -> None:
    assert values(api, "SELECT max(time) - min(time) FROM telemetry") == ["P2D"]
    sql = (
        "SELECT INTERVAL '1 year 2 months 3 days 04:05:06.5', INTERVAL '0 seconds',"
        " - INTERVAL '90 minutes', INTERVAL '1 month' - INTERVAL '3 days',"
        " INTERVAL '1 microsecond'"
    )
    assert values(api, sql) == ["P1Y2M3DT4H5M6.5S", "PT0S", "PT-1H-30M", "P1M-3D", "PT0.000001S"]


def test_integers_beyond_2_53_are_strings(api: Server) -> None:
    sql = (
        "SELECT 9007199254740993::BIGINT, 9007199254740991::BIGINT, -9007199254740993::BIGINT,"
        " 18446744073709551615::UBIGINT, 170141183460469231731687303715884105727::HUGEINT,"
        " 5::HUGEINT, 340282366920938463463374607431768211455::UHUGEINT,"
        " (-123456789012345678901234567890)::BIGNUM, 7::BIGNUM"
    )
    response = http_query(api, sql)
    assert response.json()["rows"][0] == [
        "9007199254740993",
        9007199254740991,
        "-9007199254740993",
        "18446744073709551615",
        "170141183460469231731687303715884105727",
        5,
        "340282366920938463463374607431768211455",
        "-123456789012345678901234567890",
        7,
    ]
    assert b'"9007199254740993"' in response.content


def test_blob_is_base64_and_bit_is_text(api: Server) -> None:
    sql = r"SELECT '\xAA\xBB\x00'::BLOB, '0101'::BIT, '101010101'::BIT"
    assert values(api, sql) == ["qrsA", "0101", "101010101"]


def test_text_like_types_are_text(api: Server) -> None:
    sql = (
        "SELECT '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID, 'b'::ENUM('a', 'b'),"
        " '10:00:00+02'::TIMETZ, '10:11:12.123456789'::TIME_NS, '{\"k\": [1]}'::JSON"
    )
    assert values(api, sql) == [
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "b",
        "10:00:00+02",
        "10:11:12.123456789",
        {"k": [1]},
    ]


def test_decimals_are_numbers_until_a_double_cannot_hold_them(api: Server) -> None:
    sql = "SELECT 1.5::DECIMAL(4,1), 0.1::DECIMAL(38,10), 12345678901234567.5::DECIMAL(38,1)"
    assert values(api, sql) == [1.5, 0.1, "12345678901234567.5"]


def test_times_and_dates_are_iso_even_outside_python_range(api: Server) -> None:
    sql = (
        "SELECT TIMESTAMPTZ '2026-11-01 10:00:00.25Z', DATE '2026-11-01', TIME '24:00:00',"
        " 'infinity'::DATE, '-infinity'::TIMESTAMP, TIMESTAMP '294247-01-10 04:00:54.775806',"
        " DATE '5877642-06-25 (BC)', TIMESTAMP_NS '2026-11-01 10:00:00.123456789',"
        " TIMESTAMP_S '2026-11-01 10:00:00', 'NaN'::DOUBLE, '-inf'::FLOAT"
    )
    assert values(api, sql) == [
        "2026-11-01T10:00:00.250000Z",
        "2026-11-01",
        "24:00:00",
        "infinity",
        "-infinity",
        "+294247-01-10T04:00:54.775806Z",
        "-5877641-06-25",
        "2026-11-01T10:00:00.123456789Z",
        "2026-11-01T10:00:00Z",
        "NaN",
        "-Infinity",
    ]


def test_nested_values_are_converted_inside(api: Server) -> None:
    sql = (
        "SELECT [INTERVAL '1 day', NULL], {'big': 9007199254740993::BIGINT, 'b': '\\x01'::BLOB},"
        " MAP {1: 'one'}, [[1, 2], [3, 4]]::INTEGER[2][2],"
        " union_value(age := 3::SMALLINT)::UNION(name VARCHAR, age SMALLINT),"
        " [1::VARIANT, 'x'::VARIANT], ['10:00:00+02'::TIMETZ]"
    )
    assert values(api, sql) == [
        ["P1D", None],
        {"big": "9007199254740993", "b": "AQ=="},
        {"1": "one"},
        [[1, 2], [3, 4]],
        3,
        "[1, x]",  # DuckDB 1.4 cannot cast a nested VARIANT to JSON: its text instead
        ["10:00:00+02"],
    ]


def test_columns_sharing_a_name_are_numbered(api: Server, data_dir: Path) -> None:
    body = http_query(api, "SELECT 1 AS a, 2 AS a, 3 AS a_1, 4 AS a").json()
    assert body["columns"] == ["a", "a_2", "a_1", "a_3"]
    assert body["rows"] == [[1, 2, 3, 4]]
    joined = "SELECT * FROM (SELECT 1 AS id, 'x' AS v) t1, (SELECT 1 AS id, 'y' AS v) t2"
    assert http_query(api, joined).json()["columns"] == ["id", "v", "id_1", "v_1"]
    assert orjson.loads(cli(data_dir, joined, "json")) == [
        {"id": 1, "v": "x", "id_1": 1, "v_1": "y"}
    ]


def test_csv_writes_every_value_as_its_json_text(data_dir: Path) -> None:
    sql = (
        "SELECT 1 AS a, 2 AS a, [1, 2] AS l, {'x': 'q\"'} AS s, NULL AS n, true AS b,"
        " INTERVAL '36 hours' AS i, TIMESTAMPTZ '2026-11-01 10:00:00Z' AS t"
    )
    assert cli(data_dir, sql, "csv") == (
        'a,a_1,l,s,n,b,i,t\n1,2,"[1,2]","{""x"":""q\\""""}",,true,PT36H,2026-11-01T10:00:00Z\n'
    )


def test_table_view_shows_brackets_as_text(data_dir: Path) -> None:
    out = cli(data_dir, "SELECT '[/bold]' AS markup, [1] AS l", "table")
    assert "[/bold]" in out and "[1]" in out


@pytest.mark.parametrize(
    ("names", "unique"),
    [
        (["a", "b"], ["a", "b"]),
        (["a", "a", "a"], ["a", "a_1", "a_2"]),
        (["a", "a", "a_1"], ["a", "a_2", "a_1"]),
        (["a_1", "a", "a_1", "a"], ["a_1", "a", "a_1_1", "a_2"]),
    ],
)
def test_unique_names(names: list[str], unique: list[str]) -> None:
    from rtclake.results import unique_names

    assert unique_names(names) == unique
