"""Fault class: a spool write torn half-way (a full or failing disk), then more appends,
then a restart. Every acknowledged entry must survive, at run time and on recovery."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtclake import faults
from rtclake.errors import DiskFull, SpoolIOError
from rtclake.spool import EntryHeader, Spool, frame, read_entries


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


def header() -> EntryHeader:
    return EntryHeader(
        table="telemetry", source="t", stream="s", kind="telemetry", received_us=1, records=1
    )


def make(path: Path) -> Spool:
    return Spool(
        path,
        max_bytes=1 << 24,
        segment_max_bytes=1 << 22,
        segment_max_records=100_000,
        flush_interval=3600.0,
    )


async def append_all(spool: Spool, first: int, n: int) -> None:
    for i in range(first, first + n):
        await spool.append(header(), b'{"i":%d}' % i)


def stored(path: Path) -> list[bytes]:
    return [e.body for wal in sorted(path.glob("*.wal")) for e in read_entries(wal)[0]]


def recovered(path: Path) -> list[bytes]:
    """The bodies a spool started on ``path`` recovers into its first sealed segment."""

    async def reopen() -> list[bytes]:
        spool = make(path)
        await spool.start()
        seg = await spool.next_sealed()
        bodies = [e.body for e in Spool.read(seg)]
        await spool.close()
        return bodies

    return asyncio.run(reopen())


def expected(*ranges: range) -> list[bytes]:
    return [b'{"i":%d}' % i for r in ranges for i in r]


@pytest.mark.parametrize(("action", "error"), [("torn", DiskFull), ("eio", SpoolIOError)])
def test_failed_write_leaves_the_segment_as_it_was(
    tmp_path: Path, action: str, error: type[Exception]
) -> None:
    async def main() -> list[bytes]:
        spool = make(tmp_path)
        await spool.start()
        await append_all(spool, 0, 10)
        faults.arm("spool.write", action, times=1)
        with pytest.raises(error):
            await spool.append(header(), b'{"big":"' + b"x" * 2000 + b'"}')
        assert spool.failure is not None and not spool.health()["writable"]
        await append_all(spool, 10, 10)  # acknowledged after the tear
        assert spool.failure is None  # the next durable write ends the episode
        entries = [e.body for seg in [spool._active] if seg for e in Spool.read(seg)]
        await spool.close()
        return entries

    at_run_time = asyncio.run(main())
    assert at_run_time == expected(range(20))

    assert recovered(tmp_path) == expected(range(20))


def test_a_tear_that_cannot_be_cut_retires_the_segment_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_truncate(fd: int, size: int) -> None:
        raise OSError(5, "Input/output error")

    async def main() -> None:
        spool = make(tmp_path)
        await spool.start()
        await append_all(spool, 0, 5)
        faults.arm("spool.write", "torn", times=1)
        with monkeypatch.context() as patch:
            patch.setattr(os, "ftruncate", no_truncate)
            with pytest.raises(DiskFull):
                await spool.append(header(), b'{"big":"' + b"y" * 4000 + b'"}')
        await append_all(spool, 5, 5)  # goes to a new segment
        await spool.close()

    asyncio.run(main())
    assert len(list(tmp_path.glob("*.wal"))) == 2
    assert stored(tmp_path) == expected(range(10))


def test_reader_steps_over_torn_bytes_inside_a_segment(tmp_path: Path) -> None:
    wal = tmp_path / "run-000000000000.wal"
    good = [frame(header(), b'{"i":%d}' % i) for i in range(3)]
    torn = frame(header(), b'{"torn":"' + b"z" * 500 + b'"}')[:300]
    wal.write_bytes(good[0] + torn + good[1] + torn[:7] + good[2] + torn)
    entries, end = read_entries(wal)
    assert [e.body for e in entries] == expected(range(3))
    assert [e.index for e in entries] == [0, 1, 2]
    assert end == wal.stat().st_size - len(torn)  # only the tail is cut on recovery

    assert recovered(tmp_path) == expected(range(3))


def test_failed_fsync_is_not_acknowledged_and_later_writes_are(tmp_path: Path) -> None:
    async def main() -> None:
        spool = make(tmp_path)
        await spool.start()
        await append_all(spool, 0, 3)
        faults.arm("spool.fsync", "eio", times=1)
        with pytest.raises(SpoolIOError):
            await spool.append(header(), b'{"i":3}')
        await append_all(spool, 4, 3)
        sealed = await asyncio.wait_for(spool.next_sealed(), 10)  # retried, then sealed
        assert [e.body for e in Spool.read(sealed)][:3] == expected(range(3))
        await spool.close()

    asyncio.run(main())
    bodies = stored(tmp_path)
    # Unacknowledged {"i":3} may or may not be there; every acknowledged entry is.
    assert set(expected(range(3), range(4, 7))) <= set(bodies)
