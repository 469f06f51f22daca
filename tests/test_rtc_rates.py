"""The ``rtc_rates`` view: rates from the counters of consecutive samples, computed here by
hand, a counter reset included (no rate is ever negative)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.importer import Importer, ImportStats
from rtclake.integrations.sora.logs import table_for
from rtclake.integrations.sora.rates import _durations
from rtclake.integrations.sora.views import (
    RATES_COLUMNS,
    REPORTS_COLUMNS,
    SPANS_COLUMNS,
    RatesDerivation,
    ReportsDerivation,
)
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.tables import ENVELOPE

BASE_MS = 1_795_132_800_000.0  # 2026-11-20T00:00:00Z


def sample(
    conn: str, stats_type: str, stats_id: str, t: float, kind: str | None = None, **data: Any
) -> dict[str, Any]:
    """One rtc_stats line as Sora logs it, ``t`` seconds after BASE_MS."""
    ts = BASE_MS + t * 1000
    iso = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rtc_data = {"id": stats_id, "type": stats_type, "timestamp": ts, **data}
    if kind:
        rtc_data["kind"] = kind
    return {
        "connection_id": conn, "id": f"R-{conn}-{t}", "timestamp": iso,
        "type": "connection.rtc", "channel_id": "ch", "session_id": "se", "role": "sendrecv",
        "rtc_id": stats_id, "rtc_timestamp": ts, "rtc_type": stats_type, "rtc_data": rtc_data,
    }  # fmt: skip


def import_lines(
    tmp_path: Path, lines: list[dict[str, Any]], *, block_bytes: int | None = None
) -> QueryEngine:
    """A lake in ``tmp_path`` of ``lines`` imported as Sora's log (in blocks of
    ``block_bytes``, if given)."""
    logs = tmp_path / "logs"
    logs.mkdir(parents=True)
    (logs / "rtc_stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    tables = default_registry()
    blocks = {"block_bytes": block_bytes} if block_bytes else {}
    importer = Importer(
        tables,
        Delivery([LakeSink(tmp_path / "lake", tables)], Metrics()),
        tmp_path / "import-state.json",
        node="test",
        table_for=table_for,
        **blocks,
    )
    stats = ImportStats()
    try:
        importer.import_paths([logs], stats)
    finally:
        importer.close()
    assert stats.rows == len(lines) and stats.bad_lines == 0
    return QueryEngine(tmp_path / "lake", default_registry())


def rates(engine: QueryEngine, stats_id: str) -> list[dict[str, Any]]:
    result = engine.run(f"SELECT * FROM rtc_rates WHERE stats_id = '{stats_id}' ORDER BY time")
    names = result.columns
    return [dict(zip(names, row, strict=True)) for row in result.rows()]


AUDIO_IN = [  # t, bytesReceived, packetsReceived, packetsLost, concealed, total samples
    (0, 0, 0, 0, 0, 0),
    (5, 20_000, 250, 10, 4_800, 240_000),
    (10, 40_000, 500, 10, 4_800, 480_000),
    (15, 5_000, 60, 1, 0, 48_000),  # reset: a reconnect, every counter starts again
]


@pytest.fixture
def engine(tmp_path: Path) -> QueryEngine:
    lines = [
        sample("k1", "inbound-rtp", "IA", t, "audio", bytesReceived=b, packetsReceived=p,
               packetsLost=lost, concealedSamples=c, totalSamplesReceived=total,
               jitter=0.01 * (i + 1), nackCount=5 * i, jitterBufferDelay=4.8 * i,
               jitterBufferEmittedCount=96_000 * i)
        for i, (t, b, p, lost, c, total) in enumerate(AUDIO_IN)
    ]  # fmt: skip
    lines += [
        sample("k1", "outbound-rtp", "OV", 0, "video", bytesSent=0, packetsSent=0, pliCount=0,
               firCount=0, framesPerSecond=30, frameWidth=1280, frameHeight=720,
               qualityLimitationReason="none",
               qualityLimitationDurations={"none": 0, "cpu": 0, "bandwidth": 0, "other": 0}),
        sample("k1", "outbound-rtp", "OV", 10, "video", bytesSent=1_250_000, packetsSent=1_100,
               pliCount=2, firCount=1, framesPerSecond=24, frameWidth=640, frameHeight=360,
               qualityLimitationReason="bandwidth",
               qualityLimitationDurations={"none": 6, "cpu": 0, "bandwidth": 4, "other": 0}),
        sample("k1", "inbound-rtp", "IV", 0, "video", bytesReceived=0, framesDecoded=0,
               freezeCount=0),
        sample("k1", "inbound-rtp", "IV", 10, "video", bytesReceived=500_000, framesDecoded=150,
               freezeCount=1),
        sample("k1", "remote-inbound-rtp", "RIA", 0, "audio", fractionLost=0.0,
               roundTripTime=0.1, jitter=0.004),
        sample("k1", "remote-inbound-rtp", "RIA", 5, "audio", fractionLost=0.05,
               roundTripTime=0.12, jitter=0.006),
        sample("k1", "candidate-pair", "CP", 0, bytesSent=0, bytesReceived=0,
               currentRoundTripTime=0.07),
        sample("k1", "candidate-pair", "CP", 5, bytesSent=100_000, bytesReceived=300_000,
               currentRoundTripTime=0.08),
    ]  # fmt: skip
    return import_lines(tmp_path, lines)


def test_inbound_audio_rates_match_the_counters_and_a_reset_starts_again(
    engine: QueryEngine,
) -> None:
    rows = rates(engine, "IA")
    assert len(rows) == 3  # four samples, three intervals
    first, second, reset = rows
    assert first["interval_s"] == pytest.approx(5)
    assert first["bitrate_bps"] == pytest.approx(8 * 20_000 / 5)
    assert first["packets_per_s"] == pytest.approx(250 / 5)
    assert first["loss_pct"] == pytest.approx(round(100 * 10 / (250 + 10), 3))  # 3 decimals
    assert first["concealment_pct"] == pytest.approx(100 * 4_800 / 240_000)
    assert first["jitter_ms"] == pytest.approx(20)
    assert first["nack_per_min"] == pytest.approx(5 / 5 * 60)
    assert first["jitter_buffer_ms"] == pytest.approx(1000 * 4.8 / 96_000)
    assert second["loss_pct"] == 0 and second["concealment_pct"] == 0
    # the counters went down: the interval takes the new values as its differences
    assert reset["bitrate_bps"] == pytest.approx(8 * 5_000 / 5)
    assert reset["packets_per_s"] == pytest.approx(60 / 5)
    assert reset["loss_pct"] == pytest.approx(round(100 * 1 / (60 + 1), 3))
    assert reset["concealment_pct"] == pytest.approx(0)
    assert first["media_kind"] == "audio" and first["stats_type"] == "inbound-rtp"
    assert (first["channel_id"], first["session_id"], first["connection_id"]) == (
        "ch", "se", "k1",
    )  # fmt: skip


def test_video_rates_and_the_share_of_each_quality_limitation(engine: QueryEngine) -> None:
    (out,) = rates(engine, "OV")
    assert out["bitrate_bps"] == pytest.approx(8 * 1_250_000 / 10)
    assert out["packets_per_s"] == pytest.approx(110)
    assert out["fps"] == 24 and (out["frame_width"], out["frame_height"]) == (640, 360)
    assert out["pli_per_min"] == pytest.approx(12) and out["fir_per_min"] == pytest.approx(6)
    assert out["quality_limitation_reason"] == "bandwidth"
    assert out["quality_limitation_none_share"] == pytest.approx(0.6)
    assert out["quality_limitation_bandwidth_share"] == pytest.approx(0.4)
    assert out["quality_limitation_cpu_share"] == 0
    (inbound,) = rates(engine, "IV")
    assert inbound["fps"] == pytest.approx(15)  # no framesPerSecond: from framesDecoded
    assert inbound["freezes_per_min"] == pytest.approx(6)
    assert inbound["concealment_pct"] is None  # audio only


def test_loss_and_rtt_from_remote_inbound_and_the_candidate_pair(engine: QueryEngine) -> None:
    (remote,) = rates(engine, "RIA")
    assert remote["loss_pct"] == pytest.approx(5)
    assert remote["rtt_ms"] == pytest.approx(120)
    assert remote["jitter_ms"] == pytest.approx(6)
    (pair,) = rates(engine, "CP")
    assert pair["rtt_ms"] == pytest.approx(80)
    assert pair["bitrate_bps"] == pytest.approx(8 * 100_000 / 5)  # the bytes it sent


def test_no_rate_is_ever_negative(engine: QueryEngine) -> None:
    columns = ("bitrate_bps", "packets_per_s", "loss_pct", "fps", "freezes_per_min",
               "concealment_pct", "nack_per_min", "pli_per_min", "fir_per_min")  # fmt: skip
    negative = " OR ".join(f"{c} < 0" for c in columns)
    total, bad = engine.run(
        f"SELECT count(*), count(*) FILTER (WHERE {negative}) FROM rtc_rates"
    ).rows()[0]
    assert total == 3 + 1 + 1 + 1 + 1 and bad == 0


def test_every_column_of_the_views_is_declared_and_documented(engine: QueryEngine) -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    declared: dict[str, tuple[tuple[str, str], ...]] = {
        name: view.columns for name, view in default_registry().views.items()
    }
    declared["rtc_rates"] = RATES_COLUMNS  # derived tables: their columns after the envelope
    declared["connection_reports"] = REPORTS_COLUMNS
    declared["connection_spans"] = SPANS_COLUMNS
    where = {"rtc_rates": "METRICS.md", "connection_reports": "METRICS.md",
             "connection_spans": "METRICS.md",
             "connection_quality": "QUALITY.md", "session_quality": "QUALITY.md",
             "connection_transport": "METRICS.md"}  # fmt: skip
    envelope = {f.name for f in ENVELOPE} | {"extra", "date"}
    for name, page in where.items():
        actual = engine.run(f"SELECT * FROM {name} LIMIT 0").columns
        own = [c for c in actual if c not in envelope or c == "time"]
        assert [c for c, _ in declared[name]] == own, name
        text = (docs / page).read_text()
        if page == "METRICS.md":  # column by column
            missing = [c for c in own if f"| `{c}` |" not in text]
            assert not missing, f"{page} lacks {missing}"
        assert f"`{name}`" in text


@pytest.mark.parametrize("group_rows", [1, 25])
def test_rates_are_derived_once_per_batch_in_order_across_batches(
    tmp_path: Path, group_rows: int
) -> None:
    """The importer derives rates block by block: a stream's samples split over many
    blocks (a block of 4 KiB here), stored a block at a time or in groups of blocks,
    make the same rates as one block would, none twice."""
    lines = [
        sample("k", "inbound-rtp", "IA", 5 * i, "audio", bytesReceived=20_000 * i,
               packetsReceived=250 * i, packetsLost=0)
        for i in range(60)
    ]  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    tables = default_registry()
    importer = Importer(
        tables, Delivery([LakeSink(tmp_path / "lake", tables)], Metrics()),
        tmp_path / "import-state.json", node="test", table_for=table_for, block_bytes=4096,
        group_rows=group_rows,
    )  # fmt: skip
    try:
        importer.import_paths([logs])
    finally:
        importer.close()
    engine = QueryEngine(tmp_path / "lake", default_registry(), dedup=False)
    n, distinct, low, high = engine.run(
        "SELECT count(*), count(DISTINCT time), min(bitrate_bps), max(bitrate_bps) FROM rtc_rates"
    ).rows()[0]
    assert n == distinct == 59  # sixty samples, one rate per interval, none repeated
    assert low == high == pytest.approx(8 * 20_000 / 5)
    files = list((tmp_path / "lake" / "main" / "rtc_rates").rglob("*.parquet"))
    assert len(files) > 1  # really more than one block, or group


def test_a_state_saved_by_an_earlier_version_is_carried_on(tmp_path: Path) -> None:
    """A derivation's state written before a column was added (here rtc_rates's
    ``track_identifier`` and a report's ``is_rate``) still gives the next batch its
    previous sample and report: the missing column is NULL, not a failed derivation."""
    lines = [
        sample("k", "inbound-rtp", "IA", 5 * i, "audio", bytesReceived=20_000 * i,
               packetsReceived=250 * i, packetsLost=0, trackIdentifier="p-audio")
        for i in range(4)
    ]  # fmt: skip
    import_lines(tmp_path, lines)
    (path,) = (tmp_path / "lake" / "main" / "rtc_stats").rglob("*.parquet")
    stats = pq.read_table(path).sort_by("rtc_timestamp")
    first, second = stats.slice(0, 2), stats.slice(2)
    rates_, reports_ = RatesDerivation(), ReportsDerivation()
    made, state = rates_.derive({"rtc_stats": first}, None)
    _, report_state = reports_.derive({"rtc_stats": first, **made}, None)
    assert state is not None and report_state is not None
    old_state = state.drop_columns(["track_identifier"])
    old_report_state = report_state.drop_columns(["is_rate"])
    made, _ = rates_.derive({"rtc_stats": second}, old_state)
    assert made["rtc_rates"].num_rows == 2  # the first interval from the old state
    assert made["rtc_rates"]["track_identifier"].to_pylist() == ["p-audio", "p-audio"]
    reports_made, _ = reports_.derive({"rtc_stats": second, **made}, old_report_state)
    assert reports_made["connection_reports"].num_rows == 2


def test_quality_limitation_durations_are_read_as_numbers_and_nothing_else() -> None:
    """The durations' objects are read at once; an object with a value that is not a
    number is read one by one, its numbers kept and the rest left out."""

    def read(values: list[str], rows: int) -> dict[str, list[float | None]]:
        found = _durations(values, np.arange(rows - len(values), rows), rows)
        return {k: [None if np.isnan(x) else x for x in v] for k, v in found.items()}

    clean = ['{"none": 2, "cpu": 1.5, "bandwidth": 0.0, "other": 0}', '{"cpu": 3, "extra": 1}']
    assert read(clean, 3) == {
        "none": [None, 2.0, None], "cpu": [None, 1.5, 3.0],
        "bandwidth": [None, 0.0, None], "other": [None, 0.0, None],
    }  # fmt: skip
    mixed = ['{"cpu": true, "bandwidth": 4}', '{"other": "7", "none": 1e3}']
    assert read(mixed, 2) == {
        "none": [None, 1000.0], "cpu": [None, None],
        "bandwidth": [4.0, None], "other": [None, None],
    }  # fmt: skip
    assert read([], 2) == {r: [None, None] for r in ("none", "cpu", "bandwidth", "other")}


def test_the_bitrate_example_of_metrics_md_adds_up_the_streams_received(tmp_path: Path) -> None:
    """docs/METRICS.md's first example, run as written (on its connection id): a connection
    receiving two video streams of 1,000 and 3,000 kbit/s receives 4,000 kbit/s, not their
    average."""
    conn = "FJB24N65RS1D3CRXMVC4Y32FCM"
    lines = [
        sample(conn, "inbound-rtp", f"IV{n}", 5 * i, "video", bytesReceived=rate * 625 * i,
               packetsReceived=100 * i, packetsLost=0)
        for i in range(6) for n, rate in ((1, 1000), (2, 3000))
    ] + [
        sample(conn, "outbound-rtp", "OV", 5 * i, "video", bytesSent=500 * 625 * i,
               packetsSent=50 * i)
        for i in range(6)
    ]  # fmt: skip
    engine = import_lines(tmp_path, lines)
    text = (Path(__file__).resolve().parent.parent / "docs" / "METRICS.md").read_text()
    example = text.split("```sql\n", 1)[1].split("\n\n", 1)[0]
    assert "video bitrate per minute of one connection" in example
    rows = {(kind, round(kbps)) for _, kind, kbps in engine.run(example).rows()}
    assert rows == {("inbound-rtp", 4000), ("outbound-rtp", 500)}
