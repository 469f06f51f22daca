"""Fault class: a sink that fails for a while, then recovers.

Records acknowledged during the outage stay in the spool and reach the lake once the sink
works again, each exactly once; ingest goes on answering 200 meanwhile.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP, post, stored_counts


def test_sink_failing_for_a_while_then_recovering_stores_everything_once(
    make_server: Any, tmp_path: Path
) -> None:
    server: Server = make_server(
        tmp_path / "data",
        RTCLAKE_FAULTS="lake.write=eio*8",
        RTCLAKE_WRITER__RETRY_INITIAL="0.05",
        RTCLAKE_WRITER__RETRY_MAX="0.2",
        RTCLAKE_SPOOL__FLUSH_INTERVAL="0.2",
        **NO_DEDUP,
    )
    seq = 0
    for _ in range(20):  # several segments arrive while the sink fails
        body = b"\n".join(b'{"seq": %d}' % i for i in range(seq, seq + 25))
        assert post(server, "outage", body).json() == {"accepted": 25}
        seq += 25
        assert server.health().status_code == 200  # the spool itself is fine
    wait_for(lambda: sum(stored_counts(server, "outage").values()) >= seq, 30)
    assert stored_counts(server, "outage") == Counter(range(seq))
    assert server.metric("rtclake_sink_errors_total", sink="lake") == 8
    assert wait_for(lambda: server.health().json()["spool_segments"] == 0, 10)
