"""Import of Sora log files and of Kohaku's S3 layout."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog

from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.errors import SinkError
from rtclake.importer import BlockReader, Importer, ImportStats
from rtclake.integrations.sora.kohaku_s3_import import S3Importer, S3Location, s3_client
from rtclake.integrations.sora.logs import table_for
from rtclake.lake.catalog import LEDGER
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.records import record_id
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import EntryHeader, Spool
from rtclake.testing import MemorySink
from rtclake.writer import Writer
from tests.conftest import FIXTURES

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
    assert len(stats.unreadable) == 2
    assert str(logs / "rtc_stats.jsonl.1.gz") + ": not a valid gzip file" in stats.unreadable[0]
    assert str(cut) + ": not a valid gzip file" in stats.unreadable[1]
    named = [e["file"] for e in logs_seen if e["event"].startswith("import: file unreadable")]
    assert named == [str(logs / "rtc_stats.jsonl.1.gz"), str(cut)]
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
