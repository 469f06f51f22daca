"""docs/CONFIG.md: generated from the models, up to date, and naming every setting."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from rtclake.config import Settings
from rtclake.config_doc import render
from rtclake.registry import KINDS, SECTION, load_registry

CONFIG_MD = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"


def test_the_committed_reference_is_up_to_date() -> None:
    committed = CONFIG_MD.read_text(encoding="utf-8") if CONFIG_MD.exists() else ""
    assert committed == render(), (
        "docs/CONFIG.md is out of date with the settings models;"
        " regenerate it: python -m rtclake.config_doc > docs/CONFIG.md"
    )


def _settings_keys(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(dotted key, environment variable) of every field, recursing into sections."""
    keys: list[tuple[str, str]] = []
    for name, info in model.model_fields.items():
        where = (*path, name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _settings_keys(annotation, where)
        else:
            keys.append((".".join(where), "RTCLAKE_" + "__".join(p.upper() for p in where)))
    return keys


def _mentions(text: str, key: str, env: str) -> bool:
    """Whether one line of ``text`` names both the key and its variable, as code."""
    return any(f"`{key}`" in line and f"`{env}`" in line for line in text.splitlines())


def _subsection(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    start = text.index("\n" + heading + "\n")
    rest = text[start + len(heading) + 2 :]
    ends = [
        i
        for i in (rest.find("\n# "), rest.find("\n## "), rest.find("\n### "))
        if i >= 0 and rest[i + 1 :].split(" ", 1)[0] <= level
    ]
    return rest[: min(ends)] if ends else rest


def test_every_setting_is_documented_with_its_variable() -> None:
    text = render()
    keys = _settings_keys(Settings)
    assert ("server.port", "RTCLAKE_SERVER__PORT") in keys  # the walk itself works
    missing = [f"{key} ({env})" for key, env in keys if not _mentions(text, key, env)]

    registry = load_registry()
    checked = 0
    for kind in KINDS:
        section = SECTION[kind]
        kind_text = _subsection(text, "## " + section.capitalize())
        for name, component_type in registry.types[kind].items():
            try:
                type_text = _subsection(kind_text, f"### `{name}`")
            except ValueError:
                missing.append(f"{kind} type {name}")
                continue
            for key in component_type.config.model_fields:
                env = f"RTCLAKE_{section.upper()}__<NAME>__{key.upper()}"
                checked += 1
                if not _mentions(type_text, key, env):
                    missing.append(f"{section}.<{name}>.{key} ({env})")
        for default in registry.defaults[kind]:
            if f"`{default}`" not in kind_text:
                missing.append(f"default {kind} {default}")
    assert checked > 0
    assert not missing, "not in the generated reference: " + ", ".join(missing)
