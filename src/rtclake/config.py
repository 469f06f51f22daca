"""The configuration: one validated model, loaded from YAML or TOML, overridden by env.

Precedence, highest first: ``RTCLAKE_*`` environment variables (nested keys joined by
``__``, e.g. ``RTCLAKE_SERVER__PORT=9000``), the config file, the embedded defaults.
The file is named by ``--config`` or ``RTCLAKE_CONFIG``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from rtclake.errors import ConfigError
from rtclake.redact import redact

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
    max_connections: int = Field(
        default=2048, gt=0,
        description="connections and requests at once; beyond, a new one is answered 503"
        " at once and closed (many slow clients cannot take all of the process's files)",
    )  # fmt: skip
    access_log: bool = Field(default=False, description="log every request (uvicorn's log)")
    public_url: str | None = Field(
        default=None,
        description="the address people open the dashboard at, for links in alerts;"
        " default: http://{server.host}:{server.port}",
    )

    @property
    def base_url(self) -> str:
        """``public_url`` without a trailing slash, or this server's own address."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class JetStreamSpoolConfig(Section):
    """``spool.backend: jetstream``: the spool is a NATS JetStream stream
    (docs/SPOOL-JETSTREAM.md)."""

    url: SecretStr = Field(
        default=SecretStr("nats://127.0.0.1:4222"),
        description="nats://[user:password@|token@]host:port, several separated by commas (masked)",
    )
    stream: str = Field(
        default="RTCLAKE_SPOOL", pattern=r"^[A-Za-z0-9_-]+$", description="the stream's name"
    )
    subject_prefix: str = Field(
        default="rtclake.spool",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="entries go to {subject_prefix}.{table}",
    )
    replicas: int = Field(
        default=1, ge=1, le=5, description="copies of each entry (a NATS cluster of as many)"
    )
    storage: Literal["file", "memory"] = "file"
    max_bytes: int | None = Field(
        default=None, gt=0, description="the stream's limit (503 above); default: spool.max_bytes"
    )
    max_age: float = Field(
        default=0.0, ge=0, description="seconds an unstored entry is kept; 0: until stored"
    )
    duplicate_window: float = Field(
        default=600.0, gt=0, description="seconds a retried Idempotency-Key is dropped by JetStream"
    )
    manage_stream: bool = Field(
        default=True,
        description="create the streams and the consumer if missing; refuse to start if they"
        " exist with other settings than these (false: use them as they are)",
    )
    consume: bool = Field(
        default=True, description="run a writer on this node (false: an ingest-only node)"
    )
    consumer: str = Field(
        default="rtclake-writer",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the durable pull consumer every writer node shares",
    )
    ack_wait: float = Field(
        default=60.0, gt=0, description="seconds before an unacknowledged entry is redelivered"
    )
    batch_messages: int = Field(default=1000, gt=0, description="most entries in one batch")
    timeout: float = Field(default=10.0, gt=0, description="seconds to connect, or for a PubAck")


class SpoolConfig(Section):
    """The write-ahead log every accepted record passes through."""

    backend: Literal["local", "jetstream"] = Field(
        default="local",
        description="local: a write-ahead log on this node's disk; jetstream: a NATS"
        " JetStream stream (spool.jetstream), replicated, shared by every node",
    )
    dir: Path | None = Field(default=None, description="default: DATA_DIR/spool")
    max_bytes: int = Field(default=1024 * MiB, gt=0, description="ingest answers 503 above this")
    segment_max_bytes: int = Field(default=8 * MiB, gt=0, description="a batch is one segment")
    segment_max_records: int = Field(default=50_000, gt=0)
    flush_interval: float = Field(default=10.0, gt=0, description="seconds before a batch is cut")
    fsync: bool = Field(default=True, description="false only for throwaway test setups")
    jetstream: JetStreamSpoolConfig = JetStreamSpoolConfig()


class MaintenanceConfig(Section):
    """The lake's maintenance (``lake.maintenance``): run by one node at a time, every
    ``interval`` in ``rtclake run`` and on demand with ``rtclake maintain``."""

    enabled: bool = Field(
        default=True,
        description="run on the schedule in rtclake run (rtclake maintain runs regardless)",
    )
    interval: Duration = Field(
        default=3600.0, gt=0, description='seconds between runs, or "30m", "1h", ...'
    )
    retention: dict[str, float] = Field(
        default_factory=dict,
        description="days each table's data is kept (whole UTC date partitions), by table"
        ' name; "*": every table without its own entry; no entry: kept forever',
    )
    merge: bool = Field(default=True, description="merge each partition's small files")
    memory_limit: ByteSize = Field(
        default=ByteSize(1024 * MiB),
        ge=64 * MiB,
        description="DuckDB memory for a run and for rtclake migrate; a closed day's sort, or"
        " a migrated day's repeats, beyond it spill to DATA_DIR/maintenance-tmp (merging a"
        " table of 170 columns takes ~0.5 GiB a thread)",
    )
    sort_closed_days: bool = Field(
        default=True,
        description="once a UTC day is over, write the day of each table read one connection"
        " at a time (rtc_rates, connection_reports) again as one run sorted by connection,"
        " and fold the days of connection_spans (today's too) into one row per connection and"
        " span",
    )
    expire_after: Duration = Field(
        default=86400.0,
        ge=0,
        description="seconds: catalog snapshots older than this are expired; longer than"
        " any node's recovery and the longest query",
    )
    cleanup_after: Duration = Field(
        default=3600.0,
        ge=0,
        description="seconds: files replaced (expired) or orphaned at least this long ago"
        " are deleted; longer than any writer's upload-to-commit gap",
    )

    @field_validator("retention")
    @classmethod
    def _days_per_table(cls, value: dict[str, float]) -> dict[str, float]:
        for name, days in value.items():
            if name != "*" and not IDENTIFIER.fullmatch(name):
                raise ValueError(f"{name!r}: give a table name, or * for every table")
            if not (math.isfinite(days) and days > 0):
                raise ValueError(f"{name}: {days}: give a number of days above 0")
        return value

    def ttl(self, table: str) -> float | None:
        """The days ``table`` keeps its data (None: forever)."""
        return self.retention.get(table, self.retention.get("*"))


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
    catalog: str | None = Field(
        default=None,
        description="DuckLake catalog: sqlite:PATH (one node), postgres://USER@HOST/DB"
        " (several nodes) or hive (no catalog, the old layout); default:"
        " sqlite:ROOT/catalog.sqlite, or DATA_DIR/lake-catalog.sqlite for a lake on S3",
    )
    maintenance: MaintenanceConfig = Field(default_factory=lambda: MaintenanceConfig())
    dedupe_window: float = Field(
        default=300.0,
        ge=0,
        description="seconds: a record whose record_id the lake already holds within this"
        " much of its time is not stored again (records with their own time: any repeat)",
    )

    @field_validator("catalog")
    @classmethod
    def _catalog_url(cls, value: str | None) -> str | None:
        from rtclake.lake.urls import parse_url

        if value is not None and not value.strip():
            return None  # blank (RTCLAKE_LAKE__CATALOG=""): the default, as before
        if value is not None:
            try:
                parse_url(value)
            except ConfigError as exc:
                # the reason alone: the error's line shows the value (its password masked)
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value


class QueryConfig(Section):
    """Limits of the SQL API (``rtclake query`` and ``POST /api/query``), per query unless
    said otherwise. The defaults suit a 2-core host with a few GB of memory: at most
    ``max_concurrent`` x ``memory_limit`` for DuckDB, one thread each."""

    max_rows: int = Field(default=10_000, gt=0)
    timeout: float = Field(default=30.0, gt=0, description="seconds")
    dedup: bool = Field(
        default=True,
        description="a hive lake's views hide rows with a repeated record_id"
        " (a lake with a catalog stores each once)",
    )
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
    idle_timeout: float = Field(
        default=300.0,
        ge=0,
        description="seconds a DuckDB instance waits for the next query over an unchanged"
        " lake, its views set up and its last query's memory (within memory_limit) kept;"
        " at most max_concurrent wait; 0: a new instance for each query",
    )
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
    maintenance_interval: float = Field(
        default=300.0,
        gt=0,
        description="seconds between calls of each sink's own housekeeping (Sink.maintain, for"
        " components that have some); the lake's maintenance is lake.maintenance.interval",
    )


class RouteConfig(Section):
    """Send the records of matching streams to a table (fnmatch patterns, first match wins)."""

    stream: str
    table: str


class RouterConfig(Section):
    """Which table the records of a stream go to: ``routes`` in order, else
    ``default_table``."""

    routes: list[RouteConfig] = Field(default_factory=list)
    default_table: str = "telemetry"


UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*")
_CONDITION = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_METRIC = re.compile(r"count|[A-Za-z_][A-Za-z0-9_]*|extra(\.[A-Za-z0-9_]+)+")


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a text such as ``"30s"``, ``"2m"``, ``"1h"``, ``"1.5d"``,
    ``"500ms"`` (a bare number is seconds); anything else is left for validation to
    refuse."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: give seconds, or e.g. 30s, 2m, 1h")
        return float(match.group(1)) * UNITS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_condition(text: str) -> tuple[str, float]:
    """``"> 5"`` -> ``(">", 5.0)``; operators ``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``."""
    match = _CONDITION.fullmatch(text)
    if match is None or not math.isfinite(float(match.group(2))):
        raise ValueError(
            f"{text!r} is not a condition: an operator (>, >=, <, <=, ==, !=) and a number,"
            ' e.g. "> 5"'
        )
    return match.group(1), float(match.group(2))


class AlertRuleConfig(Section):
    """One rule of `alerts.rules`, named by its key (`[a-z0-9_]+`). A threshold rule
    (`metric` a column) fires for a scope value once the condition held on every sample
    of it for `for`: from a sample at least `for` older than the newest, every sample
    breached (the rows of one scope value at one time are one sample, by `reduce`). It
    resolves when the newest sample no longer breaches, or when the newest is older than
    `stale_after` (no data). A count rule (`metric: count`) counts the rows of each scope
    value in the last `for` and fires while the count meets the condition; with `scope:
    {column: value}` or no scope it is also an absence rule (`count < 1`: no row for
    `for`). Each alert fires once and resolves once; the state is kept in
    `DATA_DIR/alerts-state.json`, so a restart neither fires it again nor forgets it."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    enabled: bool = Field(default=True, description="false: kept in the file, not evaluated")
    source: str = Field(
        description="the table or view read: rtc_rates, connection_quality, rtc_stats,"
        " telemetry, ..."
    )
    metric: str = Field(
        description="a numeric column of the source; extra.KEY for a number in the extra"
        " JSON; or count, the number of rows in the window"
    )
    condition: str = Field(
        description='when the metric breaches: an operator and a number, e.g. "> 5", "< 1"'
    )
    for_: Duration = Field(
        default=0.0,
        ge=0,
        alias="for",
        description="how long the condition must hold (threshold rules), or the window"
        ' counted (count rules): seconds, or "30s", "2m", "1h"',
    )
    scope: str | dict[str, str | int | float | bool] | None = Field(
        default=None,
        description="what one alert is about: a column (one alert per value, e.g."
        " connection_id: any connection), or {column: value} (that one, e.g. {node_name:"
        " sora-1}); default: the whole source",
    )
    where: str | None = Field(
        default=None,
        description="a SQL expression over the source's columns that rows must meet, e.g."
        " media_kind = 'audio' (run read-only in the query sandbox)",
    )
    time_column: str = Field(
        default="time", description="the source's time column (rtc_stats: also rtc_timestamp)"
    )
    reduce: Literal["max", "min", "avg", "sum"] | None = Field(
        default=None,
        description="how the rows of one scope value at one time make one sample;"
        " default: max for >, >=, ==, != and min for <, <= (a time breaches when one of"
        " its rows does)",
    )
    stale_after: Duration = Field(
        default=300.0,
        gt=0,
        description="threshold rules: a scope value whose newest sample is older than this"
        " has no data, and its alert resolves",
    )
    notify: list[str] = Field(
        default=["log"],
        description="sinks that get each firing and resolved alert (slack, webhook, ...);"
        " log: only the log line, which every alert gets",
    )
    summary: str = Field(default="", description="text added to the alert's message")

    @field_validator("condition")
    @classmethod
    def _condition_parses(cls, value: str) -> str:
        op, number = parse_condition(value)
        return f"{op} {number:g}"

    @field_validator("metric")
    @classmethod
    def _metric_is_a_name(cls, value: str) -> str:
        if not _METRIC.fullmatch(value):
            raise ValueError("give a column name, extra.KEY, or count")
        return value

    @field_validator("time_column")
    @classmethod
    def _time_column_is_a_name(cls, value: str) -> str:
        if not IDENTIFIER.fullmatch(value):
            raise ValueError("give a column name")
        return value

    @field_validator("scope")
    @classmethod
    def _scope_names_columns(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else list(value or ())
        bad = [name for name in names if not IDENTIFIER.fullmatch(name)]
        if bad or value == {}:
            raise ValueError("give a column name, or {column: value}")
        return value

    @model_validator(mode="after")
    def _count_rules(self) -> AlertRuleConfig:
        if self.metric != "count":
            return self
        if self.for_ <= 0:
            raise ValueError("a count rule counts the rows of a window: give for, e.g. 5m")
        if self.reduce is not None:
            raise ValueError("reduce is for a column metric; a count rule counts rows")
        if isinstance(self.scope, str) and self.holds_at(0):
            raise ValueError(
                f"count {self.condition} holds for no rows, but a scope by column knows only"
                " the values that have rows: name them ({column: value}) or leave scope out"
            )
        return self

    @property
    def operator(self) -> str:
        return parse_condition(self.condition)[0]

    @property
    def threshold(self) -> float:
        return parse_condition(self.condition)[1]

    def holds_at(self, value: float) -> bool:
        """Whether ``value`` breaches the condition."""
        op, number = parse_condition(self.condition)
        return {
            ">": value > number, ">=": value >= number, "<": value < number,
            "<=": value <= number, "==": value == number, "!=": value != number,
        }[op]  # fmt: skip


class AlertsConfig(Section):
    """Alert rules over the lake's tables and views, evaluated every `interval` seconds
    inside `rtclake run`. An alert is a row of the `alerts` table (stored like any
    record) that the sinks named in its rule's `notify` deliver; see README, Alerts."""

    interval: Duration = Field(
        default=15.0, gt=0, description='seconds between evaluations (or "30s", "1m")'
    )
    rules: dict[str, AlertRuleConfig] = Field(
        default_factory=dict, description="name -> rule (the keys below)"
    )

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, value: dict[str, AlertRuleConfig]) -> dict[str, AlertRuleConfig]:
        bad = [name for name in value if not re.fullmatch(r"[a-z0-9_]+", name)]
        if bad:
            raise ValueError(f"rule names are [a-z0-9_]+ (got {', '.join(map(repr, bad))})")
        return value


class DiagnosisConfig(Section):
    """Thresholds of the connection diagnosis (``GET /api/connections/{id}/diagnosis``):
    a finding is a stretch of consecutive samples beyond its threshold lasting at least
    ``min_duration``; twice the threshold makes it critical."""

    min_duration: float = Field(
        default=10.0, ge=0, description="seconds a condition must last to be a finding"
    )
    loss_pct: float = Field(default=5.0, gt=0, description="high_loss above this packet loss, %")
    rtt_ms: float = Field(default=300.0, gt=0, description="high_rtt above this round trip, ms")
    jitter_ms: float = Field(default=30.0, gt=0, description="high_jitter above this, ms")
    limited_share: float = Field(
        default=0.5, gt=0, le=1,
        description="bandwidth_limited / cpu_limited: share of an interval the encoder was"
        " limited by that reason",
    )  # fmt: skip
    freezes_per_min: float = Field(default=1.0, gt=0, description="freezes at or above this")
    low_fps: float = Field(default=10.0, gt=0, description="low_fps below this frame rate")
    no_media: float = Field(
        default=10.0, gt=0,
        description="no_media: seconds a stream sends or receives nothing while reports go on",
    )  # fmt: skip


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
    alerts: AlertsConfig = AlertsConfig()
    diagnosis: DiagnosisConfig = DiagnosisConfig()
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

    @property
    def lake_catalog(self) -> str:
        """``lake.catalog``, or the default catalog of the lake's root."""
        from rtclake.lake.catalog import default_url

        return self.lake.catalog or default_url(self.lake_root, self.data_dir)


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
    shown = "" if isinstance(got, dict) else redact(f" (got {got!r})")
    return f"{loc}: {error['msg']}{shown} [key '{loc}' in a config file, or {env}]"


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
    except SettingsError as exc:  # a list, a map or a section's variable that is not JSON
        lines = undecodable_variables(os.environ) or [str(exc)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
    from rtclake.registry import check_components, load_registry

    check_components(settings, registry or load_registry())
    return settings


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, secrets shown as ``**********`` (a catalog URL's
    password as ``***``), with the folders and the catalog as the service resolves them
    (absolute)."""
    data = settings.model_dump(mode="json")
    data["data_dir"] = str(settings.data_dir.absolute())
    data["spool"]["dir"] = str(settings.spool_dir.absolute())
    root = settings.lake_root
    data["lake"]["root"] = root if "://" in root else str(Path(root).absolute())
    from rtclake.lake.urls import parse_url

    # the catalog the lake is read and written through (its default resolved), its
    # password masked (a postgres:// URL may hold one)
    data["lake"]["catalog"] = str(parse_url(settings.lake_catalog))
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


def json_variables() -> set[str]:
    """The variables of settings that are lists, maps or sections: their values are JSON
    text (the component maps' keys are not among them: their types check them)."""
    names: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field, info in model.model_fields.items():
            name = f"{prefix}{field.upper()}"
            kinds = [k for k in typing.get_args(info.annotation) if k is not type(None)]
            kind = kinds[0] if len(kinds) == 1 else info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                names.add(name)
                walk(kind, name + "__")
            elif typing.get_origin(kind) in (list, dict, tuple, set):
                names.add(name)

    walk(Settings, "RTCLAKE_")
    return names


def undecodable_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``RTCLAKE_*`` variable of a list, a map or a section whose value is not
    JSON, naming it and why."""
    structured = json_variables()
    lines = []
    for variable in sorted(environ):
        if variable.upper() not in structured:
            continue
        try:
            json.loads(environ[variable])
        except ValueError as exc:
            lines.append(
                f"{variable}: not JSON ({exc}); lists and maps are JSON text in the"
                " environment, e.g. RTCLAKE_ROUTER__ROUTES="
                """'[{"stream": "a-*", "table": "events"}]'"""
            )
    return lines


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
