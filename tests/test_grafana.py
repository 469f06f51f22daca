"""Grafana: the committed provisioning is what ``python -m rtclake.grafana`` writes, its
init SQL gives DuckDB rtclake's own views, and every query of every dashboard (each panel's
and each variable's) runs as MotherDuck's DuckDB plugin runs it, on a lake of generated Sora
data, answering rows of the types its panel needs."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prometheus_client import CollectorRegistry

from rtclake.delivery import Delivery
from rtclake.grafana import (
    DASHBOARDS,
    DATASOURCE,
    DATASOURCE_FILE,
    EMPTY_LAKE,
    init_sql,
    interpolate,
    panels,
    plugin_duckdb,
    queries,
    render,
    stale_empty_files,
    write,
)
from rtclake.importer import Importer, ImportStats
from rtclake.integrations.sora.api import stats_report_record, with_derived_fields
from rtclake.integrations.sora.logs import table_for
from rtclake.lake import layout
from rtclake.lake.maintenance import Maintenance, MaintenanceConfig
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.registry import load_registry
from tests.test_diagnosis import STEP, calls
from tests.test_rtc_rates import BASE_MS

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sora"

# The dashboard's time range, as the plugin formats it (RFC 3339, seconds).
FROM, TO = "2026-11-20T00:00:00Z", "2026-11-20T01:00:00Z"
INTERVAL_MS = 60_000  # Grafana's $__interval_ms for the range and a panel's width
# connection -> (channel, session, what it shows: a trait of tests/test_diagnosis.calls)
CONNECTIONS = {
    "a-clean": ("ch-a", "se-a1", "clean"),
    "a-lossy": ("ch-a", "se-a1", "high_loss"),
    "a-relay": ("ch-a", "se-a1", "relay"),
    "a-ice": ("ch-a", "se-a1", "ice_restart"),
    "b-freezes": ("ch-b", "se-b1", "freezes"),
    "b-cpu": ("ch-b", "se-b1", "cpu_limited"),
}
ENDED = {"a-ice": "NORMAL", "b-freezes": "WEBSOCKET_ONCLOSE", "b-cpu": "NORMAL"}
# what each dashboard's variables are set to: a session that ended (so it has an end), the
# relay connection (so every column of the transport panels has a value)
CHOSEN = {
    "rtclake-overview": {},
    "rtclake-session": {"channel": "ch-b", "session": "se-b1"},
    "rtclake-connection": {"channel": "ch-a", "session": "se-a1", "connection": "a-relay"},
}

NUMBERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "FLOAT", "DOUBLE"}
TIMES = {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE"}
TEXT = {"VARCHAR"}


def iso(seconds: float) -> str:
    """The time ``seconds`` after the first report, as Sora writes times."""
    moment = datetime.fromtimestamp(BASE_MS / 1000 + seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rtc_stats() -> list[dict[str, Any]]:
    """Two minutes of getStats reports of six sendrecv connections in two channels, with
    the counters and fields tests/test_diagnosis.calls leaves out filled in."""
    lines = []
    for conn, (channel, session, trait) in CONNECTIONS.items():
        for line in calls(conn, trait):
            n = round((line["rtc_timestamp"] - BASE_MS) / 1000 / STEP)
            data = line["rtc_data"]
            kind, stats_id = line["rtc_type"], line["rtc_id"]
            if stats_id == "IA":  # concealment, jitter buffer
                data |= {
                    "concealedSamples": 960 * n,
                    "totalSamplesReceived": 240_000 * n,
                    "jitterBufferDelay": 9600.0 * n,  # 40 ms a sample
                    "jitterBufferEmittedCount": 240_000 * n,
                }
            elif stats_id == "IV":
                data |= {
                    "nackCount": 4 * n,
                    "pliCount": n // 4,
                    "firCount": n // 12,
                    "jitterBufferDelay": 3.0 * n,
                    "jitterBufferEmittedCount": 150 * n,
                }
            elif stats_id == "OV":
                data |= {"nackCount": 2 * n, "pliCount": n // 3, "firCount": n // 12}
            elif kind == "candidate-pair":
                data["availableOutgoingBitrate"] = 2_500_000.0 - 10_000 * n
            elif kind == "local-candidate":
                data["networkType"] = "ethernet"
            line |= {"channel_id": channel, "session_id": session, "client_id": f"client-{conn}",
                     "node_name": "sora@10.0.0.1", "label": "WebRTC SFU Sora"}  # fmt: skip
            lines.append(line)
    return lines


def session_webhooks() -> list[dict[str, Any]]:
    """session.created, .updated a minute later, and .destroyed for the session that ended."""
    lines = []
    for session, channel in (("se-a1", "ch-a"), ("se-b1", "ch-b")):
        members = sum(1 for ch, se, _ in CONNECTIONS.values() if (ch, se) == (channel, session))
        events = [("session.created", 0), ("session.updated", 60)]
        if session == "se-b1":
            events.append(("session.destroyed", 120))
        for event, at in events:
            req = {"type": event, "session_id": session, "channel_id": channel,
                   "node_name": "sora@10.0.0.1", "created_timestamp": iso(0),
                   "max_connections": members, "total_connections": members}  # fmt: skip
            if event == "session.destroyed":
                req["destroyed_timestamp"] = iso(at)
            lines.append({"id": f"{session}-{event}", "timestamp": iso(at), "req": req})
    return lines


def connection_logs() -> list[dict[str, Any]]:
    """Sora's connection.jsonl lines of the connections that ended."""
    return [
        {"id": f"log-{conn}", "timestamp": iso(116), "channel_id": CONNECTIONS[conn][0],
         "session_id": CONNECTIONS[conn][1], "connection_id": conn, "client_id": f"client-{conn}",
         "role": "sendrecv", "created_timestamp": iso(0), "destroyed_timestamp": iso(116),
         "disconnect_reason": reason}
        for conn, reason in ENDED.items()
    ]  # fmt: skip


def stats_reports() -> list[dict[str, Any]]:
    """GetStatsReport of two Sora nodes every 20 s, with the sorabeat_fields processor's
    derived fields (an import stores lines as they are); node 2 restarts half-way."""
    answer = json.loads((FIXTURES / "GetStatsReport_2025.json").read_text())
    lines = []
    for node in ("sora-1", "sora-2"):
        for n in range(7):
            created = 3 * n if node == "sora-1" or n < 4 else n - 4  # a counter reset
            vm = answer["erlang_vm"]
            report = answer | {
                "total_connection_created": created, "total_failed_connections": n // 3,
                "total_ongoing_connections": 2 + n % 3,
                "erlang_vm": vm | {
                    "memory": vm["memory"] | {"total": 80_000_000 + 1_000_000 * n},
                    "statistics": vm["statistics"] | {"run_queue_lengths_all": [n % 2, 0, 1, 0],
                                                      "total_run_queue_lengths_all": n % 2 + 1},
                },
            }  # fmt: skip
            lines.append(
                with_derived_fields(stats_report_record(report, node=node, time=iso(20 * n)))
            )
    return lines


def fill_lake(lake: Path, work: Path) -> None:
    """Import the generated Sora logs into ``lake`` (as ``rtclake import`` does)."""
    logs = work / "logs"
    logs.mkdir(parents=True)
    files = {
        "rtc_stats.jsonl": rtc_stats(),
        "session_webhook.jsonl": session_webhooks(),
        "connection.jsonl": connection_logs(),
        "stats_report.jsonl": stats_reports(),
    }
    for name, lines in files.items():
        (logs / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    tables = load_registry().tables

    def rule(name: str) -> str | None:  # the poller's table has no log file
        return "sora_stats_report" if name == "stats_report.jsonl" else table_for(name)

    importer = Importer(tables, Delivery([LakeSink(lake, tables)], Metrics()),
                        work / "import-state.json", node="test", table_for=rule)  # fmt: skip
    stats = ImportStats()
    try:
        importer.import_paths([logs], stats)
    finally:
        importer.close()
    assert stats.rows == sum(len(lines) for lines in files.values()) and stats.bad_lines == 0


def datasource() -> dict[str, Any]:
    provisioned = yaml.safe_load((GRAFANA / DATASOURCE_FILE).read_text())
    (source,) = provisioned["datasources"]
    return dict(source)


def grafana_duckdb(root: Path) -> duckdb.DuckDBPyConnection:
    """What the plugin makes of the provisioned data source, with rtclake's data volume at
    ``root/rtclake`` and the empty lake at ``root/rtclake-empty/lake`` (as compose mounts
    them at /var/lib/rtclake and /var/lib/rtclake-empty/lake)."""
    shutil.copytree(GRAFANA / EMPTY_LAKE, root / "rtclake-empty" / "lake")
    source = datasource()
    assert source["jsonData"]["path"] == ""  # an in-memory database
    return plugin_duckdb(source["jsonData"]["initSql"], root)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like the Grafana container's /var/lib: rtclake/lake, rtclake-empty/lake."""
    root = tmp_path_factory.mktemp("var-lib")
    fill_lake(root / "rtclake" / "lake", tmp_path_factory.mktemp("import"))
    return root


@pytest.fixture(scope="module")
def grafana(lake: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = grafana_duckdb(lake)
    yield con
    con.close()


# -- the dashboards' queries, as Grafana and the plugin rewrite them -------------------------


def as_sent(sql: str, variables: dict[str, str]) -> str:
    """``sql`` as DuckDB gets it in the test's time range (rtclake.grafana.interpolate)."""
    return interpolate(sql, variables, time_from=FROM, time_to=TO, interval_ms=INTERVAL_MS)


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text())
        for path in sorted((GRAFANA / DASHBOARDS).glob("*.json"))
    }


def all_queries() -> list[Any]:
    """(dashboard, what, panel type, format, SQL) of every query, as pytest params."""
    return [
        pytest.param(uid, q.what, q.kind, q.fmt, q.sql, id=f"{uid}: {q.what}")
        for uid, board in dashboards().items()
        for q in queries(board)
    ]


def run(
    con: duckdb.DuckDBPyConnection, sql: str, variables: dict[str, str]
) -> tuple[list[str], list[str], pa.Table]:
    relation = con.sql(as_sent(sql, variables))
    return relation.columns, [str(t) for t in relation.types], relation.fetch_arrow_table()


@pytest.mark.parametrize(("uid", "what", "kind", "fmt", "sql"), all_queries())
def test_the_query_runs_and_answers_typed_rows(
    grafana: duckdb.DuckDBPyConnection, uid: str, what: str, kind: str, fmt: str, sql: str
) -> None:
    columns, types, rows = run(grafana, sql, CHOSEN[uid])
    described = dict(zip(columns, types, strict=True))
    assert rows.num_rows > 0, f"{what}: no rows"
    if kind == "variable":
        # one column of options, or __value and __text; the chosen value is among them
        values = "__value" if "__value" in columns else columns[0]
        assert set(columns) in ({values}, {"__value", "__text"}), columns
        assert set(types) == TEXT, described
        name = what.removeprefix("variable ")
        assert CHOSEN[uid][name] in rows.column(values).to_pylist()
        return
    if fmt == "time_series" or kind == "state-timeline":
        # the time column first, times in order (the data source's long-to-wide needs it)
        assert columns[0] == "time" and types[0] in TIMES, described
        times = rows.column(0).to_pylist()
        assert None not in times and times == sorted(times), f"{what}: unsorted times"
    if fmt == "time_series":
        # numbers, labelled by text columns
        assert set(types[1:]) <= NUMBERS | TEXT, described
        assert NUMBERS & set(types), f"{what}: no value column: {described}"
        checked = [c for c, t in described.items() if t in NUMBERS]
    else:
        assert set(types) <= NUMBERS | TEXT | TIMES, described
        checked = columns
    empty = [c for c in checked if rows.column(c).null_count == rows.num_rows]
    assert not empty, f"{what}: only NULL in {empty}"


def test_every_panel_has_a_query_and_every_query_runs_in_the_test() -> None:
    boards = dashboards()
    assert set(boards) == {"rtclake-overview", "rtclake-session", "rtclake-connection"}
    titles = {uid: board["title"] for uid, board in boards.items()}
    assert titles["rtclake-overview"] == "rtclake overview"
    tested = {(p.values[0], p.values[1]) for p in all_queries()}
    for uid, board in boards.items():
        titles_of = [p["title"] for p in panels(board)]
        assert len(set(titles_of)) == len(titles_of), f"{uid}: titles repeat"
        for panel in panels(board):
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert [t["datasource"] for t in panel["targets"]] == [DATASOURCE], panel["title"]
            assert all(t["rawSql"].strip() for t in panel["targets"]), panel["title"]
            assert (uid, panel["title"]) in tested
    variables = {uid: [v["name"] for v in b["templating"]["list"]] for uid, b in boards.items()}
    assert variables["rtclake-connection"] == ["channel", "session", "connection"]
    assert variables["rtclake-session"] == ["channel", "session"]
    assert len(tested) == sum(len(list(panels(b))) + len(variables[u]) for u, b in boards.items())


def test_the_committed_provisioning_is_up_to_date() -> None:
    registry = load_registry()
    for relative, text in render(registry).items():
        path = GRAFANA / relative
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        assert committed == text, (
            f"deploy/grafana/{relative} is out of date with rtclake's definitions;"
            " regenerate it: python -m rtclake.grafana"
        )
    assert {p.stem for p in (GRAFANA / DASHBOARDS).glob("*.json")} == set(registry.dashboards)
    assert stale_empty_files(GRAFANA / EMPTY_LAKE, registry.tables) == []
    # Grafana expands $NAME in provisioning files: the SQL must have none
    assert "$" not in datasource()["jsonData"]["initSql"]
    assert datasource()["jsonData"]["initSql"] == init_sql(registry.tables)


def test_the_views_are_rtclakes_own(grafana: duckdb.DuckDBPyConnection, lake: Path) -> None:
    """Every table and view has the columns, types and rows of rtclake's query engine."""
    tables = load_registry().tables
    engine = QueryEngine(lake / "rtclake" / "lake", tables)
    own = engine.connect(read_only=False)
    try:
        for name in [*tables.names(), *tables.views]:
            sql = f'SELECT * FROM "{name}"'
            theirs, ours = grafana.sql(sql), own.sql(sql)
            assert (theirs.columns, theirs.types) == (ours.columns, ours.types), name
            count = f"SELECT count(*) FROM ({sql})"
            assert grafana.sql(count).fetchone() == own.sql(count).fetchone(), name
    finally:
        own.close()
    # the filled lake has rows in what the dashboards read
    for name in ("rtc_stats", "sessions", "connections", "sora_stats_report", "rtc_rates",
                 "connection_quality", "session_quality", "connection_transport"):  # fmt: skip
        assert grafana.sql(f"SELECT count(*) FROM {name}").fetchone() > (0,), name


def test_an_empty_lake_gives_every_view_and_later_files_appear(tmp_path: Path) -> None:
    """Before rtclake writes anything, the init SQL still runs and every query answers;
    files written afterwards show without running it again."""
    con = grafana_duckdb(tmp_path)
    for param in all_queries():
        uid, sql = param.values[0], param.values[4]
        con.sql(as_sent(sql, CHOSEN[uid])).fetch_arrow_table()
    assert con.sql("SELECT count(*) FROM rtc_rates").fetchone() == (0,)
    fill_lake(tmp_path / "rtclake" / "lake", tmp_path / "import")
    assert con.sql("SELECT count(*) FROM rtc_rates").fetchone() > (0,)
    con.close()


def test_the_generator_writes_every_file_of_deploy_grafana(tmp_path: Path) -> None:
    # (the dashboards' provider file had been written by hand: a regenerated folder
    # lacked provisioning/dashboards/rtclake.yaml)
    write(tmp_path, load_registry())

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(tmp_path) == files(GRAFANA)


def test_files_maintenance_replaced_show_no_row_twice(tmp_path: Path) -> None:
    """The files a merge or a day's sort replaced stay in the folders, with the same rows,
    until their snapshots expire and cleanup deletes them (a day or two by default).
    Maintenance lists them (ROOT/rtclake_replaced.parquet) and the data source's views
    leave them out: every table and view counts each row once, the derived ones too.
    Those had shown every rate and report twice after each maintenance run (a session's
    bitrates doubled, connections started per minute doubled)."""
    root = tmp_path / "var-lib"
    lake = root / "rtclake" / "lake"
    fill_lake(lake, tmp_path / "import")
    tables = load_registry().tables
    sink = LakeSink(lake, tables)
    maintenance = Maintenance(
        sink.catalog,
        MaintenanceConfig(expire_after=30 * 86400, cleanup_after=30 * 86400),  # kept
        node="n",
        metrics=Metrics(CollectorRegistry()),
    )
    report = maintenance.run(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=3))  # days over
    sink.close()
    assert report is not None and report.ok, report
    listed = set(pq.read_table(lake / layout.REPLACED)["path"].to_pylist())
    on_disk = {str(p.relative_to(lake)) for p in (lake / "main").rglob("*.parquet")}
    assert listed and listed <= on_disk  # replaced files, still there
    engine = QueryEngine(lake, tables)
    own = engine.connect(read_only=False)
    expected = {
        name: own.sql(f'SELECT count(*) FROM "{name}"').fetchone()
        for name in [*tables.names(), *tables.views]
    }
    own.close()
    con = grafana_duckdb(root)
    try:
        counted = {name: con.sql(f'SELECT count(*) FROM "{name}"').fetchone() for name in expected}
    finally:
        con.close()
    assert counted == expected
    assert expected["rtc_rates"] > (0,) and expected["connection_reports"] > (0,)
