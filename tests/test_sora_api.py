"""The Sora API poller: derived fields, normalising each API answer, and polling a real
HTTP server answering with Sora's fixtures (also with a 500, a timeout, bad JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rtclake.catalog import default_registry
from rtclake.config import Settings
from rtclake.convert import Converter
from rtclake.delivery import Delivery
from rtclake.errors import InputError
from rtclake.intake import Intake
from rtclake.integrations.sora import api
from rtclake.integrations.sora.api_poller import SoraApiPoller
from rtclake.integrations.sora.config import SoraApiConfig
from rtclake.integrations.sora.exporter import SoraExporterCollector
from rtclake.integrations.sora.processors import counter_names, sorabeat_fields
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import LakeSink
from rtclake.metrics import Metrics
from rtclake.processors.base import Context
from rtclake.processors.chain import Chain
from rtclake.registry import load_registry
from rtclake.service import build_components
from rtclake.sources.base import split_lines
from rtclake.spool import Entry, EntryHeader, Spool
from rtclake.tables import TableRegistry
from rtclake.writer import Writer
from tests.conftest import FIXTURES

SORA = FIXTURES / "sora"
POLL_TIME = "2026-05-01T12:00:00.000000Z"
NODE = "http://sora-1:3000/"


def fixture(name: str) -> Any:
    return json.loads((SORA / name).read_bytes())


def registry() -> TableRegistry:
    """The catalog plus the poller's tables (once the catalog has them, nothing to add)."""
    tables = default_registry()
    for table in api.SORA_API_TABLES:
        if table.name not in tables:
            tables.add(table)
    return tables


def rows(table: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lake rows the writer makes of ``records`` (validated as the poller does)."""
    tables = registry()
    checked = split_lines(b"\n".join(json.dumps(r).encode() for r in records), tables[table])
    head = EntryHeader(
        table=table,
        source="sora_api",
        stream="test",
        kind=tables[table].kind,
        received_us=1,
        records=checked.n,
        extra=checked.extra,
    )
    converter = Converter(tables)
    try:
        result: list[dict[str, Any]] = converter.convert("r", 1, [Entry(head, checked.body, 0)])[
            table
        ].to_pylist()
        return result
    finally:
        converter.close()


def list_rtc_stats_answer() -> list[dict[str, Any]]:
    """A ListRtcStats answer holding the stats of the rtc_stats.jsonl fixture."""
    by_connection: dict[str, dict[str, Any]] = {}
    for line in (SORA / "rtc_stats.jsonl").read_text().splitlines():
        log = json.loads(line)
        connection = by_connection.setdefault(
            log["connection_id"],
            {
                "channel_id": log["channel_id"],
                "connection_id": log["connection_id"],
                "timestamp": log["timestamp"],
                "rtc_stats": [],
            },
        )
        connection["rtc_stats"].append(log["rtc_data"])
    return list(by_connection.values())


# --- derived fields ---------------------------------------------------------------------


def test_derived_fields_of_4_10_2_5() -> None:
    got = api.derived_fields([4, 10, 2, 5])
    assert got["min"] == 2 and got["max"] == 10 and got["mean"] == 5.25
    assert round(got["stddev"], 2) == 2.95
    assert got["imbalance"] == 5


def test_an_empty_list_adds_nothing() -> None:
    assert api.derived_fields([]) == {}
    stats: dict[str, Any] = {"active_tasks": [], "run_queue_lengths": []}
    api.add_derived_fields(stats)
    assert stats == {"active_tasks": [], "run_queue_lengths": []}


def test_a_single_value_is_its_own_min_max_and_mean_with_no_spread() -> None:
    assert api.derived_fields([7]) == {
        "min": 7,
        "max": 7,
        "mean": 7.0,
        "stddev": 0.0,
        "imbalance": 1.0,
    }


def test_stddev_is_the_population_one() -> None:
    assert api.derived_fields([1, 3])["stddev"] == 1.0  # the sample stddev would be 1.41


def test_imbalance_counts_an_idle_scheduler_as_one() -> None:
    assert api.derived_fields([0, 3])["imbalance"] == 3.0
    assert api.derived_fields([0, 0])["imbalance"] == 0.0


def test_derived_fields_sit_beside_each_list_and_skip_what_is_not_numbers() -> None:
    stats: dict[str, Any] = {"active_tasks_all": [4, 10, 2, 5], "run_queue_lengths": ["x"]}
    api.add_derived_fields(stats)
    assert stats["active_tasks_all_max"] == 10 and stats["active_tasks_all_imbalance"] == 5
    assert not any(k.startswith("run_queue_lengths_") for k in stats)


# --- normalising each answer ------------------------------------------------------------


def processed(table: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` after Sora's default processors (counter names, Sorabeat's fields)."""
    ctx = Context(table, "sora_api", "test", "store")
    for processor in (counter_names(), sorabeat_fields()):
        if processor.matches(table, "sora_api"):
            records = list(processor.process(records, ctx) or records)
    return records


def report_row(name: str) -> dict[str, Any]:
    record = api.stats_report_record(fixture(name), node=NODE, time=POLL_TIME)
    return rows("sora_stats_report", processed("sora_stats_report", [record]))[0]


def test_stats_reports_of_2017_and_2025_fill_the_same_columns() -> None:
    old, new = report_row("GetStatsReport_2017.json"), report_row("GetStatsReport_2025.json")
    assert old["node"] == new["node"] == NODE
    assert old["time"].isoformat() == new["time"].isoformat() == "2026-05-01T12:00:00+00:00"
    assert (old["memory_total"], new["memory_total"]) == (68380480, 1234)
    assert (old["memory_ets"], new["memory_ets"]) == (1398248, 888)
    assert (old["total_successful_connections"], new["total_successful_connections"]) == (3, 2)
    assert (old["total_ongoing_connections"], new["total_ongoing_connections"]) == (3, 0)
    assert (old["average_setup_time_msec"], new["average_setup_time_msec"]) == (107, 372)
    assert (old["total_reductions"], new["total_reductions"]) == (513404228, 8080)
    # the 2017 report's active_tasks_all is the done-when example
    assert json.loads(old["active_tasks_all"]) == [4, 10, 2, 5]
    assert old["active_tasks_all_min"] == 2 and old["active_tasks_all_max"] == 10
    assert old["active_tasks_all_mean"] == 5.25
    assert round(old["active_tasks_all_stddev"], 2) == 2.95
    assert old["active_tasks_all_imbalance"] == 5
    assert new["active_tasks_max"] == 1 and new["run_queue_lengths_all_imbalance"] == 0
    # fields of one Sora version only: a column or extra, never dropped
    assert old["version"] is None and new["version"] == "2022.1.0-canary.28"
    assert new["raft_state"] == "follower" and new["signaling_error"] == 4
    assert new["total_sent_srtp_sfu_delay_us"] == 123456
    assert json.loads(old["extra"])["browser"]["total_successful_browser_type"]["chrome"] == 3
    extra = json.loads(new["extra"])
    assert extra["sora_client"]["total_successful_sora_client_type"]["sora_js_sdk"] == 33
    assert extra["cluster_relay"][1]["plumtree"]["total_ignored"] == 111
    # what a column took is not repeated in extra; what it did not is kept there
    assert "memory" not in extra["erlang_vm"]  # every key of it has a column
    assert extra["erlang_vm"]["statistics"]["reductions"] == {"reductions_since_last_call": 443}


def test_a_minimal_report_has_no_erlang_vm_and_no_derived_fields() -> None:
    record = api.stats_report_record(
        fixture("GetStatsReport_minimal.json"), node=NODE, time=POLL_TIME
    )
    assert "erlang_vm" not in record
    (row,) = rows("sora_stats_report", [record])
    assert row["total_session_created"] == 111 and row["total_turn_udp_connections"] == 555
    assert row["memory_total"] is None and row["active_tasks_mean"] is None


def test_the_answer_keeps_its_own_keys_and_is_not_changed() -> None:
    answer = fixture("GetStatsReport_2017.json")
    original = copy.deepcopy(answer)
    record = api.stats_report_record(
        {**answer, "time": "2020-01-01T00:00:00Z"}, node=NODE, time=POLL_TIME
    )
    assert record["time"] == "2020-01-01T00:00:00Z"
    assert answer == original  # derived fields went into the record, not the answer


def test_a_report_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InputError, match="GetStatsReport answered list"):
        api.stats_report_record([], node=NODE, time=POLL_TIME)


def _renamed_to_current_names(connection: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(connection)
    for old, new in api.COUNTER_RENAMES.items():
        out["rtp"][new] = out["rtp"].pop(old)
    return out


def test_old_and_new_counter_names_become_one_key_and_one_column() -> None:
    old_answer = fixture("GetStatsAllConnections_2017.json")
    new_answer = [_renamed_to_current_names(c) for c in old_answer]
    table = "sora_connection_counters"
    old_records = processed(table, api.connection_records(old_answer, node=NODE, time=POLL_TIME))
    new_records = processed(table, api.connection_records(new_answer, node=NODE, time=POLL_TIME))
    assert old_records == new_records
    rtp = old_records[0]["rtp"]
    assert rtp["total_received_byte_size"] == 1363876 and "total_received_bytes" not in rtp
    assert rtp["total_sent"] == 2129 and "total_sent_packets" not in rtp
    first, second = rows("sora_connection_counters", old_records)
    assert first["channel_client_id"] == "sorabeat/f43ca35b-f0a3-460f-81e4-851a4a41ff9b"
    assert second["client_id"] == "d3850543-34d4-4b39-bf7d-570b4ee3ff43"
    assert (first["received_bytes"], first["sent_bytes"]) == (1363876, 1360840)
    assert (first["received_packets"], first["sent_packets"]) == (1975, 2129)
    assert (first["received_nack"], first["sent_pli"]) == (10, 7)
    assert first["turn_sent_channel_data"] == 2168
    assert first["stats_at"].isoformat() == "2017-11-16T05:16:02+00:00"
    assert first["time"].isoformat() == "2026-05-01T12:00:00+00:00"
    assert json.loads(first["extra"])["turn"]["total_sent_allocate_error"] == 3


def test_raw_old_names_map_to_the_same_columns_without_the_normaliser() -> None:
    (connection,) = fixture("GetStatsAllConnections_2017.json")[:1]
    (row,) = rows("sora_connection_counters", [connection])
    assert (row["received_bytes"], row["sent_packets"]) == (1363876, 2129)


def test_list_rtc_stats_becomes_the_rows_of_the_same_log_lines() -> None:
    records = api.rtc_stats_records(list_rtc_stats_answer())
    log_lines = [json.loads(line) for line in (SORA / "rtc_stats.jsonl").read_text().splitlines()]
    assert len(records) == len(log_lines) == 3
    for record, line in zip(records, log_lines, strict=True):
        assert list(record)[-4:] == ["rtc_data", "rtc_id", "rtc_timestamp", "rtc_type"]
        for key in ("connection_id", "channel_id", "rtc_data", "rtc_id", "rtc_type"):
            assert record[key] == line[key]
        assert record["rtc_timestamp"] == line["rtc_timestamp"]
    from_api = {r["record_id"]: r for r in rows("rtc_stats", records)}
    from_log = {r["record_id"]: r for r in rows("rtc_stats", log_lines)}
    assert from_api.keys() == from_log.keys()  # one row whichever way the stats arrived
    for record_id, row in from_api.items():
        assert row["stats_type"] == from_log[record_id]["stats_type"]
        assert row["bytes_received"] == from_log[record_id]["bytes_received"]


def test_list_rtc_stats_without_a_stats_list_is_refused() -> None:
    with pytest.raises(InputError, match="item 0"):
        api.rtc_stats_records([{"connection_id": "X", "rtc_stats": {"id": "a"}}])


# --- sora_exporter names ------------------------------------------------------------------


def series(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset({"node": NODE, **labels}.items()))]


def test_the_latest_report_is_exposed_under_sora_exporter_names() -> None:
    metrics = Metrics()
    collector = SoraExporterCollector()
    metrics.registry.register(collector)
    collector.update(NODE, fixture("GetStatsReport_2025.json"))
    found = series(generate_latest(metrics.registry).decode())
    expected = {
        ("sora_up", ()): 1,
        ("sora_connections_total", (("state", "created"),)): 2,
        ("sora_connections_total", (("state", "destroyed"),)): 2,
        ("sora_connections_total", (("state", "failed"),)): 0,
        ("sora_connections_total", (("state", "successful"),)): 2,
        ("sora_connections_total", (("state", "updated"),)): 23,
        ("sora_ongoing_connections_total", ()): 0,
        ("sora_duration_seconds_total", ()): 1412,
        ("sora_average_duration_seconds", ()): 706,
        ("sora_average_setup_time_seconds", ()): 0.372,
        ("sora_session_total", (("state", "created"),)): 1,
        ("sora_turn_connections_total", (("proto", "tcp"),)): 2,
        ("sora_successful_auth_webhook_total", (("state", "denied"),)): 92,
        ("sora_auth_webhook_total", (("state", "failed"),)): 93,
        ("sora_session_webhook_total", (("state", "ignored"),)): 102,
        ("sora_event_webhook_total", (("state", "successful"),)): 97,
        ("sora_stats_webhook_total", (("state", "failed"),)): 99,
        ("sora_srtp_received_bytes_total", ()): 109,
        ("sora_srtp_decrpyted_bytes_total", ()): 105,
        ("sora_srtp_sent_sfu_delay_us_total", ()): 123456,
        ("sora_sctp_sent_packets_total", ()): 110,
        ("sora_connection_error_total", (("reason", "sdp"),)): 3,
        ("sora_client_type_total", (("client", "momo"), ("state", "successful"))): 66,
        ("sora_client_type_total", (("client", "js_sdk"), ("state", "failed"))): 3,
        ("sora_erlang_vm_memory_total", ()): 1234,
        ("sora_erlang_vm_context_switches", ()): 321,
        ("sora_erlang_vm_wall_clock_wallclock_time_since_last_call", ()): 9090,
        ("sora_cluster_raft_term", ()): 3,
        ("sora_cluster_raft_state", (("state", "follower"),)): 1,
        ("sora_cluster_relay_received_packets_total", (("node_name", "node-02"),)): 23,
        ("sora_cluster_relay_plumtree_skipped_send_total", (("node_name", "node-01"),)): 10,
        ("sora_version_info", (("version", "2022.1.0-canary.28"),)): 1,
    }
    for (name, labels), want in expected.items():
        assert value(found, name, **dict(labels)) == want, name


def test_only_values_the_answer_holds_are_exposed() -> None:
    metrics = Metrics()
    collector = SoraExporterCollector()
    metrics.registry.register(collector)
    collector.update(NODE, fixture("GetStatsReport_minimal.json"))
    text = generate_latest(metrics.registry).decode()
    assert "sora_erlang_vm" not in text and "sora_client_type_total" not in text
    assert "sora_cluster" not in text and "sora_connection_error_total" not in text
    assert value(series(text), "sora_connections_total", state="failed") == 100
    collector.failed(NODE)
    after = series(generate_latest(metrics.registry).decode())
    assert value(after, "sora_up") == 0
    assert not any(name.startswith("sora_connections") for name, _ in after)


# --- polling a real HTTP server -------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


@dataclass
class FakeSora:
    """A local HTTP server answering Sora API calls by their x-sora-target."""

    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def answer(self, operation: str, answer: Answer) -> None:
        self.answers[api.TARGETS[operation]] = answer

    def start(self) -> FakeSora:
        sora = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                target = self.headers.get("x-sora-target", "")
                self.rfile.read(int(self.headers.get("content-length") or 0))
                sora.calls.append(target)
                answer = sora.answers.get(target, Answer(400, b'{"error": "unknown target"}'))
                if answer.delay:
                    sora.release.wait(answer.delay)
                try:
                    self.send_response(answer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the poller gave up waiting (the timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()  # delayed answers end now
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def good_answers(sora: FakeSora) -> None:
    sora.answer(api.GET_STATS_REPORT, Answer(body=(SORA / "GetStatsReport_2025.json").read_bytes()))
    sora.answer(
        api.GET_STATS_ALL_CONNECTIONS,
        Answer(body=(SORA / "GetStatsAllConnections_2017.json").read_bytes()),
    )
    sora.answer(api.LIST_RTC_STATS, Answer(body=json.dumps(list_rtc_stats_answer()).encode()))


@pytest.fixture
def sora() -> Iterator[FakeSora]:
    server = FakeSora().start()
    good_answers(server)
    yield server
    server.stop()


@dataclass
class Node:
    """One rtclake node in-process: spool, writer, lake sink, query engine, metrics."""

    spool: Spool
    writer: Writer
    metrics: Metrics
    tables: TableRegistry
    query: QueryEngine
    intake: Intake
    node_url: str = ""

    def poller(self, sora: FakeSora, **config: Any) -> SoraApiPoller:
        self.node_url = sora.url
        settings = SoraApiConfig(nodes=[sora.url], **{"timeout": 2.0, **config})
        return SoraApiPoller(settings, self.intake, self.tables)

    async def count(self, table: str) -> int:
        assert await self.writer.drain(20)
        result: int = self.query.run(f"SELECT count(*) FROM {table}").rows()[0][0]
        return result

    async def select(self, sql: str) -> list[list[Any]]:
        assert await self.writer.drain(20)
        return self.query.run(sql).rows()

    def received(self) -> float:
        sample = {"source": "sora_api"}
        return self.metrics.registry.get_sample_value("rtclake_records_received_total", sample) or 0

    def errors(self, operation: str, reason: str) -> float:
        sample = {"node": self.node_url, "operation": operation, "reason": reason}
        return self.metrics.registry.get_sample_value("rtclake_sora_api_errors_total", sample) or 0


@contextlib.asynccontextmanager
async def rtclake_node(tmp_path: Path) -> AsyncIterator[Node]:
    tables = registry()
    metrics = Metrics()
    spool = Spool(
        tmp_path / "spool",
        max_bytes=64 << 20,
        segment_max_bytes=8 << 20,
        segment_max_records=100_000,
        flush_interval=60,
        fsync=False,
    )
    await spool.start()
    # the processors on by default: Sora's counter names and Sorabeat's derived fields
    settings = Settings(data_dir=tmp_path, node="test")
    processors = build_components("processor", settings, load_registry(), {"metrics": metrics})
    intake = Intake(spool, metrics, tables=tables, chain=Chain(processors, metrics))
    delivery = Delivery([LakeSink(tmp_path / "lake", tables)], metrics)
    writer = Writer(
        spool,
        delivery,
        tables,
        metrics,
        node="test",
        retry_initial=0.01,
        retry_max=0.1,
        process=intake.process_entries,
    )
    await writer.start()
    try:
        yield Node(spool, writer, metrics, tables, QueryEngine(tmp_path / "lake", tables), intake)
    finally:
        await writer.drain(20)
        await spool.close()
        await writer.stop()
        delivery.close()


def test_a_poll_stores_every_answer_and_exposes_the_report(tmp_path: Path, sora: FakeSora) -> None:
    async def scenario() -> None:
        async with rtclake_node(tmp_path) as node:
            poller = node.poller(sora)
            await poller.poll_once()
            assert sora.calls == [api.TARGETS[op] for op in api.TARGETS]
            report = await node.select(
                "SELECT node, total_connection_created, memory_total, active_tasks_max,"
                " source, stream FROM sora_stats_report"
            )
            assert report == [[sora.url, 2, 1234, 1.0, "sora_api", "GetStatsReport"]]
            assert await node.select(
                "SELECT channel_client_id, received_bytes FROM sora_connection_counters ORDER BY 1"
            ) == [
                ["sorabeat/d3850543-34d4-4b39-bf7d-570b4ee3ff43", 1348588],
                ["sorabeat/f43ca35b-f0a3-460f-81e4-851a4a41ff9b", 1363876],
            ]
            assert await node.select(
                "SELECT count(*), min(type) FROM rtc_stats WHERE source = 'sora_api'"
            ) == [[3, "connection.rtc"]]
            text = generate_latest(node.metrics.registry).decode()
            found = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            assert found[("sora_up", (("node", sora.url),))] == 1
            key = ("sora_connections_total", (("node", sora.url), ("state", "created")))
            assert found[key] == 2
            assert found[("sora_erlang_vm_memory_total", (("node", sora.url),))] == 1234
            received = ("rtclake_records_received_total", (("source", "sora_api"),))
            assert found[received] == 1 + 2 + 3
            # the same client stats polled again are one row (rtc_stats' identity)
            await poller.poll_once()
            assert await node.count("rtc_stats") == 3
            assert await node.count("sora_stats_report") == 2

    asyncio.run(scenario())


def test_a_500_and_a_timeout_count_errors_store_nothing_and_polling_goes_on(
    tmp_path: Path, sora: FakeSora
) -> None:
    sora.answer(api.GET_STATS_REPORT, Answer(500, b'{"error": "internal"}'))
    sora.answer(api.GET_STATS_ALL_CONNECTIONS, Answer(body=b"[]", delay=5.0))
    sora.answer(api.LIST_RTC_STATS, Answer(body=b"[{"))

    async def scenario() -> None:
        async with rtclake_node(tmp_path) as node:
            poller = node.poller(sora, timeout=0.3, interval=0.2)
            started = time.monotonic()
            await poller.poll_once()
            assert time.monotonic() - started < 3  # the timeout, not the server, ended it
            assert node.errors("GetStatsReport", "http_500") == 1
            assert node.errors("GetStatsAllConnections", "timeout") == 1
            assert node.errors("ListRtcStats", "bad_json") == 1
            for table in ("sora_stats_report", "sora_connection_counters", "rtc_stats"):
                assert await node.count(table) == 0
            text = generate_latest(node.metrics.registry).decode()
            assert f'sora_up{{node="{sora.url}"}} 0.0' in text
            assert "sora_connections_total" not in text

            good_answers(sora)
            await poller.start()
            try:
                deadline = time.monotonic() + 10
                while node.received() < 1 + 2 + 3:  # one good round
                    assert time.monotonic() < deadline, "polling did not go on"
                    await asyncio.sleep(0.05)
            finally:
                await poller.stop()
            assert await node.count("sora_stats_report") >= 1
            assert await node.count("sora_connection_counters") >= 2
            text = generate_latest(node.metrics.registry).decode()
            assert f'sora_up{{node="{sora.url}"}} 1.0' in text

    asyncio.run(scenario())


def test_a_node_without_list_rtc_stats_is_not_asked_again(tmp_path: Path, sora: FakeSora) -> None:
    sora.answer(api.LIST_RTC_STATS, Answer(404, b'{"error": "unknown target"}'))

    async def scenario() -> None:
        async with rtclake_node(tmp_path) as node:
            poller = node.poller(sora)
            for _ in range(3):
                await poller.poll_once()
            assert sora.calls.count(api.TARGETS[api.LIST_RTC_STATS]) == 1
            assert sora.calls.count(api.TARGETS[api.GET_STATS_REPORT]) == 3
            assert node.errors("ListRtcStats", "unsupported") == 1
            assert await node.count("sora_stats_report") == 3

    asyncio.run(scenario())


def test_an_answer_a_table_refuses_stores_nothing(tmp_path: Path, sora: FakeSora) -> None:
    report = fixture("GetStatsReport_2025.json")
    report["total_connection_created"] = "many"  # a counter that is not a number
    sora.answer(api.GET_STATS_REPORT, Answer(body=json.dumps(report).encode()))

    async def scenario() -> None:
        async with rtclake_node(tmp_path) as node:
            await node.poller(sora).poll_once()
            assert node.errors("GetStatsReport", "invalid_record") == 1
            assert await node.count("sora_stats_report") == 0
            assert await node.count("sora_connection_counters") == 2  # the others are fine
            assert (
                'sora_up{node="' + sora.url + '"} 0.0'
                in generate_latest(node.metrics.registry).decode()
            )

    asyncio.run(scenario())


def test_a_full_spool_drops_the_poll_but_not_the_latest_values(
    tmp_path: Path, sora: FakeSora
) -> None:
    async def scenario() -> None:
        spool = Spool(
            tmp_path / "spool",
            max_bytes=8000,  # each answer would fit an empty spool, but not beside ...
            segment_max_bytes=1 << 20,
            segment_max_records=1000,
            flush_interval=60,
            fsync=False,
        )
        await spool.start()
        filler = EntryHeader(
            table="telemetry", source="t", stream="s", kind="telemetry", received_us=1, records=1
        )
        await spool.append(filler, b'{"pad": "%s"}' % (b"x" * 5000))  # ... what waits here
        metrics = Metrics()
        config = SoraApiConfig(nodes=[sora.url], timeout=2)
        try:
            await SoraApiPoller(config, Intake(spool, metrics), registry()).poll_once()
        finally:
            await spool.close()
        get = metrics.registry.get_sample_value
        for operation in api.TARGETS:
            labels = {"node": sora.url, "operation": operation, "reason": "spool_full"}
            assert get("rtclake_sora_api_errors_total", labels) == 1
        assert get("sora_up", {"node": sora.url}) == 1
        assert get("sora_connections_total", {"node": sora.url, "state": "created"}) == 2

    asyncio.run(scenario())


def test_an_unreachable_node_is_a_connection_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rtclake_node(tmp_path) as node:
            server = FakeSora().start()
            server.stop()  # nothing listens on its port any more
            await node.poller(server, list_rtc_stats=False).poll_once()
            assert node.errors("GetStatsReport", "connection") == 1
            assert node.errors("GetStatsAllConnections", "connection") == 1

    asyncio.run(scenario())


def test_config_refuses_a_node_that_is_not_an_http_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="not an http"):
        SoraApiConfig(nodes=["127.0.0.1:3000"])
    with pytest.raises(pydantic.ValidationError, match="interval"):
        SoraApiConfig(interval=0)


def test_rtclake_run_polls_configured_nodes(sora: FakeSora, make_server: Any) -> None:
    server = make_server(
        RTCLAKE_SOURCES__SORA_API__TYPE="sora_api",
        RTCLAKE_SOURCES__SORA_API__NODES=json.dumps([sora.url]),
        RTCLAKE_SOURCES__SORA_API__INTERVAL="0.5",
    )
    sql = "SELECT count(*) > 0 FROM sora_stats_report, sora_connection_counters"
    assert server.wait_rows(sql, 1) == 1  # both tables have rows
    metrics = httpx.get(server.url + "/metrics").text
    assert "sora_connections_total{" in metrics
