"""The lake sink's repeat check (rtclake.lake.repeats): hashes of the keys kept from one
commit to the next, forgotten when anything else committed meanwhile, and only an exact
check ever leaving a row out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rtclake import faults
from rtclake.catalog import default_registry
from rtclake.lake import repeats
from rtclake.lake.catalog import ALIAS
from rtclake.lake.sink import LakeSink
from rtclake.sinks.base import Batch
from tests.test_lake_sink import count
from tests.test_query import batch


def reading(second: int, device: str) -> bytes:
    return b'{"time": "2026-11-01T10:00:%02dZ", "device_id": "%s"}' % (second, device.encode())


def readings(*pairs: tuple[int, str]) -> bytes:
    return b"\n".join(reading(s, d) for s, d in pairs)


class Spy:
    """A DuckDB connection that remembers the SQL it ran."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self.sql: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.sql.append(sql)
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def lake_reads(spy: Spy) -> list[str]:
    return [s for s in spy.sql if f'FROM {ALIAS}."telemetry"' in s]


def test_the_last_commits_rows_are_checked_from_memory_and_repeats_left_out(
    tmp_path: Path,
) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(1, readings((1, "a"), (2, "b"), (3, "c"))))
    spy = Spy(sink._connection())
    sink._con = spy
    # within the times the last commit covered: a repeat and a new record, nothing read
    sink.write(batch(2, readings((2, "b"), (2, "d"))))
    (read,) = lake_reads(spy)  # the exact check of the one row whose hash was met
    assert read.startswith('SELECT "record_id", time FROM')
    spy.sql.clear()
    # later times: nothing read (the first check read every row after its first time,
    # and what is kept covers them since), no exact check
    sink.write(batch(3, readings((2, "e"), (9, "f"))))
    assert lake_reads(spy) == []
    # earlier times than it keeps: those alone are read; a repeat there is left out
    sink.write(batch(4, readings((0, "z"), (1, "a"), (9, "g"))))
    (read,) = [r for r in lake_reads(spy) if "epoch_us(x.time)" in r]
    assert "x.time >= ?" in read and "x.time < ?" in read
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 8, 8]]


def test_a_check_with_nothing_kept_reads_the_batchs_times_when_later_ones_are_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first check reads every row after the batch's first time only when they are few:
    beyond OPEN_ROWS of them it reads the batch's times, and still finds the repeats."""
    monkeypatch.setattr(repeats, "OPEN_ROWS", 2)
    tables = default_registry()
    first = LakeSink(tmp_path, tables)
    first.write(batch(1, readings((1, "a"), (2, "b"), (30, "c"), (40, "d"))))
    first.close()
    sink = LakeSink(tmp_path, tables)  # a restart: nothing kept
    spy = Spy(sink._connection())
    sink._con = spy
    sink.write(batch(2, readings((1, "a"), (3, "e"))))
    hashes = [r for r in lake_reads(spy) if "epoch_us(x.time)" in r]
    assert len(hashes) == 2 and "x.time <= ?" in hashes[1]  # the open read, then the range
    sink.write(batch(3, readings((2, "b"), (30, "c"), (50, "f"))))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 6, 6]]


def test_another_writers_commit_meanwhile_is_read_not_missed(tmp_path: Path) -> None:
    """What the sink kept holds only while every commit since is its own: another node's
    record (or maintenance's rewrite) between two of its commits is read from the lake."""
    tables = default_registry()
    sink = LakeSink(tmp_path, tables)
    other = LakeSink(tmp_path, tables)
    sink.write(batch(1, readings((1, "a"), (5, "b"))))
    made = batch(1, readings((3, "c")))
    other.write(Batch("other-node", "other-run", 1, made.tables))
    sink.write(batch(2, readings((3, "c"), (4, "d"))))  # "c" is the other node's
    other.close()
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 4, 4]]


def test_a_hash_met_by_another_key_leaves_no_row_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash only nominates a row: with every key hashed alike, only the exact check's
    repeats are left out."""
    monkeypatch.setattr(repeats.RepeatCheck, "_hash_sql", lambda *_args, **_kw: "hash(0)")
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(1, readings((1, "a"), (2, "b"), (2, "b"))))
    sink.write(batch(2, readings((1, "a"), (2, "c"), (3, "d"))))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 4, 4]]


def test_beyond_what_is_kept_every_row_is_checked_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repeats, "SEEN_ROWS", 1)
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(1, readings((1, "a"), (2, "b"))))
    assert not sink._check._seen  # two rows: more than it keeps
    sink.write(batch(2, readings((1, "a"), (2, "b"), (2, "b"), (3, "c"))))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 3, 3]]


def test_a_failed_commit_forgets_what_was_kept(tmp_path: Path) -> None:
    sink = LakeSink(tmp_path, default_registry())
    sink.write(batch(1, readings((1, "a"))))
    assert sink._check._seen
    faults.arm("lake.before_commit", "eio", times=1)
    try:
        with pytest.raises(OSError):
            sink.write(batch(2, readings((1, "a"), (2, "b"))))
    finally:
        faults.disarm()
    assert not sink._check._seen
    sink.write(batch(2, readings((1, "a"), (2, "b"))))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 2, 2]]


def test_a_retry_timed_at_its_arrival_is_found_within_the_window_beside_timed_rows(
    tmp_path: Path,
) -> None:
    """Rows timed at their arrival go to the exact check (what is kept covers only the
    times of timed rows), which looks within the window."""
    from tests.test_lake_sink import _arrived

    sink = LakeSink(tmp_path, default_registry())
    noon = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    first = _arrived(batch(1, b'{"device_id": "untimed"}'), noon)
    sink.write(first)
    sink.write(batch(2, readings((1, "a"))))  # timed: what is kept covers 10:00:01
    retry = _arrived(Batch("node", "sp", 3, first.tables), noon + dt.timedelta(minutes=1))
    timed = batch(3, readings((1, "b"))).tables["telemetry"]
    both = [retry.tables["telemetry"], timed]
    rows = pa.concat_tables(both, promote_options="permissive")
    sink.write(Batch("node", "sp", 3, {"telemetry": rows}))
    sink.close()
    assert count(tmp_path) == [["2026-11-01", 3, 3]]


def test_the_kept_hashes_merge_into_one_sorted_run_with_their_times() -> None:
    """``_merged`` inserts the smaller sorted parts into the largest (no sort of the whole,
    no copies beside it): every hash stays paired with its row's time, in hash order,
    whatever the parts' sizes, overlaps and empty parts."""
    rng = np.random.default_rng(7)

    def part(n: int, top: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        hashes = np.sort(rng.integers(0, top, n).astype(np.uint64))
        return hashes, (hashes * np.uint64(3) + np.uint64(1)).astype(np.int64)  # a time per hash

    for sizes in [(5000, 300), (300, 5000, 0), (0, 0), (10, 7, 7000), (1, 1)]:
        parts = [part(n, 500) for n in sizes]
        seen = repeats._merged(4, 10, 20, parts)
        expected = np.sort(np.concatenate([h for h, _ in parts]))
        assert np.array_equal(seen.hashes, expected)
        assert np.array_equal(
            seen.times, (seen.hashes * np.uint64(3) + np.uint64(1)).astype(np.int64)
        )
        assert (seen.snapshot, seen.lo, seen.hi) == (4, 10, 20)
        assert seen.hashes.dtype == np.uint64 and seen.times.dtype == np.int64
