"""The spool: durable appends with group commit, sealing, replay, torn tails, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtclake.errors import PayloadTooLarge, SpoolFull
from rtclake.spool import EntryHeader, Spool, read_entries


def header(n: int = 1) -> EntryHeader:
    return EntryHeader(
        table="telemetry", source="t", stream="s", kind="telemetry", received_us=1, records=n
    )


def make(path: Path, **kw: float) -> Spool:
    opts = dict(
        max_bytes=1 << 20, segment_max_bytes=1 << 16, segment_max_records=1000, flush_interval=60.0
    )
    opts.update(kw)
    return Spool(path, **opts)  # type: ignore[arg-type]


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    async def main() -> int:
        spool = make(tmp_path)
        syncs: list[float] = []
        spool.on_sync = syncs.append
        await spool.start()
        await asyncio.gather(*(spool.append(header(), b'{"i":%d}' % i) for i in range(200)))
        await spool.close()
        return len(syncs)

    syncs = asyncio.run(main())
    assert 1 <= syncs < 200  # group commit: far fewer fsyncs than appends


def test_segment_is_cut_by_record_count_and_replayed_after_restart(tmp_path: Path) -> None:
    async def write() -> list[int]:
        spool = make(tmp_path, segment_max_records=10)
        await spool.start()
        for i in range(25):
            await spool.append(header(), b'{"i":%d}' % i)
        sealed = [(await spool.next_sealed()).seq for _ in range(2)]
        await spool.close()
        return sealed

    assert asyncio.run(write()) == [0, 1]

    async def reopen() -> list[int]:
        spool = make(tmp_path)
        await spool.start()
        segs = [await spool.next_sealed() for _ in range(3)]
        total = sum(len(Spool.read(s)) for s in segs)
        for seg in segs:
            spool.remove(seg)
        assert spool.used_bytes == 0
        await spool.close()
        return [total, *(s.seq for s in segs)]

    assert asyncio.run(reopen()) == [25, 0, 1, 2]


def test_torn_tail_is_cut_on_start(tmp_path: Path) -> None:
    async def write() -> None:
        spool = make(tmp_path)
        await spool.start()
        await spool.append(header(), b'{"a":1}')
        await spool.append(header(), b'{"a":2}')
        await spool.close()

    asyncio.run(write())
    (wal,) = tmp_path.glob("*.wal")
    data = wal.read_bytes()
    wal.write_bytes(data[:-3])  # a crash in the middle of the second write

    async def reopen() -> list[bytes]:
        spool = make(tmp_path)
        await spool.start()
        seg = await spool.next_sealed()
        bodies = [e.body for e in Spool.read(seg)]
        await spool.close()
        return bodies

    assert asyncio.run(reopen()) == [b'{"a":1}']
    entries, end = read_entries(wal)
    assert len(entries) == 1 and end == wal.stat().st_size


def test_full_spool_refuses_with_retry_after(tmp_path: Path) -> None:
    async def main() -> None:
        spool = make(tmp_path, max_bytes=400)
        await spool.start()
        await spool.append(header(), b"x" * 150)
        with pytest.raises(SpoolFull) as info:
            await spool.append(header(), b"x" * 200)
        assert info.value.retry_after >= 1
        assert info.value.status == 503
        await spool.close()

    asyncio.run(main())


def test_entry_larger_than_the_whole_spool_is_too_large_not_full(tmp_path: Path) -> None:
    async def main() -> None:
        spool = make(tmp_path, max_bytes=300)
        await spool.start()  # empty: no retry could ever make room for it
        with pytest.raises(PayloadTooLarge) as info:
            await spool.append(header(), b"x" * 400)
        assert info.value.status == 413 and "spool.max_bytes" in info.value.message
        await spool.close()

    asyncio.run(main())


def test_acks_are_remembered_across_restart(tmp_path: Path) -> None:
    async def main() -> set[str]:
        spool = make(tmp_path)
        await spool.start()
        await spool.append(header(), b'{"a":1}')
        spool.cut()
        seg = await spool.next_sealed()
        spool.ack(seg, "lake")
        await spool.close()
        again = make(tmp_path)
        await again.start()
        seg = await again.next_sealed()
        acked = Spool.acked_sinks(seg)
        await again.close()
        return acked

    assert asyncio.run(main()) == {"lake"}


def test_a_cut_segment_waiting_for_its_fsync_still_counts(tmp_path: Path) -> None:
    """Between the cut of a segment and its seal (after its last fsync) it is neither open
    nor queued for the writer: /healthz must not show an empty spool then (a test waiting
    for the spool to drain read it too early), nor may the spool's room grow."""

    async def main() -> tuple[int, int, int, int]:
        spool = make(tmp_path)
        await spool.start()
        await spool.append(header(), b'{"i": 1}')
        before = (spool.used_bytes, spool.segment_count)
        spool.cut()  # retired; its seal waits for the sync loop, which has not run yet
        during = (spool.used_bytes, spool.segment_count)
        await spool.close()
        return (*before, *during)

    used, count, used_cut, count_cut = asyncio.run(main())
    assert used > 0 and count == 1
    assert (used_cut, count_cut) == (used, count)
