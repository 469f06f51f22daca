"""``rtclake demo``: Sora's generated log folder is read by the real importer, each
connection's data shows exactly the findings the manifest lists, and the command imports
once, also beside a running server."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from rtclake.delivery import Delivery
from rtclake.importer import Importer, ImportStats
from rtclake.integrations.sora.demo import FINDINGS, SCRIPT
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.registry import Registry, load_registry

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MINUTES = 10


@dataclass
class Demo:
    folder: Path
    manifest: dict[str, Any]
    stats: ImportStats
    logs: list[dict[str, Any]]
    engine: QueryEngine

    def rows(self, sql: str) -> list[list[Any]]:
        return self.engine.run(sql).rows()

    def showing(self, finding: str) -> str:
        """The connection made to show ``finding``."""
        (cid,) = [c for c, v in self.manifest["connections"].items() if finding in v["expect"]]
        return cid


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def demo(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The Sora demo as registered, written and imported into a lake by the importer."""
    return demo_lake(tmp_path_factory.mktemp("demo"), registry)


def demo_lake(root: Path, registry: Registry | None = None) -> Demo:
    """The Sora demo written under ``root`` and imported into ``root / "lake"``; other
    tests use it as a realistic lake."""
    registry = registry or load_registry()
    manifest = registry.demos["sora"](root / "sora", now=NOW, seed=7, minutes=MINUTES)
    tables = registry.tables
    importer = Importer(
        tables, Delivery([LakeSink(root / "lake", tables)], Metrics()),
        root / "import-state.json", node="test", table_for=registry.table_for_file,
    )  # fmt: skip
    with capture_logs() as logs:
        stats = importer.import_paths([root / "sora"])
    importer.close()
    return Demo(root / "sora", manifest, stats, logs, QueryEngine(root / "lake", tables))


def test_the_importer_reads_every_file_without_a_bad_line(demo: Demo) -> None:
    assert demo.stats.files == 3 and demo.stats.skipped_files == 0
    assert demo.stats.bad_lines == 0
    assert [log for log in demo.logs if log["log_level"] == "warning"] == []  # no misplaced value
    for table, file in (
        ("rtc_stats", "rtc_stats.jsonl"),
        ("sessions", "session_webhook.jsonl"),
        ("connections", "connection.jsonl"),
    ):
        (count,) = demo.rows(f"SELECT count(*) FROM {table}")[0]
        assert count == demo.manifest["files"][file] > 0, table


def test_the_data_covers_the_minutes_before_now_with_a_report_every_5_s(demo: Demo) -> None:
    first, last = demo.rows("SELECT min(time), max(time) FROM rtc_stats")[0]
    assert NOW - timedelta(minutes=MINUTES) <= first < NOW - timedelta(minutes=MINUTES - 1)
    assert NOW - timedelta(seconds=10) < last <= NOW
    gaps = demo.rows(
        "SELECT DISTINCT round(epoch(t - lag(t) OVER (PARTITION BY connection_id ORDER BY t)))"
        " FROM (SELECT DISTINCT connection_id, rtc_timestamp AS t FROM rtc_stats)"
    )
    assert {gap for (gap,) in gaps if gap is not None} == {5}
    per_report = demo.rows(
        "SELECT min(n), max(n) FROM (SELECT count(*) AS n FROM rtc_stats"
        " GROUP BY connection_id, rtc_timestamp)"
    )[0]
    assert per_report[0] >= 12 and per_report[1] <= 30


def test_the_manifest_names_every_connection_and_finding(demo: Demo) -> None:
    rows = demo.rows("SELECT DISTINCT connection_id, channel_id, session_id FROM rtc_stats")
    connections = demo.manifest["connections"]
    assert {cid: (ch, s) for cid, ch, s in rows} == {
        cid: (c["channel_id"], c["session_id"]) for cid, c in connections.items()
    }
    assert sorted(f for c in connections.values() for f in c["expect"]) == sorted(FINDINGS)
    assert sum(1 for c in connections.values() if not c["expect"]) >= 3
    per_channel = [len(parts) for parts in SCRIPT.values()]
    assert 3 <= len(per_channel) <= 4 and all(2 <= n <= 5 for n in per_channel)
    ids = [*connections, *demo.manifest["channels"].values()]
    assert all(len(i) == 26 and i.isalnum() and i.isupper() for i in ids)


def test_same_seed_and_now_give_identical_files_and_another_now_new_ids(
    registry: Registry, tmp_path: Path
) -> None:
    write = registry.demos["sora"]
    first = write(tmp_path / "a", now=NOW, seed=3, minutes=5)
    again = write(tmp_path / "b", now=NOW, seed=3, minutes=5)
    assert again == first
    for file in first["files"]:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    later = write(tmp_path / "c", now=NOW + timedelta(minutes=1), seed=3, minutes=5)
    assert set(later["connections"]).isdisjoint(first["connections"])


def test_writing_the_same_files_again_leaves_them_untouched(demo: Demo, registry: Registry) -> None:
    files = sorted(demo.folder.iterdir())
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files]
    registry.demos["sora"](demo.folder, now=NOW, seed=7, minutes=MINUTES)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in files] == before


COUNTERS = (
    "bytes_sent", "bytes_received", "packets_sent", "packets_received", "packets_lost",
    "header_bytes_sent", "frames_encoded", "frames_sent", "frames_received", "frames_decoded",
    "frames_dropped", "freeze_count", "total_freezes_duration", "nack_count", "pli_count",
    "total_samples_received", "concealed_samples", "jitter_buffer_emitted_count",
    "total_round_trip_time", "round_trip_time_measurements", "requests_sent",
    "responses_received", "selected_candidate_pair_changes",
    "quality_limitation_resolution_changes",
)  # fmt: skip


def test_counters_never_go_back_within_a_stats_object(demo: Demo) -> None:
    lags = ", ".join(
        f"count(*) FILTER (WHERE {c} < lag_{c}) AS {c}" for c in COUNTERS
    )  # fmt: skip
    inner = ", ".join(
        f"{c}, lag({c}) OVER (PARTITION BY connection_id, stats_id ORDER BY rtc_timestamp)"
        f" AS lag_{c}"
        for c in COUNTERS
    )
    (backwards,) = demo.rows(f"SELECT {lags} FROM (SELECT {inner} FROM rtc_stats)")
    assert dict(zip(COUNTERS, backwards, strict=True)) == dict.fromkeys(COUNTERS, 0)


def test_a_streams_counters_restart_only_at_the_ice_restart(demo: Demo) -> None:
    # A stream as a chart follows it: its direction, kind and sender, whatever its SSRC.
    drops = demo.rows(
        "SELECT connection_id, stats_type, media_kind, count(*) FROM ("
        " SELECT *, coalesce(bytes_sent, bytes_received) AS n, lag(coalesce(bytes_sent,"
        "  bytes_received)) OVER (PARTITION BY connection_id, stats_type, media_kind,"
        "  coalesce(track_identifier, '') ORDER BY rtc_timestamp) AS before"
        " FROM rtc_stats WHERE stats_type IN ('inbound-rtp', 'outbound-rtp'))"
        " WHERE n < before GROUP BY ALL ORDER BY ALL"
    )
    restart = demo.showing("ice_restart")
    assert {cid for cid, *_ in drops} == {restart}
    assert {(t, k) for _, t, k, _ in drops} == {
        (t, k) for t in ("inbound-rtp", "outbound-rtp") for k in ("audio", "video")
    }
    ssrcs = demo.rows(
        "SELECT media_kind, count(DISTINCT ssrc) FROM rtc_stats WHERE stats_type ="
        f" 'outbound-rtp' AND connection_id = '{restart}' GROUP BY 1"
    )
    assert dict(ssrcs) == {"audio": 2, "video": 2}


# What each finding looks like in the lake, as a query of the connections showing it.
DETECT = {
    "high_loss": """SELECT connection_id FROM (
        SELECT connection_id, date_trunc('minute', time) AS m,
          sum(packets_lost - lost_before) / nullif(sum(packets_lost - lost_before
            + packets_received - received_before), 0) AS loss
        FROM (SELECT *, lag(packets_lost) OVER w AS lost_before,
                lag(packets_received) OVER w AS received_before
              FROM rtc_stats WHERE stats_type = 'inbound-rtp'
              WINDOW w AS (PARTITION BY connection_id, stats_id ORDER BY rtc_timestamp))
        GROUP BY ALL) WHERE loss > 0.05""",
    "high_rtt": """SELECT connection_id FROM rtc_stats WHERE stats_type = 'candidate-pair'
        GROUP BY 1 HAVING count(*) FILTER (WHERE current_round_trip_time > 0.3) >= 6""",
    "high_jitter": """SELECT connection_id FROM rtc_stats WHERE stats_type = 'inbound-rtp'
        GROUP BY 1 HAVING count(*) FILTER (WHERE jitter > 0.05) >= 6""",
    "bandwidth_limited": """SELECT connection_id FROM rtc_stats
        WHERE quality_limitation_reason = 'bandwidth' GROUP BY 1 HAVING count(*) >= 6""",
    "cpu_limited": """SELECT connection_id FROM rtc_stats
        WHERE quality_limitation_reason = 'cpu' GROUP BY 1 HAVING count(*) >= 6""",
    "freezes": """SELECT connection_id FROM rtc_stats WHERE stats_type = 'inbound-rtp'
        GROUP BY 1 HAVING max(freeze_count) >= 3""",
    "low_fps": """SELECT connection_id FROM rtc_stats WHERE stats_type = 'inbound-rtp'
        AND media_kind = 'video' AND frames_per_second BETWEEN 1 AND 10
        GROUP BY 1 HAVING count(*) >= 6""",
    "relay": """SELECT p.connection_id FROM rtc_stats t
        JOIN rtc_stats p ON p.connection_id = t.connection_id AND p.rtc_timestamp =
          t.rtc_timestamp AND p.stats_id = t.selected_candidate_pair_id
        JOIN rtc_stats l ON l.connection_id = p.connection_id AND l.rtc_timestamp =
          p.rtc_timestamp AND l.stats_id = p.local_candidate_id
        WHERE t.stats_type = 'transport' AND l.candidate_type = 'relay'
          AND l.relay_protocol = 'udp'""",
    # two reports in a row without a byte: 10 s, the strictest rule a diagnosis might use
    "no_media": """SELECT connection_id FROM (
        SELECT *, count(*) FILTER (WHERE NOT still) OVER (PARTITION BY connection_id,
          stats_id ORDER BY rtc_timestamp) AS stretch
        FROM (SELECT connection_id, stats_id, rtc_timestamp, coalesce(bytes_sent,
                bytes_received) = lag(coalesce(bytes_sent, bytes_received)) OVER (
                PARTITION BY connection_id, stats_id ORDER BY rtc_timestamp) AS still
              FROM rtc_stats WHERE stats_type IN ('inbound-rtp', 'outbound-rtp')))
        WHERE still GROUP BY connection_id, stats_id, stretch HAVING count(*) >= 2""",
    "ice_restart": """SELECT connection_id FROM rtc_stats WHERE stats_type = 'transport'
        GROUP BY 1 HAVING max(selected_candidate_pair_changes) > 1""",
    "disconnected": """SELECT connection_id FROM rtc_stats WHERE ice_state = 'failed'""",
    "reconnect": """SELECT later.connection_id FROM
        (SELECT connection_id, client_id, session_id, min(time) AS t FROM rtc_stats
         GROUP BY ALL) AS later
        JOIN (SELECT connection_id, client_id, session_id, max(time) AS t FROM rtc_stats
         GROUP BY ALL) AS earlier USING (client_id, session_id)
        WHERE earlier.connection_id <> later.connection_id AND earlier.t < later.t""",
}


def test_each_connection_shows_exactly_the_findings_the_manifest_lists(demo: Demo) -> None:
    assert set(DETECT) == set(FINDINGS)
    shown: dict[str, set[str]] = {cid: set() for cid in demo.manifest["connections"]}
    sql = " UNION ALL ".join(f"SELECT '{f}', connection_id FROM ({q})" for f, q in DETECT.items())
    for finding, cid in demo.rows(sql):
        shown[cid].add(finding)
    expected = {cid: set(c["expect"]) for cid, c in demo.manifest["connections"].items()}
    assert shown == expected


def test_the_lossy_connection_loses_about_8_percent_of_packets(demo: Demo) -> None:
    lossy = demo.showing("high_loss")
    start, end = NOW - timedelta(minutes=MINUTES * 0.7), NOW - timedelta(minutes=MINUTES * 0.4)
    lost, received = demo.rows(
        "SELECT max(packets_lost) - min(packets_lost), max(packets_received)"
        " - min(packets_received) FROM rtc_stats WHERE stats_type = 'inbound-rtp'"
        f" AND connection_id = '{lossy}' AND media_kind = 'video'"
        f" AND time BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'"
        " GROUP BY stats_id ORDER BY 1 DESC LIMIT 1"
    )[0]
    assert 0.07 < lost / (lost + received) < 0.09
    (fraction,) = demo.rows(
        "SELECT median(fraction_lost) FROM rtc_stats WHERE stats_type = 'remote-inbound-rtp'"
        f" AND connection_id = '{lossy}'"
        f" AND time BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'"
    )[0]
    assert 0.07 < fraction < 0.09


def test_the_ended_connections_are_logged_with_their_reason(demo: Demo) -> None:
    rows = demo.rows("SELECT connection_id, reason, created_at < destroyed_at FROM connections")
    ended = {c for c, v in demo.manifest["connections"].items() if v["destroyed"]}
    assert {cid for cid, _, _ in rows} == ended
    reasons = {cid: reason for cid, reason, ordered in rows if ordered}
    assert reasons.pop(demo.showing("disconnected")) == "abnormal"
    assert set(reasons.values()) == {"normal"} and len(reasons) == len(ended) - 1
    events = demo.rows("SELECT event, count(*) FROM sessions GROUP BY 1")
    assert dict(events) == {
        "session.created": len(SCRIPT),
        "session.updated": demo.manifest["files"]["session_webhook.jsonl"] - len(SCRIPT) - 1,
        "session.destroyed": 1,
    }


# -- the command -------------------------------------------------------------------------


def rtclake(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "rtclake", *args], cwd=cwd, env={**base, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def counts(cwd: Path) -> list[int]:
    """Rows of rtc_stats, sessions and connections, as ``rtclake query`` sees them."""
    sql = "SELECT " + ", ".join(
        f"(SELECT count(*) FROM {t})" for t in ("rtc_stats", "sessions", "connections")
    )
    out = rtclake("query", sql, "--format", "csv", cwd=cwd)
    assert out.returncode == 0, out.stderr
    return [int(n) for n in out.stdout.split()[-1].split(",")]


DEMO = ("demo", "--minutes", "5", "--now", "2026-12-01T12:00:00Z")


def test_demo_imports_its_files_and_a_second_run_stores_nothing_twice(tmp_path: Path) -> None:
    first = rtclake(*DEMO, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "rtclake-data" / "demo" / "sora"
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    lines = sum(manifest["files"].values())
    assert f"imported {lines:,} rows from 3 files" in first.stdout
    assert "0 bad lines skipped, 0 files not recognised" in first.stdout
    assert "open http://127.0.0.1:8080/" in first.stdout
    files = manifest["files"]
    expected = [files[f] for f in ("rtc_stats.jsonl", "session_webhook.jsonl", "connection.jsonl")]
    assert counts(tmp_path) == expected

    again = rtclake(*DEMO, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "imported 0 rows from 3 files" in again.stdout
    assert counts(tmp_path) == expected


def test_demo_writes_only_with_no_import_and_refuses_a_bad_now(tmp_path: Path) -> None:
    out = rtclake(*DEMO, "--no-import", "--dir", str(tmp_path / "d"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "sora" / "rtc_stats.jsonl").stat().st_size > 0
    assert not (tmp_path / "rtclake-data" / "lake").exists()
    bad = rtclake("demo", "--now", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2 and "--now yesterday" in bad.stderr


def test_demo_imports_beside_a_running_server(tmp_path: Path, server: Any) -> None:
    out = rtclake(*DEMO, cwd=tmp_path, RTCLAKE_DATA_DIR=str(server.data_dir))
    assert out.returncode == 0, out.stderr
    answer = server.query("SELECT count(DISTINCT connection_id) FROM rtc_stats")
    assert answer["rows"][0][0] == sum(len(parts) for parts in SCRIPT.values())
    assert server.health().status_code == 200
