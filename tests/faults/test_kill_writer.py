"""Fault class: the process dies (SIGKILL) at each step of the writer's cycle.

The writer reads a sealed segment, converts it, writes it to the lake (through the
catalog: data files, then one commit with the batch's ledger row; in the Hive layout: a
temporary file, then a rename), records the sink's confirmation, then deletes the
segment. A crash after any step must lose no acknowledged record and store none twice: a
replayed batch the ledger holds is skipped (Hive: overwrites its own file), and a
confirmed sink is not written again. Counted raw (the catalog's views do not
de-duplicate; the Hive views with their de-duplication off), by each record's ``seq``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP, post, stored_counts

WRITER = [
    "writer.after_read",
    "writer.after_convert",
    "writer.after_sink_write",
    "spool.ack",
    "writer.after_ack",
    "writer.after_remove",
]
STEPS = [
    *((step, "catalog") for step in WRITER),
    ("lake.write", "catalog"),
    ("lake.before_commit", "catalog"),
    ("lake.write", "hive"),
    ("lake.before_rename", "hive"),
    ("writer.after_sink_write", "hive"),
]


def batch(first: int, n: int) -> bytes:
    # Half the records carry a time, half do not (their record id is their spool place).
    return b"\n".join(
        orjson.dumps({"seq": i, **({"time": 1_795_132_800 + i} if i % 2 else {})})
        for i in range(first, first + n)
    )


@pytest.mark.parametrize(("step", "lake"), STEPS)
def test_kill_at_each_writer_step_loses_nothing_and_stores_nothing_twice(
    make_server: Any, tmp_path: Path, step: str, lake: str
) -> None:
    data = tmp_path / "data"
    # The second batch the writer takes kills it, so one batch is fully stored before
    # (in the Hive layout a batch is two lake files: records with a time of their own
    # and without).
    skip = 2 if step in ("lake.write", "lake.before_rename") else 1
    env = {**NO_DEDUP, **({"RTCLAKE_LAKE__CATALOG": "hive"} if lake == "hive" else {})}
    server: Server = make_server(data, RTCLAKE_FAULTS=f"{step}=kill@{skip}", **env)
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert wait_for(lambda: sum(stored_counts(server, "k").values()) == 100, 20)
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert server.proc is not None
    server.proc.wait(20)  # the fault point killed it
    assert server.proc.returncode == -9

    again: Server = make_server(data, **env)  # replays what the spool still holds
    assert post(again, "k", batch(200, 100)).json() == {"accepted": 100}
    wait_for(lambda: sum(stored_counts(again, "k").values()) >= 300, 30)
    assert stored_counts(again, "k") == Counter(range(300))
    assert not list((data / "lake").rglob(".*.tmp"))  # the replay renamed its own file


def test_a_crash_between_upload_and_commit_shows_nothing_of_the_batch(
    make_server: Any, tmp_path: Path
) -> None:
    """The data files of a batch are uploaded, the process dies before the commit: a
    reader sees none of its rows (the files are not in the catalog's snapshot), and the
    replay stores them once."""
    from rtclake.catalog import default_registry
    from rtclake.lake.query import QueryEngine

    data = tmp_path / "data"
    server: Server = make_server(data, RTCLAKE_FAULTS="lake.before_commit=kill@1")
    assert post(server, "k", batch(0, 100)).json() == {"accepted": 100}
    assert wait_for(lambda: sum(stored_counts(server, "k").values()) == 100, 20)
    assert post(server, "k", batch(100, 100)).json() == {"accepted": 100}
    assert server.proc is not None
    server.proc.wait(20)
    assert server.proc.returncode == -9

    reader = QueryEngine(data / "lake", default_registry())
    try:
        live = set(reader.lake_files(default_registry()["telemetry"]))
        on_disk = {str(p) for p in (data / "lake" / "main" / "telemetry").rglob("*.parquet")}
        assert live < on_disk  # the second batch's files were uploaded, and are not live
        seen = reader.run("SELECT count(*), max((extra->>'seq')::BIGINT) FROM telemetry")
        assert seen.rows() == [[100, 99]]
    finally:
        reader.close()

    again: Server = make_server(data)
    wait_for(lambda: sum(stored_counts(again, "k").values()) >= 200, 30)
    assert stored_counts(again, "k") == Counter(range(200))
