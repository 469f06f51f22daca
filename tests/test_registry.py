"""The registry: types registered once, defaults that settings update, file rules, and
errors that name the component and the entry point at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from rtclake.config import load_settings
from rtclake.errors import ConfigError
from rtclake.registry import (
    ComponentType,
    ProcessorConfig,
    Registry,
    SinkConfig,
    SourceConfig,
    load_registry,
)


class ListConfig(SourceConfig):
    dirs: list[Path]
    label: str = "x"


def nothing(config: Any, ctx: Any) -> None:
    return None


def test_a_type_is_registered_once_under_a_valid_name() -> None:
    registry = Registry()
    registry.add(ComponentType("sink", "mine", SinkConfig, nothing))
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(ComponentType("sink", "mine", SinkConfig, nothing))
    with pytest.raises(ValueError, match=r"\[a-z0-9_\]\+"):
        registry.add(ComponentType("sink", "Mine-1", SinkConfig, nothing))
    registry.add(ComponentType("source", "mine", SourceConfig, nothing))  # another kind


def test_settings_given_for_a_default_component_update_it() -> None:
    registry = Registry()
    registry.add(ComponentType("source", "lister", ListConfig, nothing))
    registry.add_default("source", "main", {"type": "lister", "dirs": ["/a"]})
    on = [(n, c.model_dump()) for n, _, c in registry.configured("source", {})]
    assert on == [("main", {"type": "lister", "enabled": True, "dirs": [Path("/a")],
                            "label": "x"})]  # fmt: skip
    assert list(registry.configured("source", {"main": {"enabled": False}})) == []
    given = {"main": {"label": "y"}, "more": {"type": "lister", "dirs": []}}
    changed = registry.configured("source", given)
    labels = [(n, c.label) for n, _, c in changed]  # type: ignore[attr-defined]
    assert labels == [("main", "y"), ("more", "x")]


def test_lists_and_maps_given_as_text_are_read_as_json() -> None:
    registry = Registry()
    registry.add(ComponentType("source", "lister", ListConfig, nothing))
    config = registry.parse("source", "x", {"type": "lister", "dirs": '["/a", "/b"]',
                                            "label": "[not json]"})  # fmt: skip
    assert config.dirs == [Path("/a"), Path("/b")]  # type: ignore[attr-defined]
    assert config.label == "[not json]"  # type: ignore[attr-defined]  # text stays text
    with pytest.raises(pydantic.ValidationError, match="dirs"):
        registry.parse("source", "x", {"type": "lister", "dirs": "[broken"})


def test_file_rules_are_asked_in_order() -> None:
    registry = Registry()
    registry.add_file_rule(lambda name: "events" if name.startswith("a") else None)
    registry.add_file_rule(lambda name: "telemetry")
    assert registry.table_for_file("a.jsonl") == "events"
    assert registry.table_for_file("b.jsonl") == "telemetry"
    assert Registry().table_for_file("a.jsonl") is None


def test_the_installed_registry_has_the_generic_and_the_sora_parts() -> None:
    registry = load_registry()
    assert {"telemetry", "events", "dead_letters", "rtc_stats"} <= set(registry.tables.names())
    assert {"http_ingest", "file_tail", "sora_logs", "sora_api", "kohaku_s3"} <= set(
        registry.types["source"]
    )
    assert registry.table_for_file("rtc_stats.jsonl") == "rtc_stats"
    assert "s3" in registry.importers
    bare = load_registry(plugins=False)
    assert "rtc_stats" not in bare.tables and "sora_logs" not in bare.types["source"]


def test_a_broken_entry_point_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "broken_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\n")
    (info / "entry_points.txt").write_text("[rtclake.sinks]\nbad = no_such_module:THING\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"entry point bad = no_such_module:THING .*cannot be"):
        load_registry()


def test_an_entry_point_of_the_wrong_kind_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wrong_kind.py").write_text(
        "from rtclake.registry import ComponentType, SinkConfig\n"
        "THING = ComponentType('sink', 'thing', SinkConfig, lambda c, x: None)\n"
    )
    info = tmp_path / "wrong_kind-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wrong-kind\n")
    (info / "entry_points.txt").write_text("[rtclake.sources]\nthing = wrong_kind:THING\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="is not a source ComponentType"):
        load_registry()


def test_processors_run_in_the_configured_order_after_the_defaults_not_named() -> None:
    registry = Registry()
    registry.add(ComponentType("processor", "p", ProcessorConfig, nothing))
    for name in ("d1", "d2"):
        registry.add_default("processor", name, {"type": "p"})
    given = {"mine": {"type": "p"}, "d1": {"timeout": 2}, "other": {"type": "p"}}
    order = [name for name, _, _ in registry.configured("processor", given)]
    assert order == ["d2", "mine", "d1", "other"]


def test_old_variables_are_refused_and_default_table_still_understood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RTCLAKE_SORA__LOGS__DIRS", '["/var/log/sora"]')
    with pytest.raises(ConfigError, match=r"RTCLAKE_SORA__LOGS__DIRS: .*type: sora_logs"):
        load_settings()
    monkeypatch.delenv("RTCLAKE_SORA__LOGS__DIRS")
    monkeypatch.setenv("RTCLAKE_ROUTES", "[]")
    with pytest.raises(ConfigError, match=r"router\.routes"):
        load_settings()
    monkeypatch.delenv("RTCLAKE_ROUTES")
    monkeypatch.setenv("RTCLAKE_DEFAULT_TABLE", "events")
    assert load_settings().router.default_table == "events"


def test_a_sink_cannot_take_the_lakes_name(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sinks: {lake: {type: lake, root: /tmp/copy}}\n")
    with pytest.raises(ConfigError, match=r"sinks\.lake: the name lake is the lake: section"):
        load_settings(path)
