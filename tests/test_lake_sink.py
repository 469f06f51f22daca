"""The lake sink: Parquet files under TABLE/date=YYYY-MM-DD/NODE-RUN-SEGMENT.parquet,
written under a temporary name and renamed; a replayed batch overwrites its own file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.lake.sink import LakeSink
from rtclake.sinks.base import Batch
from tests.test_query import batch


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def lines(*days: int) -> bytes:
    return b"\n".join(
        b'{"time": "2026-11-%02dT23:59:59Z", "device_id": "d%d"}' % (day, i)
        for i, day in enumerate(days)
    )


def files(lake: Path) -> list[str]:
    return sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*") if p.is_file())


def test_one_file_per_table_and_date_named_after_the_batch(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.start()
    sink.write(batch(7, lines(1, 2, 2)))
    assert files(tmp_path) == [
        "telemetry/date=2026-11-01/node-sp-000000000007.parquet",
        "telemetry/date=2026-11-02/node-sp-000000000007.parquet",
    ]
    table = pq.read_table(tmp_path / "telemetry/date=2026-11-02/node-sp-000000000007.parquet")
    assert sorted(table["device_id"].to_pylist()) == ["d1", "d2"]


def test_a_replayed_batch_overwrites_its_own_file(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(7, lines(1, 1)))
    sink.write(batch(7, lines(1, 1)))
    (only,) = files(tmp_path)
    assert pq.read_table(tmp_path / only).num_rows == 2


def test_a_failed_write_leaves_no_half_file_and_no_final_file(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, default_registry())
    faults.arm("lake.before_rename", "enospc", times=1)
    with pytest.raises(OSError, match="No space left"):
        sink.write(batch(7, lines(1)))
    assert files(tmp_path) == []  # the temporary file was removed: it held the space
    sink.write(batch(7, lines(1)))  # the retry
    assert files(tmp_path) == ["telemetry/date=2026-11-01/node-sp-000000000007.parquet"]


def test_files_prepared_off_the_writer_thread_are_the_files_it_writes(tmp_path: Path) -> None:
    """An import encodes a block's Parquet on its converting threads (``prepare``): the
    files written from that are byte for byte those ``write`` makes on its own, one per
    date."""
    made = batch(7, lines(1, 2, 2))
    plain = LakeSink(tmp_path / "plain", default_registry())
    plain.write(made)
    early = LakeSink(tmp_path / "early", default_registry())
    prepared = {("lake", name): early.prepare(name, rows) for name, rows in made.tables.items()}
    assert [date for date, _ in prepared[("lake", "telemetry")]] == ["2026-11-01", "2026-11-02"]
    early.write(Batch(made.node, made.run, made.segment, made.tables, prepared))
    assert files(tmp_path / "plain") == files(tmp_path / "early")
    for name in files(tmp_path / "plain"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "early" / name).read_bytes()
