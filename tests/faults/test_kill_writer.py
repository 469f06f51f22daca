"""Fault class: the process dies (SIGKILL) at each step of the writer's cycle.

The writer reads a sealed segment, converts it, writes it to the lake (a temporary file,
then a rename), records the sink's confirmation, then deletes the segment. A crash after
any step must lose no acknowledged record and store none twice: a replayed batch
overwrites its own file, and a confirmed sink is not written again. Counted raw (the
views' de-duplication off), by each record's ``seq``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP, post, stored_counts

STEPS = [
    "writer.after_read",
    "writer.after_convert",
    "lake.write",
    "lake.before_rename",
    "writer.after_sink_write",
    "spool.ack",
    "writer.after_ack",
    "writer.after_remove",
]


def batch(first: int, n: int) -> bytes:
    # Half the records carry a time, half do not (their record id is their spool place).
    return b"\n".join(
        orjson.dumps({"seq": i, **({"time": 1_795_132_800 + i} if i % 2 else {})})
        for i in range(first, first + n)
    )


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_writer_step_loses_nothing_and_stores_nothing_twice(
    make_server: Any, tmp_path: Path, step: str
) -> None:
    data = tmp_path / "data"
    # The second batch the writer takes kills it, so one batch is fully stored before
    # (a batch is two lake files: records with a time of their own and without).
    skip = 2 if step.startswith("lake.") else 1
    server: Server = make_server(data, RTCLAKE_FAULTS=f"{step}=kill@{skip}", **NO_DEDUP)
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert wait_for(lambda: sum(stored_counts(server, "k").values()) == 100, 20)
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert server.proc is not None
    server.proc.wait(20)  # the fault point killed it
    assert server.proc.returncode == -9

    again: Server = make_server(data, **NO_DEDUP)  # replays what the spool still holds
    assert post(again, "k", batch(200, 100)).json() == {"accepted": 100}
    wait_for(lambda: sum(stored_counts(again, "k").values()) >= 300, 30)
    assert stored_counts(again, "k") == Counter(range(300))
    assert not list((data / "lake").rglob(".*.tmp"))  # the replay renamed its own file
