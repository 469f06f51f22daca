"""The registry: every table, component type and file rule this installation knows.

The configuration names components, Vector-style: ``sources:``, ``processors:`` and
``sinks:`` map a name (``[a-z0-9_]+``) to ``{type: ..., ...}``. Each type is registered
once, with the model of its settings and the function that builds it:

- the generic types of rtclake itself (``http_ingest``, ``file_tail``, ``lake``) are
  registered by :func:`load_registry`;
- integrations (``rtclake.integrations.sora``, ...) and third-party packages register
  through Python entry points: the group ``rtclake.integrations`` holds functions
  ``register(registry)`` that add tables, component types, default components and file
  rules; the groups ``rtclake.sources``, ``rtclake.processors`` and ``rtclake.sinks`` hold
  one :class:`ComponentType` each.

So core, pipeline and web import no integration: they see what the registry holds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

import orjson
from pydantic import BaseModel, Field, SecretStr, model_validator

from rtclake.config import Section
from rtclake.errors import ConfigError
from rtclake.tables import DEAD_LETTERS, EVENTS, TELEMETRY, Table, TableRegistry, View

if TYPE_CHECKING:
    from rtclake.config import Settings
    from rtclake.delivery import Delivery
    from rtclake.derive import Derivation
    from rtclake.intake import Intake
    from rtclake.metrics import Metrics

Kind = Literal["source", "processor", "sink"]
KINDS: tuple[Kind, ...] = ("source", "processor", "sink")
SECTION: dict[Kind, str] = {"source": "sources", "processor": "processors", "sink": "sinks"}
COMPONENT_NAME = re.compile(r"[a-z0-9_]+")

C = TypeVar("C", bound="ComponentConfig")


def _is_text(annotation: Any) -> bool:
    """Whether a field takes text as it is (``str``, ``Path``, ``SecretStr``, optional)."""
    if get_origin(annotation) in (Union, UnionType):
        return all(_is_text(a) for a in get_args(annotation) if a is not NoneType)
    if get_origin(annotation) is Literal:
        return True
    return annotation in (str, Path, SecretStr)


class ComponentConfig(Section):
    """What every component's settings share. A type's settings subclass one of
    :class:`SourceConfig`, :class:`ProcessorConfig` or :class:`SinkConfig`."""

    type: str = Field(default="", description="the registered type of the component")
    enabled: bool = Field(default=True, description="false: configured but not built")

    @model_validator(mode="before")
    @classmethod
    def _json_from_environment(cls, data: Any) -> Any:
        # RTCLAKE_SOURCES__X__DIRS='["/var/log/sora"]': a list or mapping given as text
        # (as environment variables give them) is read as JSON.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key, value in data.items():
            info = cls.model_fields.get(key)
            if (
                info is not None
                and isinstance(value, str)
                and value.lstrip()[:1] in ("[", "{")
                and not _is_text(info.annotation)
            ):
                with contextlib.suppress(orjson.JSONDecodeError):  # validation names it
                    out[key] = orjson.loads(value)
        return out


class SourceConfig(ComponentConfig):
    """Settings of a source."""


class ProcessorConfig(ComponentConfig):
    """Settings of a processor: which records it sees, and how long it may take."""

    tables: list[str] | None = Field(
        default=None,
        description="only records of these tables; default: the type's (most: every table)",
    )
    sources: list[str] | None = Field(
        default=None, description="only records from these sources; default: every source"
    )
    timeout: float = Field(
        default=5.0, gt=0, description="seconds one call may take; then its input goes on"
    )


class SinkConfig(ComponentConfig):
    """Settings of a sink."""


@dataclass(frozen=True)
class BuildContext:
    """What a component's ``build`` function gets besides its settings."""

    name: str  # the component's name in the configuration
    settings: Settings
    registry: Registry
    metrics: Metrics
    intake: Intake | None = None  # sources and processors hand records over through it
    delivery: Delivery | None = None  # sources that skip the spool (imports) deliver here

    @property
    def tables(self) -> TableRegistry:
        return self.registry.tables

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def node(self) -> str:
        return self.settings.node


@dataclass(frozen=True)
class ComponentType(Generic[C]):
    """A type of source, processor or sink: its settings model and its builder."""

    kind: Kind
    name: str
    config: type[C]
    build: Callable[[C, BuildContext], Any]
    description: str = ""


Importer = Callable[..., Any]
# write(folder, *, now, seed, minutes) -> manifest: what `rtclake demo` runs for an
# integration. It writes realistic generated log files into folder, covering the minutes up
# to now (the same files for the same seed and now), and returns a JSON-able manifest whose
# "files" maps each file written to its lines; the command saves it as manifest.json.
DemoWriter = Callable[..., dict[str, Any]]


@dataclass
class Registry:
    """Tables, component types, default components, file rules and importers."""

    tables: TableRegistry = field(default_factory=TableRegistry)
    types: dict[Kind, dict[str, ComponentType[Any]]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    defaults: dict[Kind, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    file_rules: list[Callable[[str], str | None]] = field(default_factory=list)
    importers: dict[str, Importer] = field(default_factory=dict)
    demos: dict[str, DemoWriter] = field(default_factory=dict)
    dashboards: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)

    def add_table(self, *tables: Table) -> None:
        for table in tables:
            self.tables.add(table)

    def add_derivation(self, *derivations: Derivation) -> None:
        """Tables derived from each batch of another as it is stored (writer and imports),
        with state carried from batch to batch; their output tables are added too."""
        for derivation in derivations:
            self.add_table(*derivation.outputs)
            self.tables.derivations.append(derivation)

    def add_view(self, *views: View) -> None:
        """Views every query connection creates, in this order, after the tables'."""
        for view in views:
            self.tables.add_view(view)

    def add(self, component_type: ComponentType[Any]) -> None:
        """Register a type; a name may be registered once per kind."""
        known = self.types[component_type.kind]
        if not COMPONENT_NAME.fullmatch(component_type.name):
            raise ValueError(f"type name {component_type.name!r}: use [a-z0-9_]+")
        if component_type.name in known:
            raise ValueError(f"{component_type.kind} type {component_type.name!r} registered twice")
        known[component_type.name] = component_type

    def source(
        self, name: str, config: type[C], description: str = ""
    ) -> Callable[[Callable[[C, BuildContext], Any]], Callable[[C, BuildContext], Any]]:
        """Decorator: register ``build`` as the source type ``name``."""
        return self._decorator("source", name, config, description)

    def processor(
        self, name: str, config: type[C], description: str = ""
    ) -> Callable[[Callable[[C, BuildContext], Any]], Callable[[C, BuildContext], Any]]:
        """Decorator: register ``build`` as the processor type ``name``."""
        return self._decorator("processor", name, config, description)

    def sink(
        self, name: str, config: type[C], description: str = ""
    ) -> Callable[[Callable[[C, BuildContext], Any]], Callable[[C, BuildContext], Any]]:
        """Decorator: register ``build`` as the sink type ``name``."""
        return self._decorator("sink", name, config, description)

    def _decorator(
        self, kind: Kind, name: str, config: type[C], description: str
    ) -> Callable[[Callable[[C, BuildContext], Any]], Callable[[C, BuildContext], Any]]:
        def register(build: Callable[[C, BuildContext], Any]) -> Callable[[C, BuildContext], Any]:
            self.add(ComponentType(kind, name, config, build, description or (build.__doc__ or "")))
            return build

        return register

    def add_default(self, kind: Kind, name: str, config: dict[str, Any]) -> None:
        """A component that runs without being configured (its name in the configuration
        overrides it; ``enabled: false`` turns it off)."""
        self.defaults[kind][name] = config

    def add_file_rule(self, rule: Callable[[str], str | None]) -> None:
        """A rule naming the table of a log file by its name (None: not this rule's)."""
        self.file_rules.append(rule)

    def table_for_file(self, filename: str) -> str | None:
        """The table of a log file by the first rule that knows its name."""
        for rule in self.file_rules:
            table = rule(filename)
            if table is not None:
                return table
        return None

    def add_importer(self, scheme: str, importer: Importer) -> None:
        """What ``rtclake import SCHEME://...`` runs (for example Kohaku's S3 layout)."""
        self.importers[scheme] = importer

    def add_demo(self, name: str, write: DemoWriter) -> None:
        """What ``rtclake demo`` writes into ``DIR/NAME/`` and imports (a name once)."""
        if name in self.demos:
            raise ValueError(f"demo {name!r} registered twice")
        self.demos[name] = write

    def add_dashboard(self, uid: str, build: Callable[[], dict[str, Any]]) -> None:
        """A Grafana dashboard: ``build`` returns its JSON model, which ``python -m
        rtclake.grafana`` writes to ``deploy/grafana/dashboards/UID.json``."""
        if uid in self.dashboards:
            raise ValueError(f"dashboard {uid!r} registered twice")
        self.dashboards[uid] = build

    def parse(self, kind: Kind, name: str, raw: Any) -> ComponentConfig:
        """Validate one component's settings against its type's model (raises
        ``pydantic.ValidationError``, or :class:`ConfigError` for an unknown type)."""
        section = SECTION[kind]
        if not COMPONENT_NAME.fullmatch(name):
            raise ConfigError(f"{section}.{name}: a component name is [a-z0-9_]+")
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise ConfigError(
                f"{section}.{name}: give its type, e.g. {section}: {{{name}: {{type: ...}}}}"
                f" [or RTCLAKE_{section.upper()}__{name.upper()}__TYPE]"
            )
        component_type = self.types[kind].get(raw["type"])
        if component_type is None:
            known = ", ".join(sorted(self.types[kind])) or "none"
            raise ConfigError(
                f"{section}.{name}.type: unknown {kind} type {raw['type']!r} (known: {known})"
            )
        config: ComponentConfig = component_type.config.model_validate(raw)
        return config

    def merged(self, kind: Kind, given: dict[str, Any]) -> dict[str, Any]:
        """The default components of ``kind`` and ``given``; settings given for a default
        component's name update its defaults (``{http: {enabled: false}}``). Order (the
        order processors run in): the defaults not named in ``given``, then ``given``."""
        defaults = self.defaults[kind]
        merged = {name: dict(raw) for name, raw in defaults.items() if name not in given}
        for name, raw in given.items():
            if name in defaults and isinstance(raw, dict):
                merged[name] = {**defaults[name], **raw}
            else:
                merged[name] = raw
        return merged

    def configured(
        self, kind: Kind, given: dict[str, Any]
    ) -> Iterator[tuple[str, ComponentType[Any], ComponentConfig]]:
        """The enabled components of ``kind``: the defaults, overridden by ``given``."""
        for name, raw in self.merged(kind, given).items():
            config = self.parse(kind, name, raw)
            if config.enabled:
                yield name, self.types[kind][config.type], config


def _load(entry: EntryPoint) -> Any:
    try:
        return entry.load()
    except Exception as exc:  # a broken plugin: name it, not a traceback into importlib
        raise ConfigError(
            f"entry point {entry.name} = {entry.value} (group {entry.group}) cannot be"
            f" loaded: {type(exc).__name__}: {exc}"
        ) from exc


def _register_entry_points(registry: Registry) -> None:
    installed = entry_points()  # one scan of the installed distributions
    for entry in installed.select(group="rtclake.integrations"):
        register = _load(entry)
        try:
            register(registry)
        except Exception as exc:  # a broken integration: name it
            raise ConfigError(
                f"entry point {entry.name} = {entry.value} (group {entry.group}) failed to"
                f" register: {type(exc).__name__}: {exc}"
            ) from exc
    for kind in KINDS:
        for entry in installed.select(group=f"rtclake.{SECTION[kind]}"):
            component_type = _load(entry)
            if not isinstance(component_type, ComponentType) or component_type.kind != kind:
                raise ConfigError(
                    f"entry point {entry.name} = {entry.value} in group rtclake.{SECTION[kind]}"
                    f" is not a {kind} ComponentType"
                )
            try:
                registry.add(component_type)
            except ValueError as exc:  # two packages registering one name
                raise ConfigError(f"entry point {entry.name} = {entry.value}: {exc}") from exc


def load_registry(*, plugins: bool = True) -> Registry:
    """A registry of the generic tables and component types, then (``plugins``) the
    integrations and third-party components installed as entry points."""
    from rtclake import builtins

    registry = Registry()
    registry.add_table(TELEMETRY, EVENTS, DEAD_LETTERS)
    builtins.register(registry)
    if plugins:
        _register_entry_points(registry)
    return registry


def effective_components(settings: Settings, registry: Registry) -> dict[str, Any]:
    """``sources``, ``processors`` and ``sinks`` as they run: the defaults and the
    configured ones, each with every setting of its type (secrets masked)."""
    return {
        SECTION[kind]: {
            name: registry.parse(kind, name, raw).model_dump(mode="json")
            for name, raw in registry.merged(kind, getattr(settings, SECTION[kind])).items()
        }
        for kind in KINDS
    }


def check_components(settings: Settings, registry: Registry) -> None:
    """Validate every configured component's settings; raise :class:`ConfigError` naming
    the key at fault (with its file key and environment variable)."""
    from pydantic import ValidationError

    from rtclake.config import describe_error

    problems: list[str] = []
    if settings.lake.enabled and "lake" in settings.sinks:
        problems.append(
            "sinks.lake: the name lake is the lake: section's sink (the one queries read);"
            " give this sink another name"
        )
    for kind in KINDS:
        section = SECTION[kind]
        given: dict[str, Any] = getattr(settings, section)
        for name, raw in registry.merged(kind, given).items():
            try:
                registry.parse(kind, name, raw)
            except ConfigError as exc:
                problems.append(str(exc))
            except ValidationError as exc:
                problems += [describe_error(err, prefix=(section, name)) for err in exc.errors()]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


__all__ = [
    "BaseModel",
    "BuildContext",
    "ComponentConfig",
    "ComponentType",
    "ProcessorConfig",
    "Registry",
    "SinkConfig",
    "SourceConfig",
    "check_components",
    "load_registry",
]
