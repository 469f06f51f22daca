"""Fault class: the disk fills up under the spool, or under the lake.

The reproduction of issue 8: with a 20 MB data directory filled to 64 KiB free, 10 small
records are acknowledged, 100 records of 2 KB are refused (their write tears), space comes
back, 10 more are acknowledged: all 20 must be stored, at run time and after a restart.
The tmpfs variants need root (CI runs as root); the injected variants fail the write
through a fault point (:mod:`rtclake.faults`) and run everywhere.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP, fill, free_bytes, post, stored_counts

STREAM = "full"
REFUSING = "the disk refuses writes"  # the one log line of an episode
FAST_RETRY = {"RTCLAKE_WRITER__RETRY_INITIAL": "0.1", "RTCLAKE_WRITER__RETRY_MAX": "0.5"}


def small(seq: int) -> bytes:
    return b'{"seq": %d, "time": "2026-11-20T00:00:%02d.000001Z"}' % (seq, seq % 60)


BIG_BATCH = orjson.dumps([{"seq": 1000 + i, "pad": "p" * 2000} for i in range(100)])


def assert_refused_for_disk(response: Any) -> None:
    assert response.status_code == 507, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "disk_full", response.text
    assert int(response.headers["Retry-After"]) >= 1


def assert_stored_once(server: Server, seqs: range) -> None:
    wait_for(lambda: sum(stored_counts(server, STREAM).values()) >= len(seqs), 30)
    assert stored_counts(server, STREAM) == Counter(seqs)


@pytest.mark.parametrize("then", ["run_time", "restart"])
def test_full_disk_under_the_spool_keeps_every_acknowledged_record(
    make_server: Any, small_disk: Path, then: str
) -> None:
    flush = "3600" if then == "restart" else "1"  # restart: all 20 still in the spool
    server: Server = make_server(
        small_disk, RTCLAKE_SPOOL__FLUSH_INTERVAL=flush, **NO_DEDUP, **FAST_RETRY
    )
    filler = fill(small_disk, 64 * 1024)
    for seq in range(10):
        assert post(server, STREAM, small(seq)).status_code == 200
    for _ in range(3):
        assert_refused_for_disk(post(server, STREAM, BIG_BATCH))

    health = server.health()
    assert health.status_code == 503, health.text
    assert health.json()["writable"] is False and health.json()["reason"] == "disk_full"
    assert health.json()["disk_free_bytes"] < 256 * 1024
    assert server.metric("rtclake_spool_disk_free_bytes") < 256 * 1024
    assert server.metric("rtclake_spool_writable") == 0

    filler.unlink()
    assert wait_for(lambda: server.health().status_code == 200, 10), server.health().text
    for seq in range(10, 20):
        assert post(server, STREAM, small(seq)).status_code == 200
    assert server.log().count(REFUSING) == 1, server.log()  # once per episode

    if then == "restart":
        server.stop(signal.SIGKILL)
        server = make_server(small_disk, **NO_DEDUP)
    assert_stored_once(server, range(20))
    assert free_bytes(small_disk) > 19 * 1024 * 1024 - 2 * 1024 * 1024


@pytest.mark.parametrize("then", ["run_time", "restart"])
def test_torn_spool_write_keeps_every_acknowledged_record(
    make_server: Any, tmp_path: Path, then: str
) -> None:
    flush = "3600" if then == "restart" else "1"
    server: Server = make_server(
        tmp_path / "data",
        RTCLAKE_FAULTS="spool.write=torn*1@10",  # the 11th write tears
        RTCLAKE_SPOOL__FLUSH_INTERVAL=flush,
        **NO_DEDUP,
    )
    for seq in range(10):
        assert post(server, STREAM, small(seq)).status_code == 200
    assert_refused_for_disk(post(server, STREAM, BIG_BATCH))
    for seq in range(10, 20):
        assert post(server, STREAM, small(seq)).status_code == 200
    if then == "restart":
        server.stop(signal.SIGKILL)
        server = make_server(tmp_path / "data", **NO_DEDUP)
    assert_stored_once(server, range(20))


def test_io_error_answers_503_with_a_reason_not_500(make_server: Any, tmp_path: Path) -> None:
    server: Server = make_server(tmp_path / "data", RTCLAKE_FAULTS="spool.write=eio*3")
    for _ in range(3):
        refused = post(server, STREAM, small(0))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "spool_io_error" and "Retry-After" in refused.headers
    assert post(server, STREAM, small(1)).status_code == 200
    assert "Traceback" not in server.log()


def lake_disk_env(lake: Path) -> dict[str, str]:
    return {"RTCLAKE_LAKE__ROOT": str(lake), **NO_DEDUP, **FAST_RETRY}


def test_full_disk_under_the_lake_stores_everything_once_space_is_back(
    make_server: Any, tmp_path: Path, small_disk: Path
) -> None:
    server: Server = make_server(tmp_path / "data", **lake_disk_env(small_disk / "lake"))
    filler = fill(small_disk, 0)
    for seq in range(50):
        assert post(server, STREAM, small(seq)).status_code == 200  # the spool has room
    assert wait_for(lambda: server.metric("rtclake_sink_errors_total", sink="lake") >= 2, 20)
    assert not list(small_disk.rglob(".*.tmp"))  # no half file holds the space
    filler.unlink()
    assert_stored_once(server, range(50))


def test_lake_write_failures_are_retried_until_they_succeed(
    make_server: Any, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    server: Server = make_server(
        tmp_path / "data", RTCLAKE_FAULTS="lake.write=enospc*3", **lake_disk_env(lake)
    )
    for seq in range(50):
        assert post(server, STREAM, small(seq)).status_code == 200
    assert_stored_once(server, range(50))
    assert server.metric("rtclake_sink_errors_total", sink="lake") == 3
    assert not list(lake.rglob(".*.tmp"))
