"""Rates derived by the writer survive kill -9: a batch killed between its sink write and
its confirmation is replayed after the restart and derived again from the state it was
first derived from, so every interval has exactly one rate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from rtclake.testing import wait_for
from tests.conftest import Server

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
STATS_WEBHOOK = {"sora-stats-webhook-type": "connection.rtc"}


def report(first: int, n: int) -> dict[str, Any]:
    """One Sora statistics webhook carrying ``n`` samples of one inbound audio stream, 5 s
    apart from sample ``first``: 20,000 bytes (32 kbit/s) per interval."""
    stats = []
    for i in range(first, first + n):
        ms = (T0 + dt.timedelta(seconds=5 * i)).timestamp() * 1000
        stats.append({"id": "IA", "type": "inbound-rtp", "kind": "audio", "timestamp": ms,
                      "bytesReceived": 20_000 * i, "packetsReceived": 250 * i,
                      "packetsLost": 0})  # fmt: skip
    return {
        "type": "connection.rtc", "id": f"R-{first}", "timestamp": T0.isoformat(),
        "connection_id": "k", "session_id": "s", "channel_id": "c", "role": "recvonly",
        "stats": stats,
    }  # fmt: skip


def post(server: Server, first: int, n: int) -> None:
    answer = httpx.post(f"{server.url}/sora/webhooks/stats", json=report(first, n),
                        headers=STATS_WEBHOOK, timeout=30)  # fmt: skip
    assert answer.status_code == 200, answer.text


def rates(server: Server) -> tuple[int, int, float, float]:
    row = server.query(
        "SELECT count(*), count(DISTINCT time), min(bitrate_bps), max(bitrate_bps) FROM rtc_rates"
    )["rows"][0]
    return row[0], row[1], row[2], row[3]


def test_a_batch_killed_before_its_confirmation_is_derived_again_from_the_same_state(
    make_server: Any,
) -> None:
    first: Server = make_server(RTCLAKE_FAULTS="writer.after_sink_write=kill@1")
    post(first, 0, 10)  # one entry, one batch: nine intervals
    assert wait_for(lambda: rates(first)[0] == 9, 20), rates(first)
    assert (first.data_dir / "derived" / "rtc_rates.arrow").exists()
    post(first, 10, 10)  # written, then killed before the spool records the confirmation
    assert first.proc is not None
    first.proc.wait(20)
    assert first.proc.returncode == -9

    again: Server = make_server(first.data_dir)  # replays the second batch
    post(again, 20, 10)
    wait_for(lambda: rates(again)[0] >= 29, 30)
    count, distinct, low, high = rates(again)
    assert count == distinct == 29  # every interval once: none lost, none twice
    assert low == high == 8 * 20_000 / 5
