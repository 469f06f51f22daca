"""The writer: batches reach every sink; failures are retried; a poison batch is set aside."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink
from rtclake.spool import EntryHeader, Spool
from rtclake.testing import MemorySink
from rtclake.writer import Writer


class FailingSink(MemorySink):
    """A memory sink whose first ``failures`` writes fail (an outage); notes the segment
    of every write that succeeded, in order."""

    def __init__(self, name: str, failures: int = 0) -> None:
        super().__init__(name)
        self.failures = failures
        self.written: list[int] = []

    def write(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("destination unavailable")
        self.written.append(batch.segment)
        super().write(batch)


def header(table: str = "telemetry") -> EntryHeader:
    return EntryHeader(
        table=table, source="t", stream="s", kind="telemetry", received_us=1, records=1
    )


async def run(
    tmp_path: Path, sinks: list[Sink], entries: list[EntryHeader], *, backlog: bool = False
) -> Spool:
    """The entries through a writer into ``sinks``, one segment each; ``backlog``: all of
    them spooled before the writer starts (as after a restart, or when it fell behind)."""
    spool = Spool(
        tmp_path / "spool",
        max_bytes=1 << 20,
        segment_max_bytes=1 << 20,
        segment_max_records=1,
        flush_interval=60,
    )
    await spool.start()
    metrics = Metrics()
    delivery = Delivery(sinks, metrics)
    writer = Writer(
        spool, delivery, default_registry(), metrics, node="n", retry_initial=0.01, retry_max=0.02
    )
    if not backlog:
        await writer.start()
    for i, head in enumerate(entries):
        await spool.append(head, b'{"i": %d}' % i)
    if backlog:
        spool.cut()
        await spool.flush()
        await writer.start()
    assert await writer.drain(10)
    await spool.close()
    await writer.stop()
    delivery.close()
    return spool


def test_every_sink_gets_every_batch_once_it_recovers(tmp_path: Path) -> None:
    good, flaky = FailingSink("good"), FailingSink("flaky", failures=3)
    spool = asyncio.run(run(tmp_path, [good, flaky], [header(), header()]))
    assert flaky.written == [0, 1]
    assert good.written == [0, 1]  # not written again on flaky's retries
    assert spool.used_bytes == 0
    assert not list((tmp_path / "spool").glob("*.wal"))


def test_a_segment_that_cannot_be_converted_is_quarantined(tmp_path: Path) -> None:
    sink = FailingSink("lake")
    asyncio.run(run(tmp_path, [sink], [header("no_such_table"), header()]))
    assert sink.written == [1]  # the good batch after it still flows
    (quarantined,) = (tmp_path / "spool" / "quarantine").glob("*.wal")
    assert quarantined.name.endswith("-000000000000.wal")


class PickySink(FailingSink):
    """Refuses the data of batches holding ``{"i": 0}`` (a value it cannot take)."""

    def write(self, batch: Batch) -> None:
        if b'"i":0' in batch.tables["telemetry"]["extra"][0].as_py().encode():
            raise OverflowError("date value out of range")
        super().write(batch)


def test_a_batch_a_sink_refuses_for_its_data_is_quarantined_not_retried_forever(
    tmp_path: Path,
) -> None:
    sink = PickySink("lake")
    asyncio.run(run(tmp_path, [sink], [header(), header()]))
    assert sink.written == [1]  # the batch behind it is not held up
    (quarantined,) = (tmp_path / "spool" / "quarantine").glob("*.wal")
    assert quarantined.name.endswith("-000000000000.wal")


def test_an_outage_is_retried_however_long_it_lasts(tmp_path: Path) -> None:
    sink = FailingSink("lake", failures=12)  # OSError: more failures than the data limit
    asyncio.run(run(tmp_path, [sink], [header(), header()]))
    assert sink.written == [0, 1]
    assert not (tmp_path / "spool" / "quarantine").exists()


class GroupingSink(FailingSink):
    """Notes the segments of each group it is given (and stores them one by one)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.groups: list[list[int]] = []

    def write_group(self, batches: Sequence[Batch]) -> None:
        self.groups.append([batch.segment for batch in batches])
        super().write_group(batches)


def test_segments_that_wait_go_to_the_sinks_as_one_group(tmp_path: Path) -> None:
    grouping, plain = GroupingSink("lake"), FailingSink("other")
    spool = asyncio.run(run(tmp_path, [grouping, plain], [header()] * 5, backlog=True))
    assert grouping.groups == [[0, 1, 2, 3, 4]]
    assert grouping.written == plain.written == [0, 1, 2, 3, 4]
    assert sorted(grouping.column("telemetry", "extra")) == [f'{{"i":{i}}}' for i in range(5)]
    assert spool.used_bytes == 0


class PickyGroupingSink(GroupingSink, PickySink):
    pass


def test_a_group_holding_a_poisoned_batch_goes_one_at_a_time(tmp_path: Path) -> None:
    """The group fails for one batch's data: its batches go one by one, the poisoned one
    is set aside alone and the others are stored."""
    sink = PickyGroupingSink("lake")
    asyncio.run(run(tmp_path, [sink], [header()] * 4, backlog=True))
    assert sink.groups[0] == [0, 1, 2, 3]
    assert sorted(set(sink.written)) == [1, 2, 3]
    (quarantined,) = (tmp_path / "spool" / "quarantine").glob("*.wal")
    assert quarantined.name.endswith("-000000000000.wal")
