"""The configuration: one validated model, loaded from YAML or TOML, overridden by env.

Precedence, highest first: ``RTCLAKE_*`` environment variables (nested keys joined by
``__``, e.g. ``RTCLAKE_SERVER__PORT=9000``), the config file, the embedded defaults.
The file is named by ``--config`` or ``RTCLAKE_CONFIG``.
"""

from __future__ import annotations

import difflib
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rtclake.errors import ConfigError

if TYPE_CHECKING:
    from rtclake.registry import Registry

MiB = 1024 * 1024

# Keys of earlier versions, refused with their new spelling.
MOVED = {
    "sora": "sora.logs, sora.api and sora.kohaku_s3 are sources now: write"
    " sources: {sora_logs: {type: sora_logs, dirs: [...]}},"
    " sources: {sora_api: {type: sora_api, nodes: [...]}} and"
    " sources: {kohaku: {type: kohaku_s3, url: s3://...}}"
    " (RTCLAKE_SOURCES__<NAME>__<KEY> in the environment)",
    "routes": "routes moved to router.routes: router: {routes: [{stream: ..., table: ...}]}"
    " (RTCLAKE_ROUTER__ROUTES)",
}


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    """The HTTP server (ingest, webhooks, query API, metrics)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * MiB, gt=0, description="after decompression")
    ingest_token: SecretStr | None = Field(
        default=None, description="bearer token required by /ingest and /sora/* when set"
    )
    query_token: SecretStr | None = Field(
        default=None, description="bearer token required by /api/query when set"
    )
    access_log: bool = Field(default=False, description="log every request (uvicorn's log)")


class SpoolConfig(Section):
    """The write-ahead log every accepted record passes through."""

    dir: Path | None = Field(default=None, description="default: DATA_DIR/spool")
    max_bytes: int = Field(default=1024 * MiB, gt=0, description="ingest answers 503 above this")
    segment_max_bytes: int = Field(default=8 * MiB, gt=0, description="a batch is one segment")
    segment_max_records: int = Field(default=50_000, gt=0)
    flush_interval: float = Field(default=10.0, gt=0, description="seconds before a batch is cut")
    fsync: bool = Field(default=True, description="false only for throwaway test setups")


class LakeConfig(Section):
    """The Parquet lake: a local folder or S3 (any S3-compatible store)."""

    enabled: bool = True
    root: str | None = Field(
        default=None, description="a folder, or s3://BUCKET/PREFIX; default: DATA_DIR/lake"
    )
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, R2, ...); default: $AWS_ENDPOINT_URL"
    )
    access_key_id: str | None = Field(default=None, description="default: $AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr | None = Field(
        default=None, description="default: $AWS_SECRET_ACCESS_KEY"
    )
    region: str | None = Field(default=None, description="default: $AWS_REGION")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    compression_level: int | None = None


class QueryConfig(Section):
    """Limits of the SQL API (``rtclake query`` and ``POST /api/query``), per query unless
    said otherwise. The defaults suit a 2-core host with a few GB of memory: at most
    ``max_concurrent`` x ``memory_limit`` for DuckDB, one thread each."""

    max_rows: int = Field(default=10_000, gt=0)
    timeout: float = Field(default=30.0, gt=0, description="seconds")
    dedup: bool = Field(default=True, description="views hide rows with a repeated record_id")
    threads: int = Field(default=1, gt=0, description="DuckDB threads; 1 leaves a core for ingest")
    memory_limit: ByteSize = Field(
        default=ByteSize(512 * MiB), ge=16 * MiB, description="DuckDB memory, e.g. 512MiB; 422"
    )
    max_temp_bytes: ByteSize = Field(
        default=ByteSize(1024 * MiB), ge=0, description="DuckDB spill files on disk; 422"
    )
    max_result_bytes: ByteSize = Field(
        default=ByteSize(64 * MiB), gt=0, description="the result as Arrow, read in batches; 413"
    )
    max_concurrent: int = Field(default=2, gt=0, description="queries at once, for the process")
    queue_timeout: float = Field(
        default=5.0, ge=0, description="seconds a query waits for a slot, then 429"
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU priority (Linux nice) of the server's query threads, so ingest"
        " keeps its latency while queries run; 0: as the rest of the process",
    )


class WriterConfig(Section):
    """The writer that drains the spool into the sinks."""

    retry_initial: float = Field(default=0.5, gt=0, description="seconds")
    retry_max: float = Field(default=30.0, gt=0, description="seconds")
    maintenance_interval: float = Field(default=300.0, gt=0, description="seconds")


class RouteConfig(Section):
    """Send the records of matching streams to a table (fnmatch patterns, first match wins)."""

    stream: str
    table: str


class RouterConfig(Section):
    """Which table the records of a stream go to: ``routes`` in order, else
    ``default_table``."""

    routes: list[RouteConfig] = Field(default_factory=list)
    default_table: str = "telemetry"


class Settings(BaseSettings):
    """Everything rtclake can be told. Printed by ``rtclake config``."""

    model_config = SettingsConfigDict(
        env_prefix="RTCLAKE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path("rtclake-data")
    node: str = Field(default_factory=socket.gethostname, description="names this node's files")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = "console"
    server: ServerConfig = ServerConfig()
    spool: SpoolConfig = SpoolConfig()
    writer: WriterConfig = WriterConfig()
    lake: LakeConfig = LakeConfig()
    query: QueryConfig = QueryConfig()
    router: RouterConfig = RouterConfig()
    sources: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name -> {type: ..., ...}; see docs/CONFIG.md for the types",
    )
    processors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> {type: ..., ...}, run in this order"
    )
    sinks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> {type: ..., ...}, besides the lake"
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        moved = [MOVED[key] for key in MOVED if key in data]
        if moved:
            raise ConfigError("configuration keys that moved:\n  " + "\n  ".join(moved))
        if "default_table" in data:  # the earlier spelling, still understood
            data = dict(data)
            default = data.pop("default_table")
            router = dict(data.get("router") or {})
            router.setdefault("default_table", default)
            data["router"] = router
        return data

    @field_validator("node")
    @classmethod
    def _node_is_a_file_name_part(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ \t\n") or value.startswith("."):
            raise ValueError("must be a non-empty name without slashes or spaces")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return (env_settings, init_settings)

    @property
    def spool_dir(self) -> Path:
        return self.spool.dir or self.data_dir / "spool"

    @property
    def lake_root(self) -> str:
        return self.lake.root or str(self.data_dir / "lake")


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            loader = yaml.SafeLoader(text)
            loader.name = str(path)  # errors name the file, not "<unicode string>"
            try:
                data = loader.get_single_data() or {}
            finally:
                loader.dispose()
        else:
            raise ConfigError(f"config file {path}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return data


def describe_error(error: Any, prefix: tuple[str, ...] = ()) -> str:
    """One line naming a validation error's key, as in the file and as a variable."""
    where = (*prefix, *error["loc"])
    loc = ".".join(str(part) for part in where)
    env = "RTCLAKE_" + "__".join(str(p).upper() for p in where if not isinstance(p, int))
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {error['msg']}{shown} [key '{loc}' in the file, or {env}]"


def load_settings(
    path: Path | str | None = None, *, registry: Registry | None = None, **overrides: Any
) -> Settings:
    """Load the effective settings, or raise :class:`ConfigError` naming the bad key.
    The components are checked against ``registry`` (default: a fresh
    :func:`~rtclake.registry.load_registry`)."""
    check_environment(os.environ)
    path = path or os.environ.get("RTCLAKE_CONFIG") or None
    data: dict[str, Any] = read_config_file(Path(path)) if path else {}
    data.update(overrides)
    if "RTCLAKE_DEFAULT_TABLE" in os.environ and "RTCLAKE_ROUTER__DEFAULT_TABLE" not in os.environ:
        data["router"] = {**(data.get("router") or {}),
                          "default_table": os.environ["RTCLAKE_DEFAULT_TABLE"]}  # fmt: skip
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
    from rtclake.registry import check_components, load_registry

    check_components(settings, registry or load_registry())
    return settings


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, secrets shown as ``**********``, with the folders as
    the service resolves them (absolute)."""
    data = settings.model_dump(mode="json")
    data["data_dir"] = str(settings.data_dir.absolute())
    data["spool"]["dir"] = str(settings.spool_dir.absolute())
    root = settings.lake_root
    data["lake"]["root"] = root if "://" in root else str(Path(root).absolute())
    return data


# RTCLAKE_* variables that are not settings: the config file's name, fault injection
# (the fault suite), and the test suite's own knobs.
NOT_SETTINGS = ("RTCLAKE_CONFIG", "RTCLAKE_FAULTS")
NOT_SETTINGS_PREFIXES = ("RTCLAKE_TEST_", "RTCLAKE_FUZZ_")


def setting_variables() -> tuple[set[str], tuple[str, ...]]:
    """Every variable that names a setting, and the prefixes under which any name is a
    setting (the component maps, whose keys their types check)."""
    names: set[str] = set()
    prefixes: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field, info in model.model_fields.items():
            name = f"{prefix}{field.upper()}"
            names.add(name)
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                walk(kind, name + "__")
            elif getattr(kind, "__origin__", None) is dict:
                prefixes.append(name + "__")

    walk(Settings, "RTCLAKE_")
    names.add("RTCLAKE_DEFAULT_TABLE")  # the earlier spelling of router.default_table
    return names, tuple(prefixes)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an ``RTCLAKE_*`` variable that names no setting, suggesting the closest."""
    names, prefixes = setting_variables()
    for variable in sorted(environ):
        upper = variable.upper()
        if (
            not upper.startswith("RTCLAKE_")
            or upper in names
            or upper in NOT_SETTINGS
            or upper.startswith(NOT_SETTINGS_PREFIXES + prefixes)
        ):
            continue
        moved = MOVED.get(upper.removeprefix("RTCLAKE_").lower().split("__")[0])
        if moved is not None:  # a key of an earlier version: refused with its new spelling
            raise ConfigError(f"{variable}: {moved}")
        close = difflib.get_close_matches(upper, sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"{variable} is not a setting{hint} (nested keys are joined by two"
            " underscores, e.g. RTCLAKE_SERVER__PORT; every setting: docs/CONFIG.md)"
        )
