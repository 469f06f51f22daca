"""``connection_quality`` and ``session_quality``: the E-model's audio MOS and the video
score on cases computed by hand (docs/QUALITY.md), and a clean connection ranked above a
lossy one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rtclake.integrations.sora.views import RatesDerivation, ReportsDerivation
from rtclake.lake.query import QueryEngine
from tests.test_rtc_rates import import_lines, sample


def connection(
    conn: str,
    *,
    loss_pct: float = 0,
    rtt: float = 0.04,
    fps: float = 30,
    width: int = 1280,
    height: int = 720,
    freezes: int = 0,
    session: str = "se",
) -> list[dict[str, Any]]:
    """Two reports 30 s apart: inbound audio at 32 kbit/s with a 40 ms jitter buffer and
    ``loss_pct`` of its packets lost, a candidate pair with ``rtt`` seconds, inbound video
    with ``freezes`` in the 30 s."""
    lines = []
    for i, t in enumerate((0, 30)):
        lost = round(1500 * i * loss_pct / 100)
        received = 1500 * i - lost
        lines += [
            sample(conn, "inbound-rtp", "IA", t, "audio", bytesReceived=120_000 * i,
                   packetsReceived=received, packetsLost=lost, jitter=0.01,
                   jitterBufferDelay=0.04 * 480 * i, jitterBufferEmittedCount=480 * i),
            sample(conn, "candidate-pair", "CP", t, currentRoundTripTime=rtt,
                   bytesSent=1000 * i, bytesReceived=1000 * i),
            sample(conn, "inbound-rtp", "IV", t, "video", bytesReceived=600_000 * i,
                   packetsReceived=600 * i, packetsLost=0, framesPerSecond=fps,
                   frameWidth=width, frameHeight=height, freezeCount=freezes * i),
        ]  # fmt: skip
    for line in lines:
        line["session_id"] = session
    return lines


def quality(engine: QueryEngine, conn: str) -> dict[str, Any]:
    result = engine.run(f"SELECT * FROM connection_quality WHERE connection_id = '{conn}'")
    (row,) = result.rows()
    return dict(zip(result.columns, row, strict=True))


@pytest.fixture
def engine(tmp_path: Path) -> QueryEngine:
    lines = connection("clean") + connection("lossy", loss_pct=8)
    lines += connection("far", rtt=0.4) + connection("small", width=320, height=180, fps=5)
    lines += connection("frozen", freezes=1, session="other")
    return import_lines(tmp_path, lines)


def test_the_audio_mos_of_a_clean_and_a_lossy_connection(engine: QueryEngine) -> None:
    clean = quality(engine, "clean")
    # one-way delay 40/2 + 40 + 20 = 80 ms <= 100: Idd = 0; Ie = 55 - 4.6 ln 32000 = 7.282;
    # R = 93.2 - 7.282 = 85.918; MOS = 1 + 0.035 R + R (R - 60)(100 - R) 7e-6 = 4.2266
    # (the lake keeps three decimals of a derived value: 4.227)
    assert clean["audio_delay_ms"] == pytest.approx(80)
    assert clean["audio_bitrate_bps"] == pytest.approx(32_000)
    assert clean["r_factor"] == pytest.approx(85.918, abs=1e-3)
    assert clean["mos_audio"] == pytest.approx(4.227)
    lossy = quality(engine, "lossy")
    # Ie,eff = 7.282 + (95 - 7.282) * 8 / (8 + 20) = 32.345; R = 60.855; MOS = 3.1442
    assert lossy["audio_loss_pct"] == pytest.approx(8)
    assert lossy["r_factor"] == pytest.approx(60.856, abs=1e-3)
    assert lossy["mos_audio"] == pytest.approx(3.144)


def test_delay_above_100_ms_costs_the_g107_idd(engine: QueryEngine) -> None:
    far = quality(engine, "far")
    # Ta = 400/2 + 40 + 20 = 260 ms; X = log2(2.6) = 1.3785;
    # Idd = 25 ((1 + X^6)^(1/6) - 3 (1 + (X/3)^6)^(1/6) + 2) = 10.136; R = 75.782
    assert far["audio_delay_ms"] == pytest.approx(260)
    assert far["r_factor"] == pytest.approx(75.782, abs=1e-3)
    assert far["mos_audio"] == pytest.approx(3.855)


def test_the_video_score(engine: QueryEngine) -> None:
    assert quality(engine, "clean")["video_score"] == pytest.approx(5.0)
    # 180p and 5 fps: each costs its full 1.5
    assert quality(engine, "small")["video_score"] == pytest.approx(2.0)
    # one freeze in 30 s: two a minute, 0.5 each
    assert quality(engine, "frozen")["video_score"] == pytest.approx(4.0)
    # 8 % video loss would cost 1.6, capped at 1.5 (this one loses audio only)
    assert quality(engine, "lossy")["video_score"] == pytest.approx(5.0)


def test_a_clean_connection_ranks_above_a_lossy_one(engine: QueryEngine) -> None:
    ranked = engine.run(
        "SELECT connection_id FROM connection_quality WHERE session_id = 'se' ORDER BY score DESC"
    ).rows()
    order = [r[0] for r in ranked]
    assert order.index("clean") < order.index("lossy")
    assert order[0] == "clean"
    result = engine.run("SELECT * FROM session_quality WHERE session_id = 'se'")
    (row,) = result.rows()
    session = dict(zip(result.columns, row, strict=True))
    assert session["connections"] == 4
    assert session["worst_connection_id"] == "small"  # video 2.0 is its score
    assert session["worst_score"] == pytest.approx(2.0)
    # scores: clean 4.227, lossy 3.144, far 3.855, small 2.0: the median of four
    assert session["median_score"] == pytest.approx((3.144 + 3.855) / 2)


def _rows(engine: QueryEngine, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in row)
            for row in engine.run(sql).rows()]  # fmt: skip


def test_a_report_split_between_batches_is_scored_whole(tmp_path: Path) -> None:
    """``connection_reports`` is derived batch by batch; a report whose objects come in two
    batches is stored again whole (``part`` 1), and the views show only the whole one: the
    same scores and transport as from one batch."""
    lines = connection("clean") + connection("lossy", loss_pct=8) + connection("far", rtt=0.4)
    for line in lines:  # a transport naming the pair, for connection_transport
        if line["rtc_type"] == "candidate-pair":
            line["rtc_data"] |= {"nominated": True, "state": "succeeded"}
    whole = import_lines(tmp_path / "whole", lines)
    split = import_lines(tmp_path / "split", lines, block_bytes=1_200)  # 2-3 objects a block
    parts = split.run("SELECT max(part), count(*) FILTER (WHERE part > 0) FROM connection_reports")
    ((highest, continued),) = parts.rows()
    assert highest >= 1 and continued >= 3  # really split
    for sql in (
        "SELECT * FROM connection_quality ORDER BY connection_id, time",
        "SELECT * FROM connection_transport ORDER BY connection_id, time",
        "SELECT * FROM session_quality ORDER BY session_id",
    ):
        expected = _rows(whole, sql)
        assert expected and _rows(split, sql) == expected, sql
    # every report once in the views: two reports a connection, the first without rates
    assert split.run("SELECT count(*) FROM connection_quality").rows() == [[3]]
    assert split.run("SELECT count(*) FROM connection_transport").rows() == [[6]]


def test_a_late_report_is_not_stored_again(tmp_path: Path) -> None:
    """A report older than the connection's latest one (a repeated log line) adds no row:
    derived again, it has the record id of the row stored, which the lake keeps."""
    lines = connection("clean")
    engine = import_lines(tmp_path, [*lines, *lines[:3]], block_bytes=1_200)
    counts = engine.run(
        "SELECT time, count(*) FILTER (WHERE part = 0) FROM connection_reports GROUP BY time"
    ).rows()
    assert sorted(n for _, n in counts) == [1, 1]
    assert engine.run("SELECT count(*) FROM connection_quality").rows() == [[1]]


def test_the_objects_of_the_latest_report_read_again_add_no_part(tmp_path: Path) -> None:
    """Objects the state holds already (lines read again: overlapping rotated copies, an
    upload repeated) are left out, so a repeat adds no part to the report: each repeat
    of a connection's latest report had been stored again, one part higher."""
    import_lines(tmp_path, connection("clean"))
    (path,) = (tmp_path / "lake" / "main" / "rtc_stats").rglob("*.parquet")
    stats = pq.read_table(path).sort_by("rtc_timestamp")
    rates, reports = RatesDerivation(), ReportsDerivation()
    made, rate_state = rates.derive({"rtc_stats": stats}, None)
    first, state = reports.derive({"rtc_stats": stats, **made}, None)
    assert first["connection_reports"]["part"].to_pylist() == [0, 0]
    latest = stats.slice(3)  # the second report's three objects
    made, _ = rates.derive({"rtc_stats": latest}, rate_state)
    again, kept = reports.derive({"rtc_stats": latest, **made}, state)
    assert again == {}
    assert kept is not None and state is not None and kept.equals(state)
    # with one object more, the report is continued: part 1, from all of its objects
    more = sample("clean", "transport", "T1", 30, selectedCandidatePairId="CP")
    extra = import_lines(tmp_path / "more", [*connection("clean"), more])
    extra.close()
    (path,) = (tmp_path / "more" / "lake" / "main" / "rtc_stats").rglob("*.parquet")
    transport = pq.read_table(path).filter(pc.equal(pc.field("stats_type"), "transport"))
    continued, _ = reports.derive({"rtc_stats": pa.concat_tables([latest, transport])}, state)
    assert continued["connection_reports"]["part"].to_pylist() == [1]


def test_report_files_have_statistics_for_the_part(tmp_path: Path) -> None:
    """``connection_reports`` files keep min/max statistics for ``part`` (and the ids):
    what lets the views' anti-join on ``part > 0`` skip every row group without a
    continued report."""
    lines = [line for i in (3, 1, 2) for line in connection(f"c{i}", session=f"s{i % 2}")]
    import_lines(tmp_path, lines)
    (path,) = (tmp_path / "lake" / "main" / "connection_reports").rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata.row_group(0)
    names = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in ("connection_id", "part"):
        assert names[name].is_stats_set and names[name].statistics.has_min_max, name
    assert names["part"].statistics.max == 0
    assert not names["rtt_ms"].is_stats_set  # metrics: none, as for every table
