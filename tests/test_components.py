"""Components from the registry: third-party types through entry points (the examples
under ``examples/plugin``), the processor chain's contract, dead letters, and the rule that
core, pipeline and web import no integration."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rtclake.config import Settings, load_settings
from rtclake.errors import ConfigError
from rtclake.processors.base import Context, Processor, Record, RecordProcessor
from rtclake.registry import (
    BuildContext,
    ComponentType,
    ProcessorConfig,
    SinkConfig,
    load_registry,
)
from rtclake.service import Service
from rtclake.sinks.base import Batch, Rejected, Sink
from rtclake.testing import MemorySink, RunningServer

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugin"
SRC = ROOT / "src" / "rtclake"


def install_example(site: Path) -> None:
    """What ``pip install`` of examples/plugin leaves for entry points: a dist-info
    folder with the package's entry points (taken from its pyproject.toml)."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    info = site / "rtclake_example-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_a_third_party_source_processor_and_sink_run_from_their_entry_points(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    install_example(site)
    copies = tmp_path / "copies"
    config = tmp_path / "rtclake.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": {"beat": {"type": "heartbeat", "interval": 0.2}},
                "processors": {
                    "alarms": {"type": "threshold", "tables": ["telemetry"], "above": 40}
                },
                "sinks": {
                    "copy": {"type": "jsonl_files", "dir": str(copies), "max_record_bytes": 400}
                },
            }
        )
    )
    data = tmp_path / "data"
    data.mkdir()
    server = RunningServer(
        data,
        env={"RTCLAKE_CONFIG": str(config), "PYTHONPATH": f"{site}:{PLUGIN}"},
    ).start()
    try:
        readings = [
            {"device_id": "d1", "value": 12},
            {"device_id": "d1", "value": 55},  # above 40: an alarm
            {"device_id": "d2", "value": 3, "note": "x" * 500},  # the sink refuses it
        ]
        answer = httpx.post(server.url + "/ingest/sensors", json=readings)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"accepted": 3, "reply": {"alarms": 1}}  # processor's reply

        # source -> lake: heartbeats, under the source's name
        assert server.wait_rows("SELECT count(*) > 2 FROM telemetry WHERE source = 'beat'", 1)
        # processor: every reading has its level, and the alarm it emitted is in events
        levels = server.query(
            "SELECT extra->>'level' FROM telemetry WHERE stream = 'sensors' ORDER BY 1"
        )["rows"]
        assert levels == [["alarm"], ["ok"], ["ok"]]
        server.wait_rows("SELECT count(*) FROM events WHERE type = 'threshold_alarm'", 1)
        [(source, extra)] = server.query("SELECT source, extra FROM events")["rows"]
        assert source == "alarms"
        assert extra == {"device_id": "d1", "value": 55, "above": 40.0}  # JSON column
        # sink: the refused record is a dead letter, with the sink and the reason
        server.wait_rows("SELECT count(*) FROM dead_letters", 1)
        letter = server.query("SELECT sink, table_name, reason, record FROM dead_letters")["rows"][
            0
        ]
        assert letter[:2] == ["copy", "telemetry"]
        assert "more than 400" in letter[2]
        record = json.loads(letter[3])  # the record as the sink got it
        assert (record["device_id"], record["extra"]["note"]) == ("d2", "x" * 500)
        # ... and every other record reached the sink's files, the refused one did not
        copied = [json.loads(line) for f in (copies / "telemetry").glob("*.jsonl")
                  for line in f.read_text().splitlines()]  # fmt: skip
        sensors = sorted(r["device_id"] for r in copied if r["stream"] == "sensors")
        assert sensors == ["d1", "d1"]
        assert server.metric("rtclake_dead_letters_total", sink="copy", table="telemetry") == 1
    finally:
        # uvicorn ends a graceful shutdown by raising the signal it caught again
        assert server.stop() in (0, -signal.SIGTERM), server.log()
        assert "Traceback" not in server.log()


# -- the registry and the chain, in process -----------------------------------------


class RejectOdd(Sink):
    """Stores even ``n``; refuses odd ``n`` for good."""

    def __init__(self) -> None:
        self.kept: list[int] = []

    def write(self, batch: Batch) -> None:
        refused = {}
        for name, table in batch.tables.items():
            values = table.column("extra").to_pylist()
            bad = []
            for index, extra in enumerate(values):
                n = json.loads(extra)["n"] if extra else None
                if isinstance(n, int) and n % 2:
                    bad.append((index, f"odd n={n}"))
                elif n is not None:
                    self.kept.append(n)
            refused[name] = bad
        if any(refused.values()):
            raise Rejected(refused)


def run_service(
    settings: Settings, body: bytes, sql: Sequence[str] = (), **kw: Any
) -> tuple[Service, Any, list[list[dict[str, Any]]]]:
    """Start a service, hand ``body`` to the intake for stream ``s``, store it, run the
    queries ``sql``, stop."""

    async def main() -> Any:
        service = Service(settings, **kw)
        await service.start()
        try:
            table = service.intake.table_for("s")
            taken = await service.intake.take(
                "test", "s", table, service.intake.validate(body, table)
            )
            assert await service.writer.drain(20)
            results = [service.query.run(q).table.to_pylist() for q in sql]
            return service, taken, results
        finally:
            await service.stop()

    return asyncio.run(main())


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", node="t", spool={"flush_interval": 0.1}, **values)


def test_types_registered_in_code_are_built_from_the_configuration(tmp_path: Path) -> None:
    registry = load_registry()
    sinks: list[RejectOdd] = []

    def build_sink(config: SinkConfig, ctx: BuildContext) -> Sink:
        sinks.append(RejectOdd())
        return sinks[-1]

    def double(record: Record, ctx: Context) -> list[Record]:
        ctx.emit({"n": record["n"] * 10, "from": ctx.source}, table="events")
        return [record, {**record, "copy": True}]

    registry.add(ComponentType("sink", "reject_odd", SinkConfig, build_sink))
    registry.add(
        ComponentType(
            "processor", "double", ProcessorConfig, lambda config, ctx: RecordProcessor(double)
        )
    )
    settings = settings_for(
        tmp_path,
        processors={"twice": {"type": "double", "tables": ["telemetry"]}},
        sinks={"odd": {"type": "reject_odd"}},
    )
    queries = [
        "SELECT extra->>'n' AS n, (extra->>'copy') IS NOT NULL AS copy, source FROM telemetry"
        " ORDER BY ALL",
        "SELECT source, extra->>'n' AS n FROM events ORDER BY n",
        "SELECT sink, table_name, reason, record FROM dead_letters ORDER BY record",
    ]
    _, taken, (rows, events, letters) = run_service(
        settings, b'{"n": 1}\n{"n": 2}\n', queries, registry=registry
    )
    assert taken.records == 2  # the store-stage processor runs after the spool
    assert sorted(sinks[0].kept) == [2, 2, 10, 20]  # duplicated, plus the emitted events
    assert [tuple(r.values()) for r in rows] == [
        ("1", False, "test"), ("1", True, "test"), ("2", False, "test"), ("2", True, "test"),
    ]  # fmt: skip
    assert events == [{"source": "twice", "n": "10"}, {"source": "twice", "n": "20"}]
    assert [json.loads(r["record"])["source"] for r in letters] == ["test", "test"]
    assert [(r["sink"], r["table_name"], r["reason"]) for r in letters] == [
        ("odd", "telemetry", "odd n=1"), ("odd", "telemetry", "odd n=1"),
    ]  # fmt: skip


class Failing(Processor):
    def __init__(self, how: str) -> None:
        self.how = how

    def process(self, records: list[Record], ctx: Context) -> list[Record]:
        for record in records:
            record["touched_by_" + self.how] = True  # must not survive the failure
        ctx.emit({"n": -1}, table="events")  # nor this
        ctx.reply("never sent")
        if self.how == "raise":
            raise RuntimeError("boom")
        if self.how == "sleep":
            time.sleep(2)
        if self.how == "invalid":
            return [{"time": "not a time"}]
        return records


def test_a_failing_processor_never_loses_the_record_nor_stops_the_others(tmp_path: Path) -> None:
    def tag(record: Record, ctx: Context) -> Record:
        ctx.reply({"tagged": True})
        return {**record, "tag": "kept"}

    processors: list[Processor] = [Failing("raise"), Failing("sleep"), Failing("invalid")]
    for processor, name in zip(processors, ["raises", "sleeps", "invalid"], strict=True):
        processor.name, processor.stage, processor.timeout = name, "intake", 0.3
    last = RecordProcessor(tag, name="tag", stage="intake")
    sink = MemorySink()
    service, taken, _ = run_service(
        settings_for(tmp_path), b'{"n": 1}', processors=[*processors, last], sinks=[sink]
    )
    assert taken.records == 1 and taken.reply is not None
    assert taken.reply.json_value() == {"tagged": True}
    [row] = sink.table("telemetry").to_pylist()  # type: ignore[union-attr]
    assert json.loads(row["extra"]) == {"n": 1, "tag": "kept"}
    assert sink.table("events") is None  # the failed processors' emits were dropped
    errors = service.chain.errors  # type: ignore[union-attr]
    for name, reason in [("raises", "error"), ("sleeps", "timeout"), ("invalid", "invalid_output")]:
        assert errors.labels(name, reason)._value.get() == 1


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"sora": {"logs": {"dirs": ["/var/log/sora"]}}}, "sources: {sora_logs: {type: sora_logs"),
        ({"routes": [{"stream": "a", "table": "events"}]}, "router.routes"),
    ],
)
def test_old_keys_are_refused_with_the_new_spelling(
    tmp_path: Path, given: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(given))
    with pytest.raises(ConfigError, match="moved") as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_components_are_configured_by_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTCLAKE_SOURCES__APP__TYPE", "file_tail")
    monkeypatch.setenv("RTCLAKE_SOURCES__APP__DIRS", json.dumps([str(tmp_path)]))
    monkeypatch.setenv("RTCLAKE_SOURCES__APP__FILES", '{"app-*.log": "events"}')
    settings = load_settings()
    assert settings.sources["app"]["type"] == "file_tail"
    config = load_registry().parse("source", "app", settings.sources["app"])
    assert config.files == {"app-*.log": "events"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"sources": {"x": {"type": "nope"}}}, "sources.x.type: unknown source type 'nope'"),
        ({"sources": {"X-1": {"type": "file_tail"}}}, "a component name is [a-z0-9_]+"),
        ({"sinks": {"s": {}}}, "sinks.s: give its type"),
        (
            {"sources": {"t": {"type": "file_tail", "table": "events"}}},
            "sources.t.dirs: Field required [key 'sources.t.dirs' in a config file,"
            " or RTCLAKE_SOURCES__T__DIRS]",
        ),
        (
            {"processors": {"p": {"type": "sorabeat_fields", "timeout": 0}}},
            "processors.p.timeout",
        ),
    ],
)
def test_component_mistakes_name_the_key(
    tmp_path: Path, given: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(given))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_a_configured_file_tail_stores_any_json_lines_log_in_any_table(
    tmp_path: Path, make_server: Any
) -> None:
    logs = tmp_path / "app-logs"
    logs.mkdir()
    server = make_server(
        RTCLAKE_SOURCES__APP__TYPE="file_tail",
        RTCLAKE_SOURCES__APP__DIRS=json.dumps([str(logs)]),
        RTCLAKE_SOURCES__APP__FILES=json.dumps({"audit-*.jsonl": "events", "*.log": "events"}),
        RTCLAKE_SOURCES__APP__ROTATE_WAIT="0.5",
        RTCLAKE_SOURCES__APP__POLL_INTERVAL="0.1",
    )
    (logs / "audit-1.jsonl").write_text('{"id": "a1"}\n{"id": "a2"}\n')
    (logs / "other.jsonl").write_text('{"id": "ignored"}\n')
    (logs / "app.log").write_text('{"id": "l1"}\n')
    assert server.wait_rows("SELECT count(*) FROM events WHERE source = 'app'", 3) == 3
    # rotation by rename: the rest of the renamed file, then the new one
    with open(logs / "app.log", "a") as fh:
        fh.write('{"id": "l2"}\n')
    (logs / "app.log").rename(logs / "app.log.1")
    (logs / "app.log").write_text('{"id": "l3"}\n')
    assert server.wait_rows("SELECT count(*) FROM events WHERE source = 'app'", 5) == 5
    ids = server.query("SELECT id FROM events ORDER BY id")["rows"]
    assert ids == [["a1"], ["a2"], ["l1"], ["l2"], ["l3"]]
    assert (server.data_dir / "app.checkpoint.json").exists()


def test_sora_webhooks_and_http_ingest_are_on_by_default_and_can_be_turned_off(
    tmp_path: Path,
) -> None:
    def paths(**values: Any) -> set[str]:
        from rtclake.web.app import create_app

        service = Service(settings_for(tmp_path, **values))
        return {getattr(r, "path", "") for r in create_app(service).routes}

    default = paths()
    assert {"/ingest/{stream}", "/sora/webhooks/session"} <= default
    off = paths(sources={"sora_webhooks": {"type": "sora_webhooks", "enabled": False}})
    assert "/ingest/{stream}" in off and "/sora/webhooks/session" not in off


# -- layering --------------------------------------------------------------------------


def test_no_module_outside_the_integrations_imports_one() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "integrations" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n.startswith("rtclake.integrations") for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
