"""Import of Sora log files and of Kohaku's S3 layout."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import io
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from prometheus_client import CollectorRegistry

from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.errors import SinkError
from rtclake.importer import BlockReader, Importer, ImportStats
from rtclake.integrations.sora.kohaku_s3_import import S3Importer, S3Location, s3_client
from rtclake.integrations.sora.logs import table_for
from rtclake.lake.catalog import LEDGER
from rtclake.lake.maintenance import Maintenance, MaintenanceConfig
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.records import record_id
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import EntryHeader, Spool
from rtclake.testing import MemorySink
from rtclake.writer import Writer
from tests.conftest import FIXTURES, ROOT
from tests.test_rtc_rates import sample

SORA = FIXTURES / "sora"


def stats_line(conn: str, n: int) -> str:
    """A small rtc_stats line; (conn, n) makes it unique."""
    ts = 1.7e12 + n * 1000
    return json.dumps(
        {
            "connection_id": conn,
            "id": f"R{n}",
            "timestamp": "2026-11-20T00:00:00.000000Z",
            "type": "connection.rtc",
            "channel_id": "c",
            "session_id": "s",
            "role": "sendonly",
            "rtc_id": f"OT{n}",
            "rtc_timestamp": ts,
            "rtc_type": "outbound-rtp",
            "rtc_data": {
                "id": f"OT{n}",
                "type": "outbound-rtp",
                "timestamp": ts,
                "kind": "video",
                "bytesSent": n * 100,
                "framesPerSecond": 30,
            },
        }
    )


def make_importer(tmp_path: Path, group_rows: int = 120_000) -> Importer:
    tables = default_registry()
    return Importer(
        tables,
        Delivery([LakeSink(tmp_path / "lake", tables)], Metrics()),
        tmp_path / "import-state.json",
        node="test",
        table_for=table_for,
        block_bytes=4096,
        group_rows=group_rows,
    )


def count(tmp_path: Path, sql: str, dedup: bool = True) -> object:
    engine = QueryEngine(tmp_path / "lake", default_registry(), dedup=dedup)
    return engine.run(sql).rows()[0][0]


def test_import_fixture_files_plain_and_gzip(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl").write_bytes((SORA / "rtc_stats.jsonl").read_bytes())
    (logs / "session_webhook.jsonl.gz").write_bytes(
        gzip.compress((SORA / "session_webhook.jsonl").read_bytes())
    )
    (logs / "sora.jsonl").write_text('{"level": "info", "msg": "ignored"}\n')
    importer = make_importer(tmp_path)
    stats = importer.import_paths([logs])
    assert (stats.files, stats.skipped_files, stats.rows, stats.bad_lines) == (2, 1, 5, 0)
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 3
    assert count(tmp_path, "SELECT count(DISTINCT event) FROM sessions") == 2


def test_import_is_incremental_skips_bad_lines_and_keeps_misfits(tmp_path: Path) -> None:
    path = tmp_path / "rtc_stats.jsonl"
    lines = [stats_line("A", n) for n in range(200)]
    lines[50] = '{"broken": '
    lines[60] = lines[60].replace('"bytesSent": 6000', '"bytesSent": "lots"')
    path.write_text("\n".join(lines) + "\n")
    importer = make_importer(tmp_path)
    first = importer.import_paths([path])
    # The broken line is skipped; the line with a text where a number belongs is stored,
    # its column NULL and the value kept in extra.
    assert (first.rows, first.bad_lines) == (199, 1)
    misfit = "SELECT count(*) FROM rtc_stats WHERE bytes_sent IS NULL AND"
    misfit += " (extra->>'$.rtc_data.bytesSent') = 'lots'"
    assert count(tmp_path, misfit) == 1
    again = importer.import_paths([path])
    assert again.rows == 0  # nothing new
    with path.open("a") as fh:
        fh.write("\n".join(stats_line("A", n) for n in range(200, 250)) + "\n")
    third = make_importer(tmp_path).import_paths([path])  # a new process: state from disk
    assert third.rows == 50
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 249
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats", dedup=False) == 249


def test_a_line_whose_time_breaks_the_rule_is_a_bad_line_named_by_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rtc_stats.jsonl"
    lines = [stats_line("A", n) for n in range(10)]
    good_time = '"timestamp": "2026-11-20T00:00:00.000000Z"'
    lines[3] = lines[3].replace(good_time, '"timestamp": "2026-11-20T00:00:00.000000"')
    lines[7] = lines[7].replace(good_time, '"timestamp": "2026-11-20T00:00:00.000\\u0000Z"')
    path.write_text("\n".join(lines) + "\n")
    with structlog.testing.capture_logs() as logs:
        stats = make_importer(tmp_path).import_paths([path])
    # Never stored under the arrival time instead: left out, and logged with its place.
    assert (stats.rows, stats.bad_lines) == (8, 2)
    bad = [(e["file"], e["line"]) for e in logs if e["event"] == "import: bad line skipped"]
    assert bad == [(str(path), 4), (str(path), 8)]
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats WHERE year(time) <> 2026") == 0


def test_a_damaged_gzip_file_is_named_its_whole_lines_before_kept_and_the_others_imported(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "session_webhook.jsonl").write_bytes((SORA / "session_webhook.jsonl").read_bytes())
    (logs / "rtc_stats.jsonl.1.gz").write_bytes(b"notgzip")  # not even a gzip header
    # an upload cut short: the first ~half of a gzip stream of 4,000 distinct lines
    whole = gzip.compress(("\n".join(stats_line("A", n) for n in range(4000)) + "\n").encode())
    cut = logs / "rtc_stats.jsonl.2.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    importer = make_importer(tmp_path)

    with structlog.testing.capture_logs() as logs_seen:
        stats = importer.import_paths([logs])

    assert stats.files == 1  # the webhook file
    assert len(stats.unreadable) == 2  # (the older copy first)
    assert str(cut) + ": not a valid gzip file" in stats.unreadable[0]
    assert str(logs / "rtc_stats.jsonl.1.gz") + ": not a valid gzip file" in stats.unreadable[1]
    named = [e["file"] for e in logs_seen if e["event"].startswith("import: file unreadable")]
    assert named == [str(cut), str(logs / "rtc_stats.jsonl.1.gz")]
    assert count(tmp_path, "SELECT count(DISTINCT event) FROM sessions") == 2
    kept = count(tmp_path, "SELECT count(*) FROM rtc_stats")
    assert kept == whole_lines(cut.read_bytes())  # every whole line before the damage
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats WHERE bytes_sent IS NULL") == 0
    # again: nothing stored twice, and the damage reported again
    again = make_importer(tmp_path).import_paths([logs])
    assert (again.rows, len(again.unreadable)) == (0, 2)
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == kept
    # the upload completed (the same file, whole): the rest of it is imported, once
    cut.write_bytes(whole)
    rest = make_importer(tmp_path).import_paths([cut])
    assert rest.unreadable == []
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 4000


def whole_lines(data: bytes) -> int:
    """The whole lines zlib inflates from a gzip stream cut short."""
    return zlib.decompressobj(31).decompress(data).count(b"\n")


def test_a_small_damaged_gzip_file_keeps_its_whole_lines_too(tmp_path: Path) -> None:
    # (read in one go, ISA-L had given nothing of it: 0 rows, "its lines before the
    # damage were imported")
    whole = gzip.compress(("\n".join(stats_line("S", n) for n in range(300)) + "\n").encode())
    cut = tmp_path / "rtc_stats.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 8 // 10])
    stats = make_importer(tmp_path).import_paths([cut])
    assert len(stats.unreadable) == 1
    assert 200 < whole_lines(cut.read_bytes()) == stats.rows
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == stats.rows


def test_import_names_an_unreadable_file_and_exits_1_after_importing_the_others(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl").write_bytes((SORA / "rtc_stats.jsonl").read_bytes())
    (logs / "rtc_stats.jsonl.1.gz").write_bytes(b"notgzip")
    env = {"RTCLAKE_DATA_DIR": str(tmp_path / "data"), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-m", "rtclake", "import", str(logs)], env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert "imported 3 rows from 1 files" in out.stdout and "1 files unreadable" in out.stdout
    assert f"error: {logs / 'rtc_stats.jsonl.1.gz'}: not a valid gzip file" in out.stderr
    assert "Traceback" not in out.stderr


def test_blocks_keep_lines_whole_across_buffers_gzip_members_and_read_only_streams() -> None:
    lines = [f'{{"n": {i}, "pad": "{"x" * (i * 37 % 9000)}"}}'.encode() for i in range(300)]
    text = b"\n".join(lines) + b"\n"
    # Two gzip members back to back, as an appended log file or a retried upload makes.
    half = len(text) // 2
    cut = text.index(b"\n", half) + 1
    packed = gzip.compress(text[:cut]) + gzip.compress(text[cut:])

    class ReadOnly:  # a stream with read() only (some HTTP bodies)
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    for stream, gz in ((io.BytesIO(text), False), (ReadOnly(packed), True)):
        reader = BlockReader(4096, buffers=2)  # lines up to 9 KB: longer than a buffer
        got = []
        for offset, buf, length in reader.blocks(stream, gz):  # type: ignore[arg-type]
            assert offset == sum(len(part) for part in got)
            assert buf[length - 1 : length] == b"\n"
            got.append(bytes(buf[:length]))
            reader.release(buf)
        assert b"".join(got) == text


def test_blocks_are_stored_in_groups_and_a_failed_group_is_imported_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks go to the lake in groups of at least ``group_rows`` rows, one commit (one
    ledger row, ending at the group's last block) each; when a group fails, the
    checkpoint stays before it, and the next import stores the rest exactly once."""
    path = tmp_path / "rtc_stats.jsonl"
    path.write_text("\n".join(stats_line("G", n) for n in range(300)) + "\n")
    faults.arm("lake.before_commit", "eio", skip=2, times=6)  # the third group, every try
    monkeypatch.setattr("rtclake.delivery.time.sleep", lambda _seconds: None)  # no backoff
    with pytest.raises(SinkError):
        make_importer(tmp_path, group_rows=60).import_paths([path])
    done = json.loads((tmp_path / "import-state.json").read_text())["files"]
    offset = done[str(path.absolute())]["offset"]
    assert 0 < offset < path.stat().st_size
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 120  # two groups of 60+
    faults.disarm()
    stats = make_importer(tmp_path, group_rows=60).import_paths([path])
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 300
    assert count(tmp_path, "SELECT count(DISTINCT stats_id) FROM rtc_stats") == 300
    assert stats.rows == 300 - 120
    sink = LakeSink(tmp_path / "lake", default_registry())
    rows = sink._connection().execute(f"SELECT file_offset FROM lake.{LEDGER} ORDER BY seq")
    ledger = [offset for (offset,) in rows.fetchall()]
    sink.close()
    assert ledger[1] == offset and ledger[-1] == path.stat().st_size
    blocks = -(-path.stat().st_size // 4096)
    assert len(ledger) <= blocks // 4  # a group: at least 60 lines, four blocks or more


def test_a_file_imported_into_one_table_is_imported_whole_into_another(tmp_path: Path) -> None:
    """``rtclake import FILE --table X``, then the same file ``--table Y`` (the first table
    was a mistake): each table gets the whole file, and each import again reads nothing
    new. The second had read nothing, the file's checkpoint being at its end whatever the
    table ("imported 0 rows")."""
    path = tmp_path / "app.jsonl"
    path.write_text("\n".join(stats_line("T", n) for n in range(25)) + "\n")

    def imported(table: str) -> int:
        tables = default_registry()
        importer = Importer(
            tables,
            Delivery([LakeSink(tmp_path / "lake", tables)], Metrics()),
            tmp_path / "import-state.json",
            node="test",
            table_for=lambda _name: table,
            block_bytes=4096,
        )
        try:
            return importer.import_paths([path]).rows
        finally:
            importer.close()

    assert imported("telemetry") == 25
    assert imported("rtc_stats") == 25
    assert (imported("telemetry"), imported("rtc_stats")) == (0, 0)
    assert count(tmp_path, "SELECT count(*) FROM telemetry") == 25
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 25


def test_a_line_imported_twice_is_stored_once(tmp_path: Path) -> None:
    one = tmp_path / "a" / "rtc_stats.jsonl"
    two = tmp_path / "b" / "rtc_stats.jsonl"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("\n".join(stats_line("B", n) for n in range(10)) + "\n")
    make_importer(tmp_path).import_paths([one, two])
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 10


def test_kohaku_s3_layout_imports_incrementally(tmp_path: Path, s3_endpoint: str) -> None:
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **creds)
    raw.create_bucket(Bucket="logs")

    def put(key: str, lines: list[str]) -> None:
        raw.put_object(
            Bucket="logs", Key=key, Body=gzip.compress(("\n".join(lines) + "\n").encode())
        )

    # two hosts upload in the same second (same last-modified); host-b repeats a line
    put("kohaku/rtc_stats/2026/11/20/host-a-1.gz", [stats_line("H", n) for n in range(0, 5)])
    put("kohaku/rtc_stats/2026/11/20/host-b-2.gz", [stats_line("H", n) for n in range(4, 9)])
    put(
        "kohaku/session_webhook/2026/11/20/host-a-3.gz",
        (SORA / "session_webhook.jsonl").read_text().splitlines(),
    )
    put("kohaku/other/2026/11/20/x.gz", ["{}"])

    def run() -> ImportStats:
        importer = make_importer(tmp_path)
        client = s3_client(
            endpoint_url=s3_endpoint,
            access_key_id="test",
            secret_access_key="test",
            path_style=True,
        )
        return S3Importer(importer, client, S3Location.parse("s3://logs/kohaku")).run()

    first = run()
    assert (first.files, first.rows) == (3, 12)
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 9  # line 4 once
    assert count(tmp_path, "SELECT count(*) FROM sessions") == 2
    assert run().files == 0  # nothing new
    put("kohaku/rtc_stats/2026/11/21/host-a-4.gz", [stats_line("H", n) for n in range(9, 12)])
    third = run()
    assert (third.files, third.rows) == (1, 3)
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 12
    # a damaged object is named and left for a later run; the objects after it are read
    raw.put_object(Bucket="logs", Key="kohaku/rtc_stats/2026/11/21/host-b-5.gz", Body=b"nogz")
    put("kohaku/rtc_stats/2026/11/21/host-c-6.gz", [stats_line("H", n) for n in range(12, 14)])
    fourth = run()
    assert (fourth.files, fourth.rows) == (1, 2)
    assert fourth.unreadable == [
        "s3://logs/kohaku/rtc_stats/2026/11/21/host-b-5.gz: not a valid gzip file (Compressed"
        " file ended before the end-of-stream marker was reached); its lines before the damage"
        " were imported"
    ]
    assert len(run().unreadable) == 1  # not marked as read: a fixed upload is read later
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 14
    # an upload cut short: its whole lines are imported (the object fetched again)
    lines = gzip.compress(("\n".join(stats_line("H", n) for n in range(14, 200)) + "\n").encode())
    cut = lines[: len(lines) * 8 // 10]
    raw.put_object(Bucket="logs", Key="kohaku/rtc_stats/2026/11/21/host-d-7.gz", Body=cut)
    fifth = run()
    assert fifth.rows == whole_lines(cut) > 100 and len(fifth.unreadable) == 2
    assert count(tmp_path, "SELECT count(*) FROM rtc_stats") == 14 + fifth.rows


# -- what is derived from a log (rtc_rates, connection_reports, connection_spans) needs its
# lines in order, each once


def report_lines(first: int, last: int) -> list[str]:
    """Reports ``first`` to ``last - 1`` of one connection, 10 s apart, as Sora logs them:
    8 objects each, 5 of them streams that have rates (audio and video received and sent,
    the candidate pair), each rate other in every interval."""
    lines = []
    for i in range(first, last):
        t, more = 10 * i, i * i
        lines += [
            sample("K1", "inbound-rtp", "IA", t, "audio", bytesReceived=4_000 * i + 30 * more,
                   packetsReceived=50 * i + more, packetsLost=i * (i % 3), jitter=0.001 * i),
            sample("K1", "inbound-rtp", "IV", t, "video", bytesReceived=90_000 * i + 500 * more,
                   packetsReceived=100 * i, packetsLost=0, framesPerSecond=20 + i % 7,
                   frameWidth=640, frameHeight=360, freezeCount=i // 4),
            sample("K1", "outbound-rtp", "OA", t, "audio", bytesSent=3_000 * i + 20 * more,
                   packetsSent=50 * i),
            sample("K1", "outbound-rtp", "OV", t, "video", bytesSent=80_000 * i + 700 * more,
                   packetsSent=100 * i, framesPerSecond=30 - i % 5),
            sample("K1", "candidate-pair", "CP", t, bytesSent=100_000 * i + more,
                   bytesReceived=100_000 * i, currentRoundTripTime=0.05 + 0.001 * i,
                   nominated=True, state="succeeded", localCandidateId="L1",
                   remoteCandidateId="R1"),
            sample("K1", "transport", "T1", t, selectedCandidatePairId="CP",
                   iceState="connected", dtlsState="connected"),
            sample("K1", "local-candidate", "L1", t, candidateType="host", protocol="udp"),
            sample("K1", "remote-candidate", "R1", t, candidateType="srflx", protocol="udp"),
        ]  # fmt: skip
    return [json.dumps(line) for line in lines]


def text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


VIEWS = (
    "SELECT * EXCLUDE (received_at, source, stream) FROM rtc_rates ORDER BY stats_id, time",
    "SELECT * FROM connection_quality ORDER BY time",
    "SELECT * FROM connection_transport ORDER BY time",
)


def views(lake: Path) -> list[list[list[Any]]]:
    engine = QueryEngine(lake, default_registry())
    try:
        return [engine.run(sql).rows() for sql in VIEWS]
    finally:
        engine.close()


@pytest.fixture
def in_order(tmp_path: Path) -> list[list[list[Any]]]:
    """The views of reports 0-29 of report_lines imported from one file, in order."""
    (tmp_path / "in-order").mkdir()
    log = tmp_path / "in-order" / "rtc_stats.jsonl"
    log.write_bytes(text(report_lines(0, 30)))
    importer = make_importer(tmp_path / "in-order")
    importer.import_paths([log])
    importer.close()
    return views(tmp_path / "in-order" / "lake")


def assert_derived_whole(lake: Path, in_order: list[list[list[Any]]]) -> None:
    """The lake holds reports 0-29 of report_lines, each derived row once: 29 rates per
    stream, 30 reports (29 scored: the first has no rates), one span of activity from the
    first report to the last; and the views say what they say of the lines in order."""
    engine = QueryEngine(lake, default_registry())

    def rows(sql: str) -> list[list[Any]]:
        return engine.run(sql).rows()  # type: ignore[no-any-return]

    assert rows("SELECT count(*), count(DISTINCT record_id) FROM rtc_stats") == [[240, 240]]
    assert rows("SELECT count(*), count(DISTINCT record_id) FROM rtc_rates") == [[145, 145]]
    per_stream = rows("SELECT stats_id, count(*) FROM rtc_rates GROUP BY 1 ORDER BY 1")
    assert per_stream == [[s, 29] for s in ("CP", "IA", "IV", "OA", "OV")]
    # (blocks of 4 KiB split most reports: a part 1 of those, whole, is what the views read)
    reports = "SELECT count(DISTINCT record_id) = count(*), count(DISTINCT time)"
    assert rows(reports + " FROM connection_reports") == [[True, 30]]
    assert rows("SELECT count(*) FROM connection_quality") == [[29]]
    assert rows("SELECT count(*) FROM connection_transport") == [[30]]
    first, last = rows("SELECT min(time), max(time) FROM rtc_stats")[0]
    spans = rows(
        "SELECT min(time), max(last_time), sum(reports), count(*) FILTER (WHERE starts),"
        " count(*) FILTER (WHERE opens) FROM connection_spans"
    )
    assert spans == [[first, last, 30, 1, 1]]
    engine.close()
    assert views(lake) == in_order


def test_a_logs_rotated_copies_are_read_oldest_first_however_they_are_named(
    tmp_path: Path, in_order: list[list[list[Any]]]
) -> None:
    """The files of one log are read oldest first, rotated copies by their number, then
    the log itself: read in name order (the log first), each older file's reports had
    been dropped as late and its streams' first samples had no rate."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl.2.gz").write_bytes(gzip.compress(text(report_lines(0, 10))))
    (logs / "rtc_stats.jsonl.1").write_bytes(text(report_lines(10, 20)))
    (logs / "rtc_stats.jsonl").write_bytes(text(report_lines(20, 30)))
    importer = make_importer(tmp_path / "folder")
    importer.import_paths([logs])
    importer.close()
    assert_derived_whole(tmp_path / "folder" / "lake", in_order)
    # named newest first, as a shell's rtc_stats.jsonl* names them
    named = [
        str(logs / n) for n in ("rtc_stats.jsonl", "rtc_stats.jsonl.1", "rtc_stats.jsonl.2.gz")
    ]
    data = tmp_path / "named"
    env = {"RTCLAKE_DATA_DIR": str(data), "PATH": "", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "rtclake", "import", *named], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "imported 240 rows from 3 files" in out.stdout
    assert_derived_whole(data / "lake", in_order)


def upload(s3_endpoint: str, bucket: str, objects: list[tuple[str, list[str]]]) -> None:
    """Fluent Bit's uploads of ``objects`` (UUID, lines) of one host and day to a new
    bucket, one a second (S3's last-modified time has a second's precision)."""
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
    raw.create_bucket(Bucket=bucket)
    for uuid, lines in objects:
        key = f"kohaku/rtc_stats/2026/12/05/sora-host1-{uuid}.gz"
        raw.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text(lines)))
        time.sleep(1.1)


def s3_import(tmp_path: Path, s3_endpoint: str, bucket: str) -> ImportStats:
    client = s3_client(endpoint_url=s3_endpoint, access_key_id="test",
                       secret_access_key="test", path_style=True)  # fmt: skip
    importer = make_importer(tmp_path)
    try:
        return S3Importer(importer, client, S3Location.parse(f"s3://{bucket}/kohaku")).run()
    finally:
        importer.close()


def test_kohaku_s3_objects_are_read_in_the_order_they_were_written(
    tmp_path: Path, s3_endpoint: str, in_order: list[list[list[Any]]]
) -> None:
    """Fluent Bit's $UUID keys are random: the objects are read by their last-modified
    time (S3 gives it to the second), then key; in key order, the newer objects' reports
    had dropped the older ones' as late."""
    objects = [("c3d4", report_lines(0, 10)), ("a1b2", report_lines(10, 20)),
               ("b2c3", report_lines(20, 30))]  # fmt: skip
    upload(s3_endpoint, "written", objects)  # key order: the second, the third, the first
    stats = s3_import(tmp_path, s3_endpoint, "written")
    assert (stats.files, stats.rows) == (3, 240)
    assert_derived_whole(tmp_path / "lake", in_order)


def test_lines_read_twice_derive_each_row_once(
    tmp_path: Path, s3_endpoint: str, in_order: list[list[list[Any]]]
) -> None:
    """Lines that come twice (overlapping rotated copies, a re-upload, a second import)
    are stored once in rtc_stats, and what is derived from them once too: a rate of a
    sample rated before, or a report stored before, has the record id of the row stored,
    and the lake's repeat check leaves it out; the rates of repeated samples had been
    stored twice, and a connection's latest report read again once more, a part higher."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl.1").write_bytes(text(report_lines(0, 15)))
    (logs / "rtc_stats.jsonl").write_bytes(text(report_lines(10, 30)))
    with structlog.testing.capture_logs() as logged:
        make_importer(tmp_path / "folder").import_paths([logs])
    assert_derived_whole(tmp_path / "folder" / "lake", in_order)
    left_out: dict[str, int] = {}
    for e in logged:
        if e["event"] == "lake: rows the lake held already were left out":
            left_out[e["table"]] = left_out.get(e["table"], 0) + e["rows"]
    # reports 10-14 again: their 40 objects, and their rates made again (report 10's
    # samples follow none); of the reports made again, the parts stored already
    assert (left_out["rtc_stats"], left_out["rtc_rates"]) == (40, 20)
    assert left_out["connection_reports"] >= 4

    # two uploads, then the first's last 20 and the second's first 20 lines again
    lines = report_lines(0, 30)
    upload(s3_endpoint, "twice", [("a", lines[:120]), ("b", lines[120:]), ("c", lines[100:140])])
    s3_import(tmp_path / "s3", s3_endpoint, "twice")
    assert_derived_whole(tmp_path / "s3" / "lake", in_order)

    # a second import (the derivations start afresh) of lines the first one stored
    again = tmp_path / "again"
    for name, first, last in (("a", 0, 15), ("b", 10, 30)):
        (again / name).mkdir(parents=True)
        (again / name / "rtc_stats.jsonl").write_bytes(text(report_lines(first, last)))
        importer = make_importer(again)
        importer.import_paths([again / name])
        importer.close()
    engine = QueryEngine(again / "lake", default_registry())
    assert engine.run("SELECT count(*), count(DISTINCT record_id) FROM rtc_rates").rows() == [
        [145, 145]
    ]
    reports = "SELECT count(DISTINCT record_id) = count(*), count(DISTINCT time)"
    assert engine.run(reports + " FROM connection_reports").rows() == [[True, 30]]
    engine.close()
    assert views(again / "lake") == in_order
    # (connection_spans is derived per run: the second one counts reports 10-14 again
    # until maintenance folds them; test_spans_of_lines_read_twice_start_a_connection_once)


def test_a_connection_imported_file_by_file_starts_once(tmp_path: Path) -> None:
    """A day's uploads imported one by one, each by a run of its own (its derivation's
    state empty): the connection's reports in the second file continue the span of the
    first's, stored before (10 s after its last report); after a silence longer than
    GAP_SECONDS, the third file's open a new span, and none starts the connection again.
    The second file's first row had started the connection again until maintenance."""
    for name, first, last in (("1", 0, 15), ("2", 15, 30), ("3", 50, 60)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rtc_stats.jsonl").write_bytes(text(report_lines(first, last)))
        importer = make_importer(tmp_path)
        importer.import_paths([tmp_path / name])
        importer.close()
    engine = QueryEngine(tmp_path / "lake", default_registry())
    try:
        rows = engine.run(
            "SELECT epoch(time - TIMESTAMPTZ '2026-11-20 00:00:00+00')::INT, reports, opens,"
            " starts FROM connection_spans ORDER BY ALL"
        ).rows()
    finally:
        engine.close()
    assert rows == [[0, 15, True, True], [150, 15, False, False], [500, 10, True, False]]


def test_spans_of_lines_read_twice_start_a_connection_once(tmp_path: Path) -> None:
    """connection_spans' state is each run's own. A run that reads a connection from the
    same first report as an earlier one derives the row stored already (its record id is
    the connection and that report), which the lake's repeat check leaves out; a run that
    begins later in the connection (a second import of an overlapping file) continues the
    span the lake holds (the lake sink's ``Rollup.continues``): it neither opens nor
    starts. Maintenance folds the day's rows into one span that starts once. Each run's
    row had stayed, and the connection had started twice after maintenance too."""
    sql = (
        "SELECT epoch(time - TIMESTAMPTZ '2026-11-20 00:00:00+00')::INT,"
        " epoch(last_time - TIMESTAMPTZ '2026-11-20 00:00:00+00')::INT, reports, opens,"
        " starts FROM connection_spans ORDER BY ALL"
    )

    def spans() -> list[list[Any]]:
        engine = QueryEngine(tmp_path / "lake", default_registry())
        try:
            return engine.run(sql).rows()
        finally:
            engine.close()

    for name, first, last in (("a", 0, 15), ("a-copy", 0, 15), ("b", 10, 30)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rtc_stats.jsonl").write_bytes(text(report_lines(first, last)))
        importer = make_importer(tmp_path)
        importer.import_paths([tmp_path / name])
        importer.close()
        if name == "a-copy":  # the same lines again: the same row, left out
            assert spans() == [[0, 140, 15, True, True]]
    # reports 10-29 by a run that knew nothing of 0-14: they continue the stored span
    assert spans() == [[0, 140, 15, True, True], [100, 290, 20, False, False]]
    sink = LakeSink(tmp_path / "lake", default_registry())
    maintenance = Maintenance(
        sink.catalog, MaintenanceConfig(), node="n", metrics=Metrics(CollectorRegistry())
    )
    report = maintenance.run(now=dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC))
    sink.close()
    assert report is not None and report.ok, report
    # one span from the first report to the last; reports 10-14 counted by both runs
    assert spans() == [[0, 290, 35, True, True]]


def test_lines_read_out_of_order_store_each_report_whole(
    tmp_path: Path, in_order: list[list[list[Any]]]
) -> None:
    """Lines older than what was read before (uploads that share a last-modified second,
    a log copied out of order) are new: each report is stored whole, continued across
    blocks as in order; a rate needs the sample before it, so the first sample of each
    stretch read has none. Such reports had been dropped as late."""
    log = tmp_path / "out-of-order" / "rtc_stats.jsonl"
    log.parent.mkdir()
    log.write_bytes(text(report_lines(20, 30) + report_lines(0, 10) + report_lines(10, 20)))
    importer = make_importer(log.parent)  # blocks of 4 KiB: most reports split
    importer.import_paths([log])
    importer.close()
    rates, quality, transport = views(log.parent / "lake")
    assert transport == in_order[2]  # every report, each whole
    # report 20 came first: its samples follow none (report 0 has none in any order)
    at_20 = "2026-11-20 00:03:20+00:00"
    assert rates == [r for r in in_order[0] if str(r[1]) != at_20]  # (r[0]: the record id)
    assert len(rates) == 5 * 28
    assert quality == [r for r in in_order[1] if str(r[0]) != at_20]


def test_import_and_query_commands(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl").write_bytes((SORA / "rtc_stats.jsonl").read_bytes())
    env = {"RTCLAKE_DATA_DIR": str(tmp_path / "data"), "PATH": ""}
    rtclake = [sys.executable, "-m", "rtclake"]
    out = subprocess.run([*rtclake, "import", str(logs)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "imported 3 rows from 1 files" in out.stdout
    sql = "SELECT stats_type, bytes_sent FROM rtc_stats ORDER BY stats_type"
    out = subprocess.run(
        [*rtclake, "query", sql, "--format", "csv"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [  # RFC 4180: quotes only where a cell needs them
        "stats_type,bytes_sent",
        "candidate-pair,1313",
        "inbound-rtp,",
        "outbound-rtp,0",
    ]


def test_rtclake_run_imports_new_s3_objects_on_an_interval(
    s3_endpoint: str, make_server: Any
) -> None:
    raw = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                       aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
    raw.create_bucket(Bucket="live")
    server = make_server(
        RTCLAKE_SOURCES__KOHAKU__TYPE="kohaku_s3",
        RTCLAKE_SOURCES__KOHAKU__URL="s3://live/fluentbit",
        RTCLAKE_SOURCES__KOHAKU__ENDPOINT_URL=s3_endpoint,
        RTCLAKE_SOURCES__KOHAKU__ACCESS_KEY_ID="k",
        RTCLAKE_SOURCES__KOHAKU__SECRET_ACCESS_KEY="s",
        RTCLAKE_SOURCES__KOHAKU__PATH_STYLE="true",
        RTCLAKE_SOURCES__KOHAKU__INTERVAL="0.5",
    )
    body = gzip.compress(("\n".join(stats_line("L", n) for n in range(7)) + "\n").encode())
    raw.put_object(Bucket="live", Key="fluentbit/rtc_stats/2026/11/20/h-1.gz", Body=body)
    assert server.wait_rows("SELECT count(*) FROM rtc_stats", 7) == 7


class RefusingSink(MemorySink):
    """Refuses every batch for its data (a value it cannot take), as a sink that makes the
    writer set a segment aside."""

    def write(self, batch: Batch) -> None:
        raise OverflowError("date value out of range")


def quarantined_segment(spool_dir: Path, sinks: list[Sink], body: bytes) -> tuple[Path, Any]:
    """One entry of telemetry records through a writer whose sinks refuse it: the segment
    it set aside in ``spool/quarantine/`` and the writer's log event saying so."""

    async def main() -> None:
        spool = Spool(spool_dir, max_bytes=1 << 20, segment_max_bytes=1 << 20,
                      segment_max_records=100, flush_interval=60)  # fmt: skip
        await spool.start()
        metrics = Metrics()
        delivery = Delivery(sinks, metrics)
        writer = Writer(spool, delivery, default_registry(), metrics, node="n",
                        retry_initial=0.01, retry_max=0.02)  # fmt: skip
        await writer.start()
        lines = body.count(b"\n") + 1
        head = EntryHeader(table="telemetry", source="t", stream="s", kind="telemetry",
                           received_us=1_800_000_000_000_000, records=lines)  # fmt: skip
        await spool.append(head, body)
        assert await writer.drain(10)
        await spool.close()
        await writer.stop()
        delivery.close()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
    (segment,) = (spool_dir / "quarantine").glob("*.wal")
    (said,) = [e for e in logs if e["event"].startswith("writer: segment quarantined")]
    return segment, said


def test_a_quarantined_segment_is_stored_by_the_command_the_writer_names_once(
    tmp_path: Path,
) -> None:
    """``rtclake import`` of a segment the writer set aside stores its records with the
    ids the writer gives them; importing it again, even after the import state is lost or
    from a copy, stores nothing twice."""
    data = tmp_path / "data"
    timed = b'{"device_id":"d2","time":"2026-01-01T00:00:00Z"}'
    body = b'{"device_id":"d1","v":1}\n' + timed
    segment, said = quarantined_segment(data / "spool", [RefusingSink("lake")], body)
    assert said["command"] == f"rtclake import {segment}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    env["RTCLAKE_DATA_DIR"] = str(data)

    def rtclake_import(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rtclake", "import", str(path)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def stored() -> list[list[Any]]:
        engine = QueryEngine(data / "lake", default_registry(), dedup=False)
        return engine.run("SELECT device_id, record_id FROM telemetry ORDER BY 1").rows()

    assert "imported 2 rows from 1 files" in rtclake_import(segment).stdout
    run, seq = segment.stem.rsplit("-", 1)
    expected = [
        ["d1", record_id("t", "s", f"{run}:{int(seq)}:0:1")],  # its place in the spool
        ["d2", record_id("t", "s", timed.decode())],  # its own time: its text
    ]
    assert stored() == expected
    assert "imported 0 rows from 1 files" in rtclake_import(segment).stdout
    (data / "import-state.json").unlink()
    assert rtclake_import(segment).returncode == 0  # the lake's ledger holds it
    copy = tmp_path / segment.name
    copy.write_bytes(segment.read_bytes())
    assert rtclake_import(copy).returncode == 0  # another file: the lake finds its record ids
    assert stored() == expected
    # the name gives the ids of records without a time: a segment renamed is refused
    renamed = tmp_path / "renamed.wal"
    renamed.write_bytes(segment.read_bytes())
    out = rtclake_import(renamed)
    assert out.returncode == 1 and "not named as a spool segment" in out.stderr


def test_a_quarantined_segment_skips_the_sinks_that_stored_it(tmp_path: Path) -> None:
    """The sinks that confirmed a segment before another refused it are named beside it
    in quarantine; its import delivers it to the others only."""
    other = MemorySink("other")
    segment, _ = quarantined_segment(
        tmp_path / "spool", [other, RefusingSink("lake")], b'{"device_id":"d1"}'
    )
    assert len(other.batches) == 1
    assert segment.with_suffix(".acks").read_text().split() == ["other"]
    later = MemorySink("other")
    tables = default_registry()
    importer = Importer(
        tables,
        Delivery([LakeSink(tmp_path / "lake", tables), later], Metrics()),
        tmp_path / "import-state.json",
        node="test",
        table_for=table_for,
    )
    try:
        stats = importer.import_paths([segment.parent])  # the folder: .wal and .acks
    finally:
        importer.close()
    assert (stats.files, stats.skipped_files, stats.rows) == (1, 0, 1)
    assert later.batches == {}
    assert count(tmp_path, "SELECT device_id FROM telemetry") == "d1"
