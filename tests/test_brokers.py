"""User brokers: they get records once durable, reply by priority, emit through the intake,
and a broker that raises or hangs costs nothing but its own output."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import structlog

from rtclake.brokers import Broker, BrokerConfig, BrokerContext, Message, topic_matches
from rtclake.catalog import default_registry
from rtclake.config import RouteConfig
from rtclake.convert import Converter
from rtclake.errors import ConfigError
from rtclake.intake import Intake
from rtclake.messages import Reply, message_line
from rtclake.metrics import Metrics
from rtclake.processors.chain import Chain
from rtclake.router import Router
from rtclake.spool import Spool
from rtclake.testing import HttpReceiver, RunningServer, wait_for

TABLES = default_registry()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "brokers"


def broker(name: str, handler: Any, **config: Any) -> Broker:
    made = Broker(handler, BrokerConfig(handler="tests:unused", **config))
    made.name = name
    made.timeout = config.get("timeout", 5.0)
    return made


def make_intake(tmp_path: Path, *brokers: Broker) -> Intake:
    spool = Spool(
        tmp_path / "spool", max_bytes=1 << 22, segment_max_bytes=1 << 22,
        segment_max_records=10_000, flush_interval=60,
    )  # fmt: skip
    router = Router([RouteConfig(stream="alerts-*", table="events")], "telemetry", TABLES)
    metrics = Metrics()
    chain = Chain(list(brokers), metrics)
    return Intake(spool, metrics, router, tables=TABLES, chain=chain)


def errors(intake: Intake, name: str, reason: str) -> float:
    assert intake.chain is not None
    return float(intake.chain.errors.labels(name, reason)._value.get())


async def take(intake: Intake, body: bytes, **kw: Any) -> Any:
    table = intake.table_for(kw.pop("stream", "sensors"))
    records = intake.validate(body, table)
    return await intake.take(kw.pop("source", "http"), "sensors", table, records, **kw)


async def stored(intake: Intake) -> dict[str, Any]:
    """Every table's rows of what the spool holds, converted as the writer does."""
    intake.spool.cut()
    await intake.spool.flush()
    out: dict[str, Any] = {}
    converter = Converter(TABLES)
    while intake.spool.sealed_waiting():
        seg = await intake.spool.next_sealed()
        for name, table in converter.convert(seg.run, seg.seq, Spool.read(seg)).items():
            out[name] = table if name not in out else pa.concat_tables([out[name], table])
    converter.close()
    return out


def test_topic_filters_follow_mqtt() -> None:
    assert topic_matches("sensors/+/temp", "sensors/s1/temp")
    assert not topic_matches("sensors/+/temp", "sensors/s1/x/temp")
    assert topic_matches("sensors/#", "sensors") and topic_matches("sensors/#", "sensors/a/b")
    assert topic_matches("#", "a/b") and not topic_matches("#", "$SYS/broker/load")
    assert not topic_matches("sensors/+", "sensors/a/b") and topic_matches("a/b", "a/b")


def test_a_broker_sees_the_record_once_it_is_in_the_spool_and_replies(tmp_path: Path) -> None:
    seen: list[tuple[Message, bool]] = []

    def handle(message: Message, ctx: BrokerContext) -> dict[str, Any]:
        spooled = b"".join(p.read_bytes() for p in (tmp_path / "spool").glob("*.wal"))
        seen.append((message, b'"device_id": "s1"' in spooled))
        return {"ok": message.data}

    async def main() -> None:
        intake = make_intake(tmp_path, broker("echo", handle))
        await intake.spool.start()
        taken = await take(intake, b'{"temp": 31, "device_id": "s1"}')
        assert taken.records == 1
        assert taken.reply == Reply(b'{"ok":{"temp":31,"device_id":"s1"}}')
        rows = await stored(intake)
        assert rows["telemetry"]["record_id"].to_pylist() == [seen[0][0].record_id]
        await intake.spool.close()

    asyncio.run(main())
    ((message, was_spooled),) = seen
    assert was_spooled, "the broker ran before its record was in the spool"
    assert (message.source, message.stream, message.table) == ("http", "sensors", "telemetry")


def test_the_record_ids_brokers_see_are_the_lakes(tmp_path: Path) -> None:
    """The three rules of the record id: the sender's key, the record's own time, and
    (neither) its place in the spool."""
    ids: list[str | None] = []

    def handle(message: Message, ctx: BrokerContext) -> None:
        ids.append(message.record_id)

    async def main() -> list[str]:
        intake = make_intake(tmp_path, broker("ids", handle))
        await intake.spool.start()
        await take(intake, b'{"n": 1}\n{"n": 2}', idem="key-1")
        await take(intake, b'{"n": 3, "time": "2026-12-01T00:00:00Z"}')
        await take(intake, b'{"n": 4}')
        await take(intake, b'[{"n": 5}, {"n": 6}]')
        rows = await stored(intake)
        await intake.spool.close()
        table = rows["telemetry"].sort_by([("received_at", "ascending")])
        return [str(r) for r in table["record_id"].to_pylist()]

    lake = asyncio.run(main())
    assert sorted(lake) == sorted(i for i in ids if i is not None)
    assert len(set(lake)) == 6


def test_the_highest_priority_reply_wins_and_every_broker_runs(tmp_path: Path) -> None:
    calls: list[str] = []

    def replier(name: str, value: Any) -> Any:
        def handle(message: Message, ctx: BrokerContext) -> Any:
            calls.append(name)
            return value

        return handle

    async def main() -> Any:
        intake = make_intake(
            tmp_path,
            broker("low", replier("low", "low"), priority=1),
            broker("high", replier("high", {"from": "high"}), priority=10),
            broker("tie", replier("tie", "tie"), priority=10),
            broker("silent", replier("silent", None), priority=99),
            broker("other", replier("other", "x"), match={"stream": "elsewhere-*"}),
        )
        await intake.spool.start()
        taken = await take(intake, b'{"v": 1}')
        await intake.spool.close()
        return taken

    taken = asyncio.run(main())
    assert taken.reply.json_value() == {"from": "high"}  # before "tie": configured first
    assert sorted(calls) == ["high", "low", "silent", "tie"]


def test_a_raising_and_a_hanging_broker_cost_only_their_own_output(tmp_path: Path) -> None:
    release = threading.Event()

    def raises(message: Message, ctx: BrokerContext) -> Any:
        ctx.emit({"lost": True}, table="events")
        raise RuntimeError("broken broker")

    def hangs(message: Message, ctx: BrokerContext) -> Any:
        ctx.emit({"lost": True}, table="events")
        release.wait(30)
        return "too late"

    def good(message: Message, ctx: BrokerContext) -> Any:
        ctx.emit({"id": f"seen-{message.data['n']}"}, table="events")  # type: ignore[index]
        return {"n": message.data["n"]}  # type: ignore[index]

    async def main() -> tuple[list[Any], float, dict[str, Any], Intake]:
        intake = make_intake(
            tmp_path,
            broker("raises", raises, priority=50),
            broker("hangs", hangs, priority=99, timeout=0.5, concurrency=1),
            broker("good", good, priority=1),
        )
        await intake.spool.start()
        started = time.monotonic()
        first = await take(intake, b'{"n": 1}')
        second = await take(intake, b'{"n": 2}')  # the hung call still runs: skipped
        elapsed = time.monotonic() - started
        rows = await stored(intake)
        await intake.spool.close()
        return [first, second], elapsed, rows, intake

    try:
        (first, second), elapsed, rows, intake = asyncio.run(main())
    finally:
        release.set()
    assert [first.reply.json_value(), second.reply.json_value()] == [{"n": 1}, {"n": 2}]
    assert elapsed < 3, "the second record waited for the hung broker"
    assert sorted(r["extra"] for r in rows["telemetry"].to_pylist()) == ['{"n":1}', '{"n":2}']
    assert sorted(rows["events"]["id"].to_pylist()) == ["seen-1", "seen-2"]
    assert errors(intake, "raises", "error") == 2
    assert errors(intake, "hangs", "timeout") == 1 and errors(intake, "hangs", "busy") == 1


def test_a_broker_emitting_what_its_table_refuses_loses_its_output_logged_with_the_record_id(
    tmp_path: Path,
) -> None:
    """Its own output for the record: its reply and what it emitted, the good records too
    (as a broker that raises); the other brokers reply and emit. The failure is counted
    as the broker's call and logged with the record id, as every broker failure."""

    def bademit(message: Message, ctx: BrokerContext) -> Any:
        ctx.emit({"id": "kept-apart"}, table="events")
        ctx.emit({"time": "yesterday"}, table="events")  # not a time: refused
        return {"from": "bademit"}

    def good(message: Message, ctx: BrokerContext) -> Any:
        ctx.emit({"id": "from-good"}, table="events")
        return {"from": "good"}

    async def main() -> tuple[Any, dict[str, Any], Intake]:
        intake = make_intake(
            tmp_path, broker("bademit", bademit, priority=10), broker("good", good, priority=1)
        )
        await intake.spool.start()
        taken = await take(intake, b'{"n": 1}')
        rows = await stored(intake)
        await intake.spool.close()
        return taken, rows, intake

    with structlog.testing.capture_logs() as logs:
        taken, rows, intake = asyncio.run(main())
    assert taken.reply.json_value() == {"from": "good"}
    assert rows["events"]["id"].to_pylist() == ["from-good"]
    assert errors(intake, "bademit", "invalid_emit") == 1
    assert intake.chain is not None and intake.chain.brokers is not None
    calls = intake.chain.brokers.calls
    assert calls.labels("bademit", "invalid_emit")._value.get() == 1
    assert calls.labels("bademit", "replied")._value.get() == 0
    (failure,) = [e for e in logs if e.get("broker") == "bademit"]
    assert failure["reason"] == "invalid_emit" and "$.time" in failure["error"]
    (record_id,) = taken.record_ids
    assert failure["record_id"] == record_id == rows["telemetry"]["record_id"][0].as_py()


def test_what_brokers_emit_keeps_its_ids_on_a_retry(tmp_path: Path) -> None:
    def handle(message: Message, ctx: BrokerContext) -> None:
        ctx.emit({"text": "hot", "device_id": "s1"}, sinks=["slack"])

    async def main() -> Any:
        intake = make_intake(tmp_path, broker("alarm", handle))
        await intake.spool.start()
        await take(intake, b'{"temp": 40}', idem="m-1")
        await take(intake, b'{"temp": 40}', idem="m-1")  # the sender retries
        rows = await stored(intake)
        await intake.spool.close()
        return rows["outbox"]

    outbox = asyncio.run(main())
    assert outbox.num_rows == 2 and len(set(outbox["record_id"].to_pylist())) == 1
    assert outbox["sinks"].to_pylist() == ['["slack"]'] * 2
    assert outbox["source"].to_pylist() == ["alarm"] * 2


def test_message_payloads_reach_brokers_as_sent(tmp_path: Path) -> None:
    got: list[Message] = []

    def handle(message: Message, ctx: BrokerContext) -> bytes:
        got.append(message)
        return message.payload[::-1]

    async def main() -> Any:
        intake = make_intake(tmp_path, broker("m", handle, match={"topic": "dev/+/raw"}))
        await intake.spool.start()
        table = intake.table_for("sensors")
        line = message_line(b"\x00\xffraw", topic="dev/7/raw", content_type="application/x-raw")
        taken = await intake.take("mqtt", "sensors", table, intake.validate(line, table))
        skipped = message_line(b"{}", topic="dev/7/other")
        other = await intake.take("mqtt", "sensors", table, intake.validate(skipped, table))
        rows = await stored(intake)
        await intake.spool.close()
        return taken, other, rows["telemetry"]

    taken, other, telemetry = asyncio.run(main())
    assert taken.reply == Reply(b"war\xff\x00", "application/octet-stream")
    assert other.reply is None and len(got) == 1
    assert (got[0].data, got[0].topic, got[0].content_type) == (
        None,
        "dev/7/raw",
        "application/x-raw",
    )
    payloads = dict(
        zip(telemetry["topic"].to_pylist(), telemetry["payload"].to_pylist(), strict=True)
    )
    assert payloads == {"dev/7/raw": b"\x00\xffraw", "dev/7/other": None}


def test_a_record_python_cannot_hold_keeps_its_topic_for_brokers(tmp_path: Path) -> None:
    got: list[Message] = []

    def handle(message: Message, ctx: BrokerContext) -> str:
        got.append(message)
        return "seen"

    async def main() -> Any:
        intake = make_intake(tmp_path, broker("m", handle, match={"topic": "dev/+/big"}))
        await intake.spool.start()
        table = intake.table_for("sensors")
        line = message_line(b'{"reading": 1e999, "n": 1}', topic="dev/7/big",
                            metadata={"k": "v"}, collector="gw")  # fmt: skip
        taken = await intake.take("mqtt", "sensors", table, intake.validate(line, table))
        await intake.spool.close()
        return taken

    taken = asyncio.run(main())
    assert taken.reply == Reply(b"seen", "text/plain") and len(got) == 1
    message = got[0]
    assert (message.data, message.topic, message.collector, message.metadata) == (
        None, "dev/7/big", "gw", {"k": "v"},
    )  # fmt: skip
    assert message.payload == b'{"reading":1e999,"n":1}'


def test_a_handler_that_cannot_be_loaded_is_a_configuration_error(tmp_path: Path) -> None:
    from rtclake.brokers import build_broker

    refused = re.escape("processors.b.handler: cannot load 'nope.x:y'")
    with pytest.raises(ConfigError, match=refused):
        build_broker(BrokerConfig(handler="nope.x:y"), "b")
    with pytest.raises(ConfigError, match="is not module:attribute"):
        build_broker(BrokerConfig(handler="nope"), "b")
    made = build_broker(
        BrokerConfig(handler="threshold_alarm:ThresholdAlarm", path=EXAMPLES,
                     options={"threshold": 5}),
        "b",
    )  # fmt: skip
    assert made.handler.__self__.threshold == 5.0


CONFIG = """
processors:
  alarm:
    type: broker
    handler: "threshold_alarm:ThresholdAlarm"
    path: {examples}
    match: {{source: http, stream: "sensors*"}}
    options: {{field: temp, threshold: 30, sinks: [slack]}}
    priority: 10
  to_influx:
    type: broker
    handler: "influx_points:handle"
    path: {examples}
    match: {{stream: "sensors*"}}
  broken:
    type: broker
    handler: "extra_brokers:broken"
    path: {extra}
    priority: 99
  hung:
    type: broker
    handler: "extra_brokers:hung"
    path: {extra}
    priority: 98
    timeout: 1
sinks:
  slack: {{type: slack, url: "{slack}"}}
"""

EXTRA = """
import time


def broken(message, ctx):
    raise ValueError("this broker always fails")


def hung(message, ctx):
    time.sleep(60)
    return "never sent"
"""


def test_the_example_brokers_feed_slack_and_influx_points_through_a_running_server(
    tmp_path: Path,
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "extra_brokers.py").write_text(EXTRA)
    with HttpReceiver() as slack:
        config = tmp_path / "rtclake.yaml"
        config.write_text(CONFIG.format(examples=EXAMPLES, extra=extra, slack=slack.url + "/slack"))
        data = tmp_path / "data"
        data.mkdir()
        server = RunningServer(data, env={"RTCLAKE_CONFIG": str(config)}).start()
        try:
            hot = httpx.post(server.url + "/ingest/sensors-a",
                             json={"device_id": "s1", "temp": 31.5}, timeout=10)  # fmt: skip
            cool = httpx.post(server.url + "/ingest/sensors-a",
                              json={"device_id": "s2", "temp": 20}, timeout=10)  # fmt: skip
            assert hot.status_code == 200, hot.text
            assert hot.json() == {
                "accepted": 1, "reply": {"alarm": True, "value": 31.5, "threshold": 30.0}
            }  # fmt: skip
            assert cool.json() == {"accepted": 1, "reply": {"alarm": False}}
            posted = wait_for(lambda: slack.received("/slack"), timeout=20)
            assert [p.json() for p in posted] == [{"text": "s1: temp 31.5 is above 30"}]
            server.wait_rows("SELECT count(*) FROM telemetry", 2)
            server.wait_rows("SELECT count(*) FROM outbox", 3)
            outbox = server.query(
                "SELECT source, sinks, extra->>'measurement' AS m, extra->'fields' AS f"
                " FROM outbox ORDER BY source, m, f->>'temp'"
            )["rows"]
            assert outbox == [
                ["alarm", '["slack"]', None, None],
                ["to_influx", '["influxdb"]', "sensors-a", {"temp": 20}],
                ["to_influx", '["influxdb"]', "sensors-a", {"temp": 31.5}],
            ]
            assert server.metric("rtclake_processor_errors_total", processor="broken",
                                 reason="error") == 2  # fmt: skip
            assert server.metric("rtclake_processor_errors_total", processor="hung",
                                 reason="timeout") >= 1  # fmt: skip
        finally:
            server.stop()


def test_many_hand_overs_at_once_all_reach_a_healthy_broker(tmp_path: Path) -> None:
    """concurrency bounds the calls that hung past their timeout, not calls in progress:
    a burst of single-message hand-overs (MQTT, WebSocket, gRPC) is not skipped."""

    def slow(message: Message, ctx: BrokerContext) -> Any:
        time.sleep(0.05)
        return message.data

    async def main() -> list[Any]:
        intake = make_intake(tmp_path, broker("slow", slow, concurrency=2))
        await intake.spool.start()
        taken = await asyncio.gather(*(take(intake, b'{"n": %d}' % n) for n in range(20)))
        await intake.spool.close()
        assert errors(intake, "slow", "busy") == 0
        return [t.reply.json_value() for t in taken]

    assert asyncio.run(main()) == [{"n": n} for n in range(20)]


def test_brokers_time_out_together_within_the_callers_deadline(tmp_path: Path) -> None:
    release = threading.Event()

    def hangs(message: Message, ctx: BrokerContext) -> Any:
        release.wait(30)

    async def main() -> tuple[float, Any]:
        intake = make_intake(tmp_path, broker("a", hangs, timeout=5), broker("b", hangs, timeout=5))
        await intake.spool.start()
        started = time.monotonic()
        taken = await take(intake, b'{"n": 1}', within=0.5)
        elapsed = time.monotonic() - started
        await intake.spool.close()
        return elapsed, taken

    try:
        elapsed, taken = asyncio.run(main())
    finally:
        release.set()
    assert taken.records == 1 and taken.reply is None
    assert elapsed < 1.2, f"two hung brokers held the answer {elapsed:.2f} s"


def test_the_callers_deadline_counts_the_time_the_spool_took(tmp_path: Path) -> None:
    release = threading.Event()

    def hangs(message: Message, ctx: BrokerContext) -> Any:
        release.wait(30)

    async def main() -> float:
        intake = make_intake(tmp_path, broker("a", hangs, timeout=5))
        await intake.spool.start()
        append = intake.spool.append_nowait

        def slow_disk(header: Any, body: bytes) -> asyncio.Future[None]:
            durable = append(header, body)
            later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            durable.add_done_callback(
                lambda _: asyncio.get_running_loop().call_later(0.6, later.set_result, None)
            )
            return later

        intake.spool.append_nowait = slow_disk  # type: ignore[method-assign]
        started = time.monotonic()
        await take(intake, b'{"n": 1}', within=0.8)
        elapsed = time.monotonic() - started
        await intake.spool.close()
        return elapsed

    try:
        elapsed = asyncio.run(main())
    finally:
        release.set()
    assert 0.6 <= elapsed < 1.1, f"answered {elapsed:.2f} s after a deadline of 0.8 s"


def test_payloads_python_cannot_hold_are_stored_and_given_as_bytes(tmp_path: Path) -> None:
    got: list[Message] = []

    def handle(message: Message, ctx: BrokerContext) -> None:
        got.append(message)

    async def main() -> dict[str, Any]:
        intake = make_intake(tmp_path, broker("m", handle))
        await intake.spool.start()
        table = intake.table_for("sensors")
        for payload in (b'{"v": 1e400}', b'{"v": 123456789012345678901234567890}',
                        b'{"name": "\xff\xfe"}'):  # fmt: skip
            line = message_line(payload, topic="t/1")
            taken = await intake.take("mqtt", "sensors", table, intake.validate(line, table))
            assert taken.records == 1
        rows = await stored(intake)
        await intake.spool.close()
        return rows

    rows = asyncio.run(main())
    assert len(got) == 3
    assert got[0].data is None and got[0].payload == b'{"v":1e400}' and got[0].topic == "t/1"
    assert got[1].data == {"v": 123456789012345678901234567890}
    assert got[2].data is None and got[2].payload == b'{"name": "\xff\xfe"}'  # not UTF-8
    assert rows["telemetry"]["payload"].to_pylist()[2] == b'{"name": "\xff\xfe"}'


def test_record_ids_follow_the_writer_when_a_store_stage_processor_runs(tmp_path: Path) -> None:
    from rtclake.processors.base import RecordProcessor

    ids: list[str | None] = []

    def handle(message: Message, ctx: BrokerContext) -> None:
        ids.append(message.record_id)

    async def main() -> list[str]:
        spool = Spool(tmp_path / "spool", max_bytes=1 << 22, segment_max_bytes=1 << 22,
                      segment_max_records=10_000, flush_interval=60)  # fmt: skip
        router = Router([], "telemetry", TABLES)
        metrics = Metrics()
        keep = RecordProcessor(lambda r, c: None, name="keep")  # store stage, changes nothing
        chain = Chain([keep, broker("ids", handle)], metrics)
        intake = Intake(spool, metrics, router, tables=TABLES, chain=chain)
        await spool.start()
        await take(intake, b'{"n": 1, "time": "2026-12-01T00:00:00Z"}')
        await take(intake, b'{"n": 2}')
        spool.cut()
        await spool.flush()
        seg = await spool.next_sealed()
        converter = Converter(TABLES)
        entries = intake.process_entries(Spool.read(seg), seg.run, seg.seq)
        table = converter.convert(seg.run, seg.seq, entries)["telemetry"]
        converter.close()
        await spool.close()
        return [str(i) for i in table["record_id"].to_pylist()]

    assert sorted(asyncio.run(main())) == sorted(str(i) for i in ids)


class AsyncBroker:
    """An async class broker keeping a loop-bound object between calls."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handle(self, message: Message, ctx: BrokerContext) -> Any:
        loop = asyncio.get_running_loop()
        self.loop = self.loop or loop
        await asyncio.sleep(0.01)
        return {"same_loop": self.loop is loop}


def test_an_async_broker_keeps_its_event_loop_between_calls(tmp_path: Path) -> None:
    instance = AsyncBroker()

    async def main() -> list[Any]:
        made = broker("async", instance.handle)
        intake = make_intake(tmp_path, made)
        await intake.spool.start()
        replies = [(await take(intake, b'{"n": %d}' % n)).reply.json_value() for n in range(3)]
        await intake.spool.close()
        made.close()
        return replies

    assert asyncio.run(main()) == [{"same_loop": True}] * 3


def test_a_message_that_raised_is_not_also_counted_as_timed_out(tmp_path: Path) -> None:
    release = threading.Event()

    def handle(message: Message, ctx: BrokerContext) -> Any:
        if message.data == {"n": 1}:
            raise ValueError("bad reading")
        release.wait(30)  # the second record: no answer in time

    async def main() -> Intake:
        intake = make_intake(tmp_path, broker("b", handle, timeout=0.3))
        await intake.spool.start()
        await take(intake, b'[{"n": 1}, {"n": 2}]')
        await intake.spool.close()
        return intake

    try:
        intake = asyncio.run(main())
    finally:
        release.set()
    assert (errors(intake, "b", "error"), errors(intake, "b", "timeout")) == (1, 1)


def test_a_call_that_timed_out_stops_at_the_record_it_was_on(tmp_path: Path) -> None:
    release = threading.Event()
    seen: list[Any] = []

    def handle(message: Message, ctx: BrokerContext) -> Any:
        seen.append(message.data)
        if message.data == {"n": 1}:
            release.wait(30)
            raise TimeoutError("its own client gave up, after rtclake did")
        return "ok"

    async def main() -> None:
        intake = make_intake(tmp_path, broker("b", handle, timeout=0.2))
        await intake.spool.start()
        await take(intake, b'[{"n": 1}, {"n": 2}, {"n": 3}]')
        release.set()
        await asyncio.sleep(0.3)  # the call's thread returns
        await intake.spool.close()

    try:
        asyncio.run(main())
    finally:
        release.set()
    assert seen == [{"n": 1}], "records after the timeout were handed to the broker anyway"


def test_two_brokers_modules_of_one_name_in_two_folders_are_not_confused(tmp_path: Path) -> None:
    from rtclake.brokers import build_broker

    for folder, answer in (("a", "A"), ("b", "B")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same_name_brokers.py").write_text(
            f"def handle(message, ctx):\n    return {answer!r}\n"
        )
    first = build_broker(BrokerConfig(handler="same_name_brokers:handle", path=tmp_path / "a"), "a")
    assert first.handler(None, None) == "A"
    says = re.escape("processors.b.handler: module 'same_name_brokers' is")
    with pytest.raises(ConfigError, match=says):
        build_broker(BrokerConfig(handler="same_name_brokers:handle", path=tmp_path / "b"), "b")


@pytest.mark.parametrize("topic", ["sensors/#/temp", "sensors/t+", ""])
def test_a_topic_filter_mqtt_would_not_take_is_refused_in_the_configuration(topic: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"match\.topic"):
        BrokerConfig(handler="m:h", match={"topic": ["sensors/+/temp", topic]})
    assert BrokerConfig(handler="m:h", match={"topic": "sensors/#"}).match.topic == "sensors/#"


def test_a_record_too_deep_to_encode_costs_the_broker_its_output_not_the_answer(
    tmp_path: Path,
) -> None:
    def handle(message: Message, ctx: BrokerContext) -> str:
        deep: list[Any] = []
        for _ in range(5000):
            deep = [deep]
        ctx.emit({"v": deep}, table="events")
        return "never sent"

    async def main() -> tuple[Any, Intake]:
        intake = make_intake(tmp_path, broker("deep", handle))
        await intake.spool.start()
        taken = await take(intake, b'{"n": 1}')
        await intake.spool.close()
        return taken, intake

    taken, intake = asyncio.run(main())
    assert taken.records == 1 and taken.reply is None
    assert errors(intake, "deep", "invalid_emit") == 1


def test_the_example_brokers_pass_over_a_payload_that_is_not_json() -> None:
    import datetime as dt
    import sys

    sys.path.insert(0, str(EXAMPLES))
    try:
        from influx_points import point
        from threshold_alarm import ThresholdAlarm
    finally:
        sys.path.remove(str(EXAMPLES))
    binary = Message(data=None, payload=b"\x00\xffraw", source="sensors", stream="sensors",
                     table="telemetry", record_id="r", received_at=dt.datetime.now(dt.UTC),
                     topic="sensors/s1/temp")  # fmt: skip
    ctx = BrokerContext("alarm", binary)
    assert ThresholdAlarm().handle(binary, ctx) is None and ctx.emitted == []
    assert point(binary) is None


def test_a_call_past_a_callers_deadline_but_in_its_timeout_does_not_make_the_broker_busy(
    tmp_path: Path,
) -> None:
    def slow(message: Message, ctx: BrokerContext) -> str:
        time.sleep(0.5)  # well within its timeout, longer than the first caller waits
        return "done"

    async def main() -> tuple[Any, Any, Intake]:
        intake = make_intake(tmp_path, broker("slow", slow, timeout=5, concurrency=1))
        await intake.spool.start()
        hurried = await take(intake, b'{"n": 1}', within=0.1)  # a gRPC caller's deadline
        patient = await take(intake, b'{"n": 2}')  # HTTP: waits for the broker's timeout
        await intake.spool.close()
        return hurried, patient, intake

    hurried, patient, intake = asyncio.run(main())
    assert hurried.reply is None
    assert patient.reply == Reply(b"done", "text/plain"), "the broker was skipped as busy"
    assert errors(intake, "slow", "busy") == 0


def test_an_async_broker_past_its_timeout_is_cancelled_and_does_not_stay_busy(
    tmp_path: Path,
) -> None:
    """A coroutine past the broker's timeout is cancelled (its ``await`` sees
    CancelledError), so it does not hold one of the broker's ``concurrency`` calls: with
    ``concurrency: 1``, one that never returned had made the broker skip every later
    record as busy, for good."""
    cancelled = threading.Event()

    async def handle(message: Message, ctx: BrokerContext) -> Any:
        if message.data == {"hang": 1}:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return {"n": message.data.get("n")}  # type: ignore[union-attr]

    async def main() -> tuple[Any, Any, Intake]:
        made = broker("async", handle, timeout=0.3, concurrency=1)
        intake = make_intake(tmp_path, made)
        await intake.spool.start()
        hung = await take(intake, b'{"hang": 1}')
        await asyncio.sleep(0.3)  # (the call's thread sees the cancellation and ends)
        later = await take(intake, b'{"n": 2}')
        await intake.spool.close()
        made.close()
        return hung, later, intake

    hung, later, intake = asyncio.run(main())
    assert hung.reply is None
    assert cancelled.wait(5), "the coroutine was not cancelled"
    assert later.reply is not None and later.reply.json_value() == {"n": 2}
    assert errors(intake, "async", "timeout") == 1
    assert errors(intake, "async", "busy") == 0
