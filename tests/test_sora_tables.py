"""Sora's log lines land in typed tables."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from structlog.testing import capture_logs

from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.errors import InputError
from rtclake.integrations.sora.tables import RTC_STATS, SESSIONS
from rtclake.sources.base import split_lines
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import identity_gap
from tests.conftest import FIXTURES

SORA = FIXTURES / "sora"


def convert(table: str, body: bytes, extra: list[int] | None) -> list[dict[str, object]]:
    head = EntryHeader(
        table=table,
        source="sora_log",
        stream=table,
        kind=table,
        received_us=1,
        records=body.count(b"\n") + 1,
        extra=extra,
    )
    converter = Converter(default_registry())
    try:
        return converter.convert("r", 1, [Entry(head, body, 0)])[table].to_pylist()
    finally:
        converter.close()


def test_rtc_stats_lines_become_typed_rows() -> None:
    body = (SORA / "rtc_stats.jsonl").read_bytes().strip()
    # a metric from a future browser: no column takes it, so it must be kept in extra
    body = body.replace(b'"rtc_data":{', b'"rtc_data":{"futureMetric":5,', 1)
    records = split_lines(body, RTC_STATS)
    rows = {r["stats_type"]: r for r in convert("rtc_stats", records.body, records.extra)}
    inbound, pair, outbound = rows["inbound-rtp"], rows["candidate-pair"], rows["outbound-rtp"]
    assert inbound["connection_id"] == "FJB24N65RS1D3CRXMVC4Y32FCM"
    assert inbound["track_identifier"] == "JXW8K4FG6H7TZ2F63T38ZHSJQG-audio"
    assert inbound["media_kind"] == "audio" and inbound["ssrc"] == 3802399598
    assert inbound["jitter_buffer_delay"] == 9.6  # from 9.59999999999999964473e+00
    # rtc_timestamp 1.75342361607418408203e+12 ms, exactly
    assert inbound["rtc_timestamp"] == dt.datetime(2025, 7, 25, 6, 6, 56, 74184, tzinfo=dt.UTC)
    assert inbound["time"] == dt.datetime(2025, 7, 25, 6, 6, 56, 93265, tzinfo=dt.UTC)
    assert pair["available_outgoing_bitrate"] == 500000 and pair["nominated"] is True
    assert outbound["quality_limitation_reason"] == "none"
    assert msgspec.json.decode(outbound["quality_limitation_durations"])["none"] == 0.128
    assert inbound["playout_id"] == "AP"
    assert records.extra == [0]  # only that line needed an extra
    assert msgspec.json.decode(inbound["extra"]) == {"rtc_data": {"futureMetric": 5}}
    assert pair["extra"] is None
    ids = {r["record_id"] for r in rows.values()}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)


def test_the_same_stats_line_has_the_same_record_id_from_any_source() -> None:
    line = (SORA / "rtc_stats.jsonl").read_bytes().splitlines()[0]
    (a,) = convert("rtc_stats", line, None)
    head = EntryHeader(
        table="rtc_stats", source="s3", stream="other", kind="k", received_us=99, records=1
    )
    converter = Converter(default_registry())
    (b,) = converter.convert("z", 9, [Entry(head, line, 3)])["rtc_stats"].to_pylist()
    assert a["record_id"] == b["record_id"]


def test_a_stats_line_without_its_identity_is_refused_at_the_edge_and_by_the_writer() -> None:
    """As `rtclake import` skips it: an edge refuses it (HTTP, webhooks, the log tail all
    check lines with Table.checker), and the writer leaves out one a spool holds from an
    older rtclake, storing the others of its batch."""
    first, second, third = (SORA / "rtc_stats.jsonl").read_bytes().splitlines()
    orphan = second.replace(b'"connection_id":"JXW8K4FG6H7TZ2F63T38ZHSJQG",', b"")
    assert b'"connection_id"' not in orphan
    with pytest.raises(InputError) as refused:
        split_lines(b"\n".join([first, orphan, third]), RTC_STATS)
    assert refused.value.to_dict() == {
        "error": "invalid_record",
        "message": "line 2: no connection_id: the table's identity needs it",
        "line": 2,
    }
    with capture_logs() as logged:
        rows = convert("rtc_stats", b"\n".join([first, orphan, third]), None)
    assert [r["connection_id"] for r in rows] == [
        "FJB24N65RS1D3CRXMVC4Y32FCM",
        "JXW8K4FG6H7TZ2F63T38ZHSJQG",
    ]
    (skipped,) = [e for e in logged if e["event"] == "writer: bad lines skipped"]
    assert skipped["lines"] == 1 and skipped["first"] == identity_gap(["connection_id"])


def test_session_webhook_lines_become_session_rows() -> None:
    body = (SORA / "session_webhook.jsonl").read_bytes().strip()
    records = split_lines(body, SESSIONS)
    created, updated = convert("sessions", records.body, records.extra)
    assert (created["event"], updated["event"]) == ("session.created", "session.updated")
    assert created["session_id"] == "MQ8P784NRN54NE6FCQG5JS9WDR"
    assert created["created_at"] == dt.datetime(2026, 4, 17, 2, 36, 51, 897686, tzinfo=dt.UTC)
    assert updated["total_connections"] == 3
    assert len(msgspec.json.decode(updated["connections"])) == 3


def test_a_batch_whose_every_line_needs_an_extra_fits_in_memory() -> None:
    base = (SORA / "rtc_stats.jsonl").read_bytes().splitlines()
    lines = [
        base[i % 3].replace(b'"rtc_timestamp"', b'"rtc_n":%d,"rtc_timestamp"' % i)
        for i in range(9000)
    ]  # 12 MB; every line has a key no column takes
    records = split_lines(b"\n".join(lines), RTC_STATS)
    assert len(records.extra or []) == 9000
    rows = convert("rtc_stats", records.body, records.extra)
    assert len(rows) == 9000
    assert msgspec.json.decode(rows[-1]["extra"])["rtc_n"] in range(9000)
