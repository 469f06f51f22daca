"""The dashboard without a browser: the queries of ``lake/dashboard.py`` on the demo's lake
and on hand-made Sora API rows (rates from counters, resets, buckets), the sampler of
records/s, and the JSON endpoints, pages, files and login of a running server."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtclake.delivery import Delivery
from rtclake.importer import Importer, ImportStats
from rtclake.lake import dashboard as q
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.registry import Registry, load_registry
from rtclake.throughput import Throughput
from tests.conftest import Server, wait_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTES = 10


# -- helpers shared with the browser tests ---------------------------------------------------


def demo_lake(data_dir: Path, minutes: int = MINUTES) -> dict[str, Any]:
    """Fill ``data_dir``'s lake with ``rtclake demo`` (ending now); return its manifest."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    env.update(RTCLAKE_DATA_DIR=str(data_dir), RTCLAKE_LOG_LEVEL="warning")
    folder = data_dir.parent / "demo"
    subprocess.run(
        [sys.executable, "-m", "rtclake", "demo", "--dir", str(folder), "--minutes", str(minutes)],
        env=env,
        check=True,
        capture_output=True,
    )
    manifest: dict[str, Any] = json.loads((folder / "sora" / "manifest.json").read_text())
    return manifest


def showing(manifest: dict[str, Any], code: str) -> str:
    """The demo connection made to show ``code``."""
    (found,) = [c for c, v in manifest["connections"].items() if code in v["expect"]]
    return found


# -- the queries ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def _import(registry: Registry, root: Path, folder: Path) -> None:
    tables = registry.tables

    def table_for(name: str) -> str | None:
        stem = name.split(".")[0]
        return stem if stem in tables else registry.table_for_file(name)

    importer = Importer(
        tables, Delivery([LakeSink(root / "lake", tables)], Metrics()),
        root / "import-state.json", node="test", table_for=table_for,
    )  # fmt: skip
    stats = ImportStats()
    try:
        importer.import_paths([folder], stats)
    finally:
        importer.close()
    assert stats.bad_lines == 0


@pytest.fixture(scope="module")
def demo(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The Sora demo ending at NOW, imported; (engine, manifest)."""
    root = tmp_path_factory.mktemp("dashboard")
    manifest = registry.demos["sora"](root / "sora", now=NOW, seed=3, minutes=MINUTES)
    _import(registry, root, root / "sora")
    return QueryEngine(root / "lake", registry.tables), manifest


def rows(engine: QueryEngine, sql: str) -> list[dict[str, Any]]:
    result = engine.run(sql)
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows()]


WHOLE = q.TimeRange(NOW - timedelta(minutes=MINUTES + 1), NOW + timedelta(seconds=1))


def test_times_from_urls_are_parsed_by_python() -> None:
    expected = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert q.parse_time("2026-12-01T10:00:00Z") == expected
    assert q.parse_time("2026-12-01T19:00:00+09:00") == expected
    assert q.parse_time("2026-12-01T10:00:00") == expected  # no offset: UTC
    assert q.parse_time(str(int(expected.timestamp() * 1000))) == expected
    for bad in ("yesterday", "2026-13-01", "1'; DROP TABLE x; --"):
        with pytest.raises(ValueError, match="not a time"):
            q.parse_time(bad)


def test_a_range_is_a_preset_ending_now_or_from_and_to() -> None:
    r = q.time_range("15m", now=NOW)
    assert (r.start, r.end, r.name) == (NOW - timedelta(minutes=15), NOW, "15m")
    assert q.time_range(now=NOW).name == q.DEFAULT_RANGE
    r = q.time_range(None, "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z", now=NOW)
    assert r.seconds == 3600 and r.name is None
    assert q.time_range(None, "2026-12-01T11:30:00Z", None, now=NOW).end == NOW
    with pytest.raises(ValueError, match="before it starts"):
        q.time_range(None, "2026-12-01T11:00:00Z", "2026-12-01T10:00:00Z", now=NOW)
    with pytest.raises(ValueError, match="use one of"):
        q.time_range("2y", now=NOW)
    with pytest.raises(ValueError, match="from with to"):
        q.time_range(None, None, "2026-12-01T10:00:00Z", now=NOW)


@pytest.mark.parametrize("seconds", [60, 900, 3_600, 21_600, 86_400, 604_800, 90 * 86_400])
def test_a_bucket_is_the_narrowest_round_width_within_the_points_of_a_chart(seconds: int) -> None:
    r = q.TimeRange(NOW - timedelta(seconds=seconds), NOW)
    width = r.bucket()
    assert seconds / width <= q.MAX_POINTS
    assert 86_400 % width == 0 or width % 86_400 == 0  # buckets start at round times
    narrower = [b for b in q.BUCKETS if b < width]
    assert not narrower or seconds / narrower[-1] > q.MAX_POINTS
    assert r.bucket(at_least=60) >= 60


def test_values_are_bound_as_literals_never_as_sql() -> None:
    assert q.quote("it's") == "'it''s'"
    with pytest.raises(ValueError):
        q.quote("a\x00b")
    assert q.identifier("rtc_stats") == '"rtc_stats"'
    for bad in ('rtc_stats"; DROP', "a b", "1x", ""):
        with pytest.raises(ValueError):
            q.identifier(bad)


def test_a_quote_in_an_id_finds_nothing_and_breaks_nothing(demo: Any) -> None:
    engine, _ = demo
    found = rows(engine, q.connection_sql("x' OR '1'='1"))
    assert found == []
    assert rows(engine, q.session_participants_sql("x' OR 1=1 --")) == []


def test_active_now_counts_live_connections_and_sessions(demo: Any) -> None:
    engine, manifest = demo
    live = [c for c, v in manifest["connections"].items() if v["destroyed"] is None]
    (active,) = rows(engine, q.active_now_sql(NOW))
    assert active["connections"] == len(live)
    # no connection.created webhook in the demo: every live one is known from its stats
    assert active["connections_from_stats"] == len(live)
    # four channels, the standup's session destroyed
    assert active["sessions"] == 3
    (later,) = rows(engine, q.active_now_sql(NOW + timedelta(minutes=5)))
    assert later["connections"] == 0  # no stats for 5 minutes and no created event


def _active_now_both_ways(engine: QueryEngine, at: datetime) -> str:
    """Active now and the connection flow as the overview asks them (made for its
    snapshot, the tables without files left out) against the whole questions; the SQL
    run for both."""
    r = q.TimeRange(at - timedelta(hours=1), at)
    active, flow = engine.run_many(
        [
            functools.partial(q.active_now_sql, at),
            functools.partial(q.connection_flow_series_sql, r, 60),
        ]
    )
    assert active.rows() == engine.run(q.active_now_sql(at)).rows(), at
    whole = engine.run(q.connection_flow_series_sql(r, 60))
    whole_flow = whole.rows()
    assert flow.rows() == whole_flow, at
    assert flow.types == whole.types, at
    assert sum(whole_flow[0][1]) > 0, at  # the range holds created connections
    return active.sql + flow.sql


def test_active_now_leaves_out_the_tables_without_files(
    demo: Any, registry: Registry, tmp_path: Path
) -> None:
    engine, manifest = demo
    snapshot = engine.snapshot()
    # the demo has Sora's connection log and session webhooks, not its event webhook
    assert not snapshot["sora_events"] and snapshot["connections"] and snapshot["sessions"]
    for at in (NOW, NOW + timedelta(minutes=5), NOW - timedelta(minutes=MINUTES // 2)):
        sql = _active_now_both_ways(engine, at)
        assert "FROM connections" in sql and "FROM sessions" in sql
        assert "FROM sora_events" not in sql
    # the stats alone: every webhook table left out, the same answer
    folder = tmp_path / "stats-only"
    folder.mkdir()
    demo_folder = tmp_path.parent / "stats-source"
    registry.demos["sora"](demo_folder, now=NOW, seed=3, minutes=MINUTES)
    (folder / "rtc_stats.jsonl").write_bytes((demo_folder / "rtc_stats.jsonl").read_bytes())
    _import(registry, tmp_path, folder)
    stats_only = QueryEngine(tmp_path / "lake", registry.tables)
    live = [c for c, v in manifest["connections"].items() if v["destroyed"] is None]
    for at in (NOW, NOW + timedelta(minutes=5)):
        sql = _active_now_both_ways(stats_only, at)
        assert not any(f"FROM {t}" in sql for t in ("sora_events", "connections", "sessions"))
        assert "unnest" not in sql  # the flow from the stats alone: first reports only
    (active,) = stats_only.run_many([functools.partial(q.active_now_sql, NOW)])
    # without the connection log, the ended connections that reported in the last
    # two minutes count too
    assert active.rows()[0][0] >= len(live)


def test_the_flow_counts_created_destroyed_and_abnormal_ends(demo: Any) -> None:
    engine, manifest = demo
    (flow,) = rows(engine, q.series_lists(q.connection_flow_sql(WHOLE, 60), [], ["created"]))
    (totals,) = rows(
        engine,
        "SELECT sum(created) AS created, sum(destroyed) AS destroyed, sum(failed) AS failed"
        f" FROM ({q.connection_flow_sql(WHOLE, 60)})",
    )
    connections = manifest["connections"].values()
    assert totals["created"] == len(manifest["connections"]) == sum(flow["created"])
    assert totals["destroyed"] == sum(1 for v in connections if v["destroyed"])
    assert totals["failed"] == 1  # the disconnected one ended abnormally


def test_worst_connections_come_first_and_channels_are_counted(demo: Any) -> None:
    engine, manifest = demo
    worst = rows(engine, q.worst_connections_sql(WHOLE, 16))
    scores = [w["score"] for w in worst]
    assert scores == sorted(scores)
    # the demo's troubles score lowest: frozen and slow video, then the loss
    assert all(manifest["connections"][w["connection_id"]]["expect"] for w in worst[:4])
    assert showing(manifest, "high_loss") in {w["connection_id"] for w in worst[:4]}
    channels = rows(engine, q.top_channels_sql(WHOLE))
    assert {c["channel_id"]: c["connections"] for c in channels} == {
        ch: sum(1 for v in manifest["connections"].values() if v["channel_id"] == ch)
        for ch in manifest["channels"]
    }


def test_sessions_list_the_demo_sessions_with_their_ends(demo: Any) -> None:
    engine, manifest = demo
    sessions = {s["session_id"]: s for s in rows(engine, q.sessions_sql(WHOLE, now=NOW))}
    assert set(sessions) == set(manifest["channels"].values())
    standup = sessions[manifest["channels"]["sora-demo-standup"]]
    assert standup["ended"] is not None and standup["connections"] == 4
    only = rows(engine, q.sessions_sql(WHOLE, now=NOW, channel="sora-demo-lobby"))
    assert [s["channel_id"] for s in only] == ["sora-demo-lobby"]


def test_a_session_lists_its_participants_with_join_and_leave_times(demo: Any) -> None:
    engine, manifest = demo
    lossy = showing(manifest, "high_loss")
    session_id = manifest["connections"][lossy]["session_id"]
    people = rows(engine, q.session_participants_sql(session_id))
    expected = {c: v for c, v in manifest["connections"].items() if v["session_id"] == session_id}
    assert {p["connection_id"] for p in people} == set(expected)
    for p in people:
        v = expected[p["connection_id"]]
        assert abs((p["joined"] - q.parse_time(v["created"])).total_seconds()) < 1
        assert abs((p["left_at"] - q.parse_time(v["destroyed"])).total_seconds()) < 1
        assert p["client_id"] == v["client_id"] and p["score"] is not None
    (info,) = rows(engine, q.session_sql(session_id))
    assert info["channel_id"] == "sora-demo-standup" and info["destroyed_at"] is not None


def test_a_bucket_holds_the_time_weighted_mean_of_the_true_rates(demo: Any) -> None:
    """Rates are never recomputed from buckets: a bucket averages rtc_rates' intervals."""
    engine, manifest = demo
    lossy = showing(manifest, "high_loss")
    raw = rows(
        engine,
        "SELECT stats_id, time, interval_s, loss_pct, bitrate_bps FROM rtc_rates WHERE"
        f" connection_id = '{lossy}' AND stats_type = 'inbound-rtp' AND media_kind = 'audio'",
    )
    series = rows(
        engine,
        q.series_lists(
            q.connection_rates_sql(lossy, WHOLE, 60),
            ["stats_type", "stats_id", "media_kind"],
            q.RATE_METRICS,
        ),
    )
    stream = next(s for s in series if s["stats_id"] == raw[0]["stats_id"])
    for t, loss, bitrate in zip(
        stream["time"], stream["loss_pct"], stream["bitrate_bps"], strict=True
    ):
        inside = [
            r for r in raw
            if r["stats_id"] == stream["stats_id"] and t <= r["time"] < t + timedelta(seconds=60)
        ]  # fmt: skip
        seconds = sum(r["interval_s"] for r in inside)
        assert loss == pytest.approx(sum(r["loss_pct"] * r["interval_s"] for r in inside) / seconds)
        assert bitrate == pytest.approx(
            sum(r["bitrate_bps"] * r["interval_s"] for r in inside) / seconds
        )
    assert max(stream["loss_pct"]) > 5  # the trouble shows


def test_a_connection_has_a_series_per_stream_within_the_points_of_a_chart(demo: Any) -> None:
    engine, manifest = demo
    lossy = showing(manifest, "high_loss")
    r = q.TimeRange(NOW - timedelta(minutes=MINUTES), NOW)
    bucket = r.bucket(max_points=50)
    series = rows(
        engine,
        q.series_lists(
            q.connection_rates_sql(lossy, r, bucket),
            ["stats_type", "stats_id", "media_kind"],
            q.RATE_METRICS,
        ),
    )
    streams = rows(engine, q.connection_streams_sql(lossy))
    assert {s["stats_id"] for s in series} == {s["stats_id"] for s in streams}
    for s in series:
        assert 0 < len(s["time"]) <= 50
        assert all(len(s[m]) == len(s["time"]) for m in q.RATE_METRICS)
    peers = {s["peer_connection_id"] for s in streams if s["stats_type"] == "inbound-rtp"}
    same_session = {
        c for c, v in manifest["connections"].items()
        if v["session_id"] == manifest["connections"][lossy]["session_id"] and c != lossy
    }  # fmt: skip
    assert peers == same_session
    (info,) = rows(engine, q.connection_sql(lossy))
    assert info["channel_id"] == "sora-demo-standup" and info["reason"] == "normal"
    assert info["reports"] > 0 and info["score"] is not None
    scores = rows(engine, q.series_lists(q.scores_sql(r, 60, connection_id=lossy), [], q.SCORES))
    assert 0 < len(scores[0]["score"]) <= 11
    assert min(scores[0]["score"]) < 3.5  # the loss lowers the score


def test_tables_are_counted_and_listed(demo: Any, registry: Registry) -> None:
    engine, manifest = demo
    counts = {
        r["name"]: r["rows"]
        for r in rows(engine, q.table_counts_sql(["rtc_stats", "connections"], WHOLE))
    }
    assert counts["rtc_stats"] == manifest["files"]["rtc_stats.jsonl"]
    assert counts["connections"] == manifest["files"]["connection.jsonl"]
    latest = rows(engine, q.table_rows_sql("connections", WHOLE, 3))
    assert len(latest) == 3 and latest[0]["time"] >= latest[-1]["time"]
    assert len(rows(engine, q.table_rows_sql("session_quality", None, 2))) == 2


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def sora_api(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> QueryEngine:
    """Hand-made rows of what the Sora API poller stores, a counter reset included."""
    root = tmp_path_factory.mktemp("sora-api")
    folder = root / "polls"
    folder.mkdir()
    created = [100, 160, 10, 40]  # per minute: 60, then a reset (10), then 30
    _write(folder / "sora_stats_report.jsonl", [
        {"timestamp": _at(60 * i), "node": "sora-1", "total_connection_created": c,
         "total_connection_destroyed": 0, "total_failed_connections": 0,
         "total_ongoing_connections": 5 + i, "erlang_vm": {"memory": {"total": 2**20 * 100}}}
        for i, c in enumerate(created)
    ])  # fmt: skip
    polls = []
    for i in range(4):
        for conn, bps in (("A", 10_000), ("B", 20_000)):
            polls.append({
                "timestamp": _at(10 * i), "node": "sora-1", "connection_id": conn,
                "rtp": {"total_received_byte_size": bps // 8 * 10 * i,
                        "total_sent_byte_size": bps // 8 * 20 * i},
            })  # fmt: skip
    _write(folder / "sora_connection_counters.jsonl", polls)
    _import(registry, root, folder)
    return QueryEngine(root / "lake", registry.tables)


def test_sora_counters_become_rates_per_minute_across_a_reset(sora_api: QueryEngine) -> None:
    r = q.TimeRange(NOW, NOW + timedelta(minutes=4))
    (node,) = rows(
        sora_api,
        q.series_lists(q.sora_nodes_sql(r, 60), ["node"], ["created_per_min", "memory_mib"]),
    )
    assert node["node"] == "sora-1"
    # the first poll makes no rate; 160-100, the reset's new value 10, 40-10
    assert node["created_per_min"] == pytest.approx([60.0, 10.0, 30.0])
    assert node["memory_mib"] == pytest.approx([100.0, 100.0, 100.0])


def test_media_through_a_node_sums_its_connections_rates(sora_api: QueryEngine) -> None:
    r = q.TimeRange(NOW, NOW + timedelta(minutes=1))
    (node,) = rows(sora_api, q.series_lists(q.sora_traffic_sql(r, 60), ["node"], ["received_bps"]))
    assert node["received_bps"] == pytest.approx([30_000.0])  # 10 + 20 kbit/s
    (sent,) = rows(sora_api, f"SELECT sent_bps, connections FROM ({q.sora_traffic_sql(r, 60)})")
    assert sent == {"sent_bps": pytest.approx(60_000.0), "connections": 2}


def test_throughput_reports_records_per_second_between_samples() -> None:
    metrics = Metrics()
    clock = iter([0.0, 5.0, 10.0])
    throughput = Throughput(metrics, interval=5, keep=60, clock=lambda: next(clock))
    throughput.sample()
    metrics.received.labels("http").inc(50)
    metrics.stored.labels("lake", "telemetry").inc(40)
    metrics.stored.labels("lake", "events").inc(10)
    throughput.sample()
    metrics.received.labels("sora_logs").inc(100)
    throughput.sample()
    series = throughput.series()
    assert series["time"] == [5.0, 10.0]
    assert series["received"] == [10.0, 20.0]
    assert series["stored"] == {"lake": [10.0, 0.0]}


def test_throughput_keeps_the_last_hour_only() -> None:
    ticks = iter(float(t) for t in range(0, 10_000, 5))
    throughput = Throughput(Metrics(), interval=5, keep=60, clock=lambda: next(ticks))
    for _ in range(100):
        throughput.sample()
    assert len(throughput.samples) == 13 and len(throughput.series()["time"]) == 12


# -- the server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    """A server on a lake filled by ``rtclake demo`` (the last ten minutes)."""
    data = tmp_path_factory.mktemp("served") / "data"
    manifest = demo_lake(data)
    server = Server(data)
    server.start()
    yield server, manifest
    server.stop()


def get(server: Server, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kw)


def test_the_overview_answers_for_a_range(served: Any) -> None:
    server, manifest = served
    body = get(server, "/api/dashboard/overview?range=1h").json()
    live = sum(1 for v in manifest["connections"].values() if v["destroyed"] is None)
    assert body["active"]["connections"] == live
    assert body["range"]["range"] == "1h" and body["flow"]["bucket_s"] == 60
    assert sum(body["flow"]["created_per_min"]) == len(manifest["connections"])
    assert showing(manifest, "high_loss") in {w["connection_id"] for w in body["worst"]}
    assert {c["channel_id"] for c in body["channels"]} == set(manifest["channels"])
    assert {s["session_id"] for s in body["sessions"]} == set(manifest["channels"].values())
    assert body["sora"]["nodes"] == [] and body["sora"]["traffic"] == []
    assert set(body["throughput"]) == {"interval_s", "time", "received", "stored"}


@pytest.mark.parametrize(
    "query", ["range=2y", "from=yesterday", "from=2026-12-01T11:00:00Z&to=2026-12-01T10:00:00Z"]
)
def test_a_bad_range_is_a_400_that_says_why(served: Any, query: str) -> None:
    server, _ = served
    response = get(server, f"/api/dashboard/overview?{query}")
    assert response.status_code == 400 and response.json()["error"] == "bad_range"


def test_a_range_from_the_first_day_there_is_answers(served: Any) -> None:
    # (the look back before it had overflowed: a 500)
    server, _ = served
    for query in ("from=0001-01-01T00:00:00Z", "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z"):
        response = get(server, f"/api/dashboard/overview?{query}")
        assert response.status_code == 200, response.text


def test_a_session_and_a_connection_answer_for_their_whole_life(served: Any) -> None:
    server, manifest = served
    lossy = showing(manifest, "high_loss")
    session_id = manifest["connections"][lossy]["session_id"]
    session = get(server, f"/api/dashboard/sessions/{session_id}").json()
    assert session["range"]["range"] == "all"
    assert {p["connection_id"] for p in session["participants"]} == {
        c for c, v in manifest["connections"].items() if v["session_id"] == session_id
    }
    assert all(len(s["time"]) == len(s["score"]) > 0 for s in session["scores"])
    connection = get(server, f"/api/dashboard/connections/{lossy}").json()
    assert connection["connection"]["session_id"] == session_id
    assert connection["bucket_s"] <= 5  # ten minutes: every report is a point
    loss = [max(v for v in s["loss_pct"] if v is not None) for s in connection["rates"]
            if s["stats_type"] == "inbound-rtp"]  # fmt: skip
    assert loss and max(loss) > 5
    assert len(connection["scores"]["time"]) == len(connection["scores"]["score"]) > 0
    last_hour = get(server, f"/api/dashboard/connections/{lossy}?range=15m").json()
    assert last_hour["range"]["range"] == "15m"


def test_an_unknown_session_or_connection_is_a_404(served: Any) -> None:
    server, _ = served
    for path, reason in (
        ("/api/dashboard/sessions/NOPE", "unknown_session"),
        ("/api/dashboard/connections/NOPE'--", "unknown_connection"),
        ("/api/dashboard/tables/nope", "unknown_table"),
        ('/api/dashboard/tables/rtc_stats"--', "unknown_table"),
    ):
        response = get(server, path)
        assert (response.status_code, response.json()["error"]) == (404, reason), path


def test_the_tables_list_counts_rows_and_a_table_shows_its_latest(served: Any) -> None:
    server, manifest = served
    body = get(server, "/api/dashboard/tables?range=1h").json()
    tables = {t["name"]: t for t in body["tables"]}
    assert tables["rtc_stats"]["rows"] == manifest["files"]["rtc_stats.jsonl"]
    assert any(c["name"] == "bytes_sent" for c in tables["rtc_stats"]["columns"])
    assert tables["rtc_rates"]["rows"] > 0  # derived as the demo was imported
    assert {"connection_quality", "session_quality"} <= {v["name"] for v in body["views"]}
    table = get(server, "/api/dashboard/tables/connections?range=1h&limit=2").json()
    assert table["kind"] == "table" and len(table["result"]["rows"]) == 2
    assert table["result"]["truncated"] is True
    view = get(server, "/api/dashboard/tables/session_quality").json()
    assert view["kind"] == "view" and view["timed"] is False and view["result"]["rows"]
    assert get(server, "/api/dashboard/sessions?limit=0").status_code == 400


def test_every_page_is_the_shell_with_a_strict_content_policy(served: Any) -> None:
    server, manifest = served
    lossy = showing(manifest, "high_loss")
    for path in ("/", f"/connections/{lossy}", "/sessions/x", "/tables", "/tables/rtc_stats",
                 "/sql", "/login"):  # fmt: skip
        response = get(server, path)
        assert response.status_code == 200, path
        assert '<script type="module" src="/static/js/main.js' in response.text
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy


def test_the_api_docs_list_the_dashboard_endpoints(served: Any) -> None:
    server, _ = served
    paths = get(server, "/openapi.json").json()["paths"]
    assert {
        "/api/dashboard/overview", "/api/dashboard/sessions/{session_id}",
        "/api/dashboard/connections/{connection_id}", "/api/dashboard/tables/{name}",
        "/api/dashboard/throughput", "/api/dashboard/login",
    } <= set(paths)  # fmt: skip
    assert "/" not in paths and "/static/{path}" not in paths  # pages and files are not API


def test_static_files_and_plotly_come_from_the_server(served: Any) -> None:
    server, _ = served
    for path in ("/static/dashboard.css", "/static/js/main.js", "/static/js/pages/connection.js"):
        response = get(server, path)
        assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
        again = get(server, path, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304
    plotly = get(server, "/static/vendor/plotly.min.js", headers={"accept-encoding": "gzip"})
    assert plotly.status_code == 200 and plotly.headers["content-encoding"] == "gzip"
    assert "immutable" in plotly.headers["cache-control"]
    assert plotly.text.startswith("/**\n* plotly.js v")
    for path in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/nope.js"):
        assert get(server, path).status_code == 404, path


def test_data_written_seconds_ago_shows(served: Any) -> None:
    server, _ = served
    conn = "FRESHCONNECTION0000000000A"
    base_ms = time.time() * 1000 - 10_000
    for i in range(3):
        report = {
            "type": "connection.rtc", "timestamp": _iso_ms(base_ms + 5000 * i),
            "connection_id": conn, "channel_id": "fresh", "session_id": "FRESHSESSION",
            "stats": [{"id": "IA", "type": "inbound-rtp", "kind": "audio",
                       "timestamp": base_ms + 5000 * i, "bytesReceived": 20_000 * i,
                       "packetsReceived": 250 * i, "packetsLost": 0}],
        }  # fmt: skip
        response = httpx.post(
            server.url + "/sora/webhooks/stats",
            json=report,
            headers={"sora-stats-webhook-type": "connection.rtc"},
        )
        assert response.status_code == 200

    def shown() -> Any:
        response = get(server, f"/api/dashboard/connections/{conn}")
        return response.status_code == 200 and response.json()["rates"]

    rates = wait_for(shown, timeout=15)
    assert rates and rates[0]["bitrate_bps"][-1] == pytest.approx(32_000)

    def channels() -> set[str]:
        body = get(server, "/api/dashboard/overview?range=15m").json()
        return {c["channel_id"] for c in body["channels"]}

    # the reports may reach the lake in more than one batch: the overview's scores need
    # the connection's reports with an interval, which can follow the first rates
    assert wait_for(lambda: "fresh" in channels(), timeout=15), channels()
    throughput = wait_for(
        lambda: any(get(server, "/api/dashboard/throughput").json()["received"]), timeout=15
    )
    assert throughput


def _iso_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def test_a_token_guards_the_data_and_the_login_form_sets_a_cookie(make_server: Any) -> None:
    server = make_server(RTCLAKE_SERVER__QUERY_TOKEN="s3cret")
    data = ["/api/dashboard/overview", "/api/dashboard/throughput", "/api/dashboard/tables"]
    for path in data:
        assert get(server, path).status_code == 401, path
    assert get(server, "/").status_code == 200  # the shell holds no data
    bearer = {"authorization": "Bearer s3cret"}
    assert get(server, "/api/dashboard/overview", headers=bearer).status_code == 200

    with httpx.Client(base_url=server.url, follow_redirects=False) as browser:
        wrong = browser.post("/api/dashboard/login", data={"token": "guess", "next": "/sql"})
        assert wrong.status_code == 303 and wrong.headers["location"].startswith("/login?error=1")
        assert "set-cookie" not in wrong.headers
        right = browser.post("/api/dashboard/login", data={"token": "s3cret", "next": "/sql"})
        assert right.status_code == 303 and right.headers["location"] == "/sql"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret" not in cookie
        for path in data:
            assert browser.get(path).status_code == 200, path
        # the SQL console and the diagnosis take the cookie too
        assert browser.post("/api/query", json={"sql": "SELECT 1"}).status_code == 200
        assert browser.get("/api/connections/NOPE/diagnosis").status_code == 404
        away = browser.post("/api/dashboard/login", data={"token": "s3cret", "next": "//evil"})
        assert away.headers["location"] == "/"
        out = browser.post("/api/dashboard/logout")
        assert out.status_code == 303
        browser.cookies.clear()  # what the browser does with the expired cookie
        assert browser.get("/api/dashboard/overview").status_code == 401

    # the server checks the login's time itself: a copied cookie ends with it (it had
    # been the same value for every login, valid as long as the token)
    from rtclake.web.http import SESSION_COOKIE, session_value

    late = session_value("s3cret", int(time.time()) - 1)
    assert get(server, "/api/dashboard/overview", cookies={SESSION_COOKIE: late}).status_code == 401
    later = session_value("s3cret", int(time.time()) + 3600)
    assert (
        get(server, "/api/dashboard/overview", cookies={SESSION_COOKIE: later}).status_code == 200
    )
    forged = later.split(".")[0] + "9." + later.split(".")[1]  # a later time, the same MAC
    assert (
        get(server, "/api/dashboard/overview", cookies={SESSION_COOKIE: forged}).status_code == 401
    )
