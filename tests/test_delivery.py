"""Delivery: the writer and imports take batches to the sinks through one component, so
both keep the sink contract (started once, called from one thread, per-sink confirmation,
retry) and store every record once."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from rtclake.catalog import default_registry
from rtclake.delivery import Delivery
from rtclake.errors import SinkError
from rtclake.importer import Importer
from rtclake.integrations.sora.logs import table_for
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Rejected
from rtclake.spool import EntryHeader, Spool
from rtclake.testing import MemorySink
from rtclake.writer import Writer
from tests.test_importer import stats_line
from tests.test_query import batch


class FlakySink(MemorySink):
    """A memory sink whose first ``failures`` writes fail (an outage). Notes the thread of
    every call and how often it was started."""

    def __init__(self, name: str = "flaky", failures: int = 2) -> None:
        super().__init__(name)
        self.failures = failures
        self.threads: set[int] = set()
        self.starts = 0

    def start(self) -> None:
        self.threads.add(threading.get_ident())
        self.starts += 1

    def write(self, batch: Batch) -> None:
        self.threads.add(threading.get_ident())
        if self.failures:
            self.failures -= 1
            raise OSError("destination unavailable")
        super().write(batch)

    def close(self) -> None:
        self.threads.add(threading.get_ident())


def test_the_writer_delivers_every_record_once_through_a_sink_failing_twice(
    tmp_path: Path,
) -> None:
    sink = FlakySink()

    async def run() -> None:
        spool = Spool(
            tmp_path / "spool",
            max_bytes=1 << 20,
            segment_max_bytes=1 << 20,
            segment_max_records=10,
            flush_interval=60,
        )
        await spool.start()
        metrics = Metrics()
        delivery = Delivery([sink], metrics)
        writer = Writer(spool, delivery, default_registry(), metrics, node="n", retry_initial=0.01)
        await writer.start()
        head = EntryHeader(
            table="telemetry", source="t", stream="s", kind="telemetry", received_us=1, records=1
        )
        for i in range(30):
            await spool.append(head, b'{"seq": %d, "time": 1795132800}' % i)
        assert await writer.drain(10)
        await spool.close()
        await writer.stop()
        delivery.close()

    asyncio.run(run())
    extras = sink.column("telemetry", "extra")
    assert Counter(extras) == Counter(f'{{"seq":{i}}}' for i in range(30))
    assert sink.starts == 1 and len(sink.threads) == 1


def test_an_import_delivers_every_record_once_through_a_sink_failing_twice(
    tmp_path: Path,
) -> None:
    sink = FlakySink()
    path = tmp_path / "rtc_stats.jsonl"
    path.write_text("\n".join(stats_line("A", n) for n in range(100)) + "\n")
    delivery = Delivery([sink], Metrics())
    tables = default_registry()
    importer = Importer(
        tables, delivery, tmp_path / "state.json", node="n", table_for=table_for, block_bytes=4096
    )
    try:
        stats = importer.import_paths([path])
        assert importer.import_paths([path]).rows == 0  # nothing new; started only once
    finally:
        importer.close()
        delivery.close()
    assert stats.rows == 100
    ids = sink.column("rtc_stats", "stats_id")
    assert Counter(ids) == Counter(f"OT{n}" for n in range(100))
    assert sink.starts == 1 and len(sink.threads) == 1


def test_a_sink_confirmed_is_not_written_again_when_another_fails(tmp_path: Path) -> None:
    good, bad = FlakySink("good", failures=0), FlakySink("bad", failures=1)
    delivery = Delivery([good, bad], Metrics())
    batch = Batch("n", "r", 1, {"telemetry": pa.table({"x": [1]})})
    confirmed: set[str] = set()
    first = delivery.deliver(batch, confirmed, confirmed.add)
    assert not first.done and confirmed == {"good"} and not first.data_error
    good.batches.clear()
    assert delivery.deliver(batch, confirmed, confirmed.add).done
    assert not good.batches and list(bad.batches) == [batch.name]
    delivery.close()


def test_an_import_gives_up_with_a_clear_error_when_a_sink_stays_down(tmp_path: Path) -> None:
    delivery = Delivery([FlakySink(failures=100)], Metrics())
    batch = Batch("n", "r", 1, {"telemetry": pa.table({"x": [1]})})
    with pytest.raises(SinkError, match="flaky did not take batch"):
        delivery.deliver_retrying(batch, attempts=3, retry_initial=0.01)
    delivery.close()


def test_sink_names_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        Delivery([FlakySink("a"), FlakySink("a")], Metrics())


class SlowStartSink(FlakySink):
    """A sink whose start takes until the test lets it finish (a catalog being attached),
    noting whether a batch was converted meanwhile."""

    def __init__(self) -> None:
        super().__init__("slow", failures=0)
        self.release = threading.Event()
        self.parsed_meanwhile = threading.Event()
        self.started = False
        self.written_before_started = False
        self.waited_in_vain = False

    def start(self) -> None:
        super().start()
        self.waited_in_vain = not self.release.wait(5)
        self.started = True

    def write(self, batch: Batch) -> None:
        self.written_before_started |= not self.started
        super().write(batch)


def test_an_import_converts_while_a_sink_starts_and_writes_only_after(tmp_path: Path) -> None:
    sink = SlowStartSink()
    path = tmp_path / "rtc_stats.jsonl"
    path.write_text("\n".join(stats_line("A", n) for n in range(100)) + "\n")
    delivery = Delivery([sink], Metrics())
    importer = Importer(
        default_registry(), delivery, tmp_path / "state.json", node="n", table_for=table_for,
        block_bytes=4096,
    )  # fmt: skip
    parse = importer._parse

    def parse_and_note(*args: object) -> object:
        done = parse(*args)  # type: ignore[arg-type]
        sink.parsed_meanwhile.set()
        return done

    importer._parse = parse_and_note  # type: ignore[method-assign]
    # the sink's start waits until a block was parsed: the import did not wait for it
    letting_go = threading.Thread(
        target=lambda: sink.release.set() if sink.parsed_meanwhile.wait(10) else None
    )
    letting_go.start()
    try:
        stats = importer.import_paths([path])
    finally:
        letting_go.join()
        importer.close()
        delivery.close()
    assert not sink.waited_in_vain, "the import waited for the sink's start"
    assert sink.parsed_meanwhile.is_set() and sink.starts == 1
    assert not sink.written_before_started and stats.rows == 100
    assert Counter(sink.column("rtc_stats", "stats_id")) == Counter(f"OT{n}" for n in range(100))


class RefusingStartSink(MemorySink):
    """A sink whose destination refuses its first ``refusals`` starts, quoting its URL."""

    def __init__(self, refusals: int) -> None:
        super().__init__("lake")
        self.refusals = refusals

    def start(self) -> None:
        if self.refusals:
            self.refusals -= 1
            raise OSError('Unable to connect to Postgres at "postgres://u:hunter2@db/lake"')


def test_a_failing_sinks_state_is_told_without_its_password_then_cleared() -> None:
    metrics = Metrics()
    delivery = Delivery([RefusingStartSink(refusals=1)], metrics)
    try:
        delivery.start()  # refused: logged, counted, and the state says since when and why
        state = delivery.health()["lake"]
        assert state["ok"] is False and state["since"], state
        assert "postgres://u:***@db/lake" in state["error"] and "hunter2" not in state["error"]
        assert metrics.registry.get_sample_value("rtclake_sink_up", {"sink": "lake"}) == 0
        delivery.start()  # it starts now: the state is cleared
        assert delivery.health() == {"lake": {"ok": True}}
        assert metrics.registry.get_sample_value("rtclake_sink_up", {"sink": "lake"}) == 1
    finally:
        delivery.close()


class AnsweringSink(MemorySink):
    """A sink whose writes answer, in turn, as ``answers`` say: raise that exception, or
    (None) store the batch."""

    def __init__(self, name: str, answers: list[Exception | None]) -> None:
        super().__init__(name)
        self.answers = answers

    def write(self, batch: Batch) -> None:
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer
        super().write(batch)


def test_records_given_up_on_an_outage_leave_the_sink_down_a_refused_record_does_not() -> None:
    metrics = Metrics()
    lake = MemorySink("lake")
    lake.takes_dead_letters = True
    reason = "gave up after 5 s of outage: nats: cannot connect: Connect call failed"
    gave_up = Rejected({"telemetry": [(0, reason)]}, outage=reason)
    refused = Rejected({"telemetry": [(0, "nats: the message is over the server's max_payload")]})
    nats = AnsweringSink("nats", [gave_up, gave_up, refused, None])
    delivery = Delivery([lake, nats], metrics)

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"sink": "nats"})

    line = b'{"time": "2026-11-20T00:00:00Z", "device_id": "d", "temp": 1}'
    try:
        delivery.start()
        for segment in (1, 2):  # the server is out: each batch goes to dead letters
            assert delivery.deliver(batch(segment, line), set(), lambda name: None).done
            state = delivery.health()["nats"]
            assert state["ok"] is False and state["error"] == reason
            assert sample("rtclake_sink_up") == 0 and sample("rtclake_sink_errors_total") == segment
        assert len(lake.column("dead_letters", "reason")) == 2
        # a record the server refuses: it answers, so the sink works again
        assert delivery.deliver(batch(3, line), set(), lambda name: None).done
        assert delivery.health()["nats"] == {"ok": True} and sample("rtclake_sink_up") == 1
        assert delivery.deliver(batch(4, line), set(), lambda name: None).done
        assert (
            delivery.health()["nats"] == {"ok": True} and sample("rtclake_sink_errors_total") == 2
        )
        assert len(lake.column("dead_letters", "reason")) == 3
    finally:
        delivery.close()


def test_a_dead_letters_record_holds_extra_and_the_json_columns_as_json_not_text() -> None:
    lake = MemorySink("lake")
    lake.takes_dead_letters = True
    refused = Rejected({"telemetry": [(0, "refused"), (1, "refused")]})
    delivery = Delivery([lake, AnsweringSink("s", [refused])], Metrics(), default_registry())
    body = (b'{"time": "2026-11-20T00:00:00Z", "device_id": "d", "i": 1, "env": {"hum": 40}}\n'
            b'{"time": "2026-11-20T00:00:01Z", "device_id": "e", "big": 1e400,'
            b' "_metadata": {"site": "x"}}')  # fmt: skip
    try:
        assert delivery.deliver(batch(1, body), set(), lambda name: None).done
    finally:
        delivery.close()
    first, second = lake.column("dead_letters", "record")
    assert orjson.loads(first)["extra"] == {"i": 1, "env": {"hum": 40}}
    assert '"extra":{"big":1e400}' in second  # as written: no float holds it
    assert '"metadata":{"site":"x"}' in second  # a JSON column of the table
