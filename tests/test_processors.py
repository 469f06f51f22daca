"""The processor chain: which processors see which records, records dropped and added,
and store-stage processing that gives a replayed segment the same entries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from rtclake.catalog import default_registry
from rtclake.config import RouteConfig
from rtclake.errors import ConfigError
from rtclake.intake import Intake, make_entry
from rtclake.metrics import Metrics
from rtclake.processors.base import Context, Processor, Record, RecordProcessor
from rtclake.processors.chain import Chain
from rtclake.router import Router
from rtclake.sources.base import split_lines
from rtclake.spool import Entry, Spool

TABLES = default_registry()


def records(body: bytes) -> list[Record]:
    return [msgspec.json.decode(line) for line in body.split(b"\n")] if body else []


def test_processors_see_only_their_tables_and_sources_in_their_stage() -> None:
    a = RecordProcessor(lambda r, c: None, name="a", tables=frozenset({"events"}))
    b = RecordProcessor(lambda r, c: None, name="b", sources=frozenset({"mqtt"}))
    c = RecordProcessor(lambda r, c: None, name="c", stage="intake")
    chain = Chain([a, b, c], Metrics())
    assert chain.active("store", "events", "http") == (a,)
    assert chain.active("store", "events", "mqtt") == (a, b)
    assert chain.active("store", "telemetry", "http") == ()
    assert chain.active("intake", "telemetry", "http") == (c,)
    assert chain.has("store") and chain.has("intake")
    chain.close()


def test_a_processor_drops_splits_and_emits() -> None:
    def split(record: Record, ctx: Context) -> list[Record]:
        if record.get("drop"):
            return []
        ctx.emit({"id": f"seen-{record['n']}"}, table="events")
        return [record, {**record, "n": record["n"] + 100}]

    chain = Chain([RecordProcessor(split, name="split")], Metrics())
    table = TABLES["telemetry"]
    given = split_lines(b'{"n": 1}\n{"n": 2, "drop": true}', table)
    done = chain.run(chain.processors, given, table, Context("telemetry", "t", "s", "store"))
    assert [r["n"] for r in records(done.records.body)] == [1, 101]
    assert done.records.n == 2 and done.changed
    assert done.emitted == [("split", "events", None, {"id": "seen-1"})]
    assert chain.emitted.labels("split")._value.get() == 1
    chain.close()


def test_the_store_stage_gives_a_replayed_segment_the_same_entries(tmp_path: Path) -> None:
    def enrich(record: Record, ctx: Context) -> Record:
        ctx.emit({"id": f"alarm-{record['n']}"}, stream="alerts-x")
        return {**record, "doubled": record["n"] * 2}

    chain = Chain([RecordProcessor(enrich, name="enrich", tables=frozenset({"telemetry"}))],
                  Metrics())  # fmt: skip
    router = Router([RouteConfig(stream="alerts-*", table="events")], "telemetry", TABLES)
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_max_bytes=1 << 20,
                  segment_max_records=100, flush_interval=60)  # fmt: skip
    intake = Intake(spool, Metrics(), router, tables=TABLES, chain=chain)
    table = TABLES["telemetry"]
    body = split_lines(b'{"n": 1}\n{"n": 2}', table)
    entries = [
        Entry(make_entry("http", "s", table, 2, received_us=5), body.body, 0),
        Entry(make_entry("http", "e", TABLES["events"], 1, received_us=5), b'{"id": "x"}', 1),
    ]
    first = intake.process_entries(entries, "run", 7)
    again = intake.process_entries(entries, "run", 7)
    assert first == again  # a replay: the same entries, so the same record ids
    changed, untouched, emitted = first
    assert records(changed.body) == [{"n": 1, "doubled": 2}, {"n": 2, "doubled": 4}]
    assert (changed.index, changed.header.records) == (0, 2)
    assert untouched is entries[1]  # no processor for events: passed as it is
    assert (emitted.index, emitted.header.table, emitted.header.source) == (2, "events", "enrich")
    assert emitted.header.stream == "alerts-x"
    assert (changed.header.idem, emitted.header.idem) == ("run:7:0", "run:7:0/enrich/events")
    assert records(emitted.body) == [{"id": "alarm-1"}, {"id": "alarm-2"}]
    chain.close()


def run_one(processor: Processor, body: bytes, table: str = "telemetry") -> tuple[Any, Chain]:
    chain = Chain([processor], Metrics())
    given = split_lines(body, TABLES[table])
    ctx = Context(table, "t", "s", "intake")
    return chain.run(chain.processors, given, TABLES[table], ctx), chain


def errors(chain: Chain, name: str, reason: str) -> float:
    value: float = chain.errors.labels(name, reason)._value.get()
    return value


def test_big_integers_and_odd_numbers_keep_their_value_through_a_processor() -> None:
    done, chain = run_one(RecordProcessor(lambda r, c: {**r, "seen": True}, name="p"),
                          b'{"big": 123456789012345678901234, "x": 1.5}')  # fmt: skip
    assert records(done.records.body) == [{"big": 123456789012345678901234, "x": 1.5, "seen": True}]
    assert errors(chain, "p", "undecodable") == 0
    # a number JSON allows but no float holds: the processor is skipped, the line kept
    done, chain = run_one(RecordProcessor(lambda r, c: {**r, "seen": True}, name="p"),
                          b'{"v": 1e400}')  # fmt: skip
    assert done.records.body == b'{"v": 1e400}' and errors(chain, "p", "undecodable") == 1


def test_a_generator_that_fails_half_way_is_isolated() -> None:
    class Half(Processor):
        name = "half"

        def process(self, records: list[Record], ctx: Context) -> Iterator[Record]:
            yield records[0]
            raise RuntimeError("half way")

    done, chain = run_one(Half(), b'{"n": 1}\n{"n": 2}')
    assert done.records.n == 2 and not done.changed
    assert errors(chain, "half", "error") == 1


def test_a_hung_processor_is_skipped_while_it_hangs_and_its_late_emits_are_dropped() -> None:
    release = threading.Event()

    class Hangs(Processor):
        name, timeout = "hangs", 0.2

        def process(self, records: list[Record], ctx: Context) -> list[Record]:
            release.wait(10)
            ctx.emit({"id": "late"}, table="events")  # after its timeout: never stored
            ctx.reply("late")
            return [{"n": 0}]

    chain = Chain([Hangs()], Metrics())
    table = TABLES["telemetry"]
    given = split_lines(b'{"n": 1}', table)
    first = chain.run(chain.processors, given, table, Context("telemetry", "t", "s", "intake"))
    started = time.monotonic()
    second = chain.run(chain.processors, given, table, Context("telemetry", "t", "s", "intake"))
    assert time.monotonic() - started < 0.15  # skipped at once, not another timeout
    release.set()
    for done in (first, second):
        assert (done.records.body, done.emitted, done.reply) == (b'{"n": 1}', [], None)
    assert errors(chain, "hangs", "timeout") == 1 and errors(chain, "hangs", "busy") == 1


def test_a_reply_that_is_not_json_is_dropped_not_sent() -> None:
    def reply(record: Record, ctx: Context) -> None:
        ctx.reply({1: object()})

    done, chain = run_one(RecordProcessor(reply, name="r"), b'{"n": 1}')
    assert done.reply is None and errors(chain, "r", "bad_output") == 1


def test_each_processor_error_series_is_there_at_zero_from_the_start() -> None:
    # (they had appeared at their first error: a rate() alert misses that one)
    from prometheus_client import generate_latest

    from rtclake.processors.chain import ERROR_REASONS

    metrics = Metrics()
    chain = Chain([RecordProcessor(lambda r, c: None, name="p")], metrics)
    text = generate_latest(metrics.registry).decode()
    for reason in ERROR_REASONS:
        assert f'rtclake_processor_errors_total{{processor="p",reason="{reason}"}} 0.0' in text
    assert 'rtclake_writer_errors_total{stage="convert"} 0.0' in text
    chain.close()


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_record_too_deep_to_encode_is_the_processors_fault_not_the_batchs(
    tmp_path: Path,
) -> None:
    """A processor that returns or emits a record nested deeper than the encoder goes
    (RecursionError) loses its output; the chain, the intake and the writer go on."""
    returns = RecordProcessor(lambda r, c: {"v": nested(5000)}, name="returns")
    done, chain = run_one(returns, b'{"n": 1}')
    assert records(done.records.body) == [{"n": 1}] and errors(chain, "returns", "bad_output")

    def emits(record: Record, ctx: Context) -> None:
        ctx.emit({"v": nested(5000)}, table="events")
        ctx.emit({"id": "fine"}, table="events")

    chain = Chain([RecordProcessor(emits, name="emits")], Metrics())
    router = Router([], "telemetry", TABLES)
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_max_bytes=1 << 20,
                  segment_max_records=100, flush_interval=60)  # fmt: skip
    intake = Intake(spool, Metrics(), router, tables=TABLES, chain=chain)
    table = TABLES["telemetry"]
    entry = Entry(make_entry("http", "s", table, 1, received_us=5), b'{"n": 1}', 0)
    out = intake.process_entries([entry], "run", 1)  # the writer's thread: must not raise
    assert [records(e.body) for e in out] == [[{"n": 1}], [{"id": "fine"}]]
    assert errors(chain, "emits", "invalid_emit") == 1
    chain.close()


def test_a_processor_that_cannot_start_is_a_configuration_error_naming_it() -> None:
    """A broker or processor whose ``start`` raises (its database out of reach) stops
    ``rtclake run`` with one line naming it (a ConfigError), not the lifespan's
    traceback; the processors before it had started."""
    started: list[str] = []

    class Starts(RecordProcessor):
        def start(self) -> None:
            started.append(self.name)

    class CannotStart(RecordProcessor):
        def start(self) -> None:
            raise RuntimeError("cannot reach my database")

    chain = Chain(
        [Starts(lambda r, c: None, name="first"), CannotStart(lambda r, c: None, name="alarm")],
        Metrics(),
    )
    with pytest.raises(ConfigError) as refused:
        chain.start()
    assert str(refused.value) == (
        "processors.alarm: cannot start: RuntimeError: cannot reach my database"
    )
    assert started == ["first"]
    chain.close()
