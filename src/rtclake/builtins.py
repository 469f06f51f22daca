"""The component types of rtclake itself (no vendor): HTTP ingest, the JSON Lines file
tail, the MQTT subscriber, the Parquet lake as an extra sink, the slack, webhook, redis and
mongodb sinks, and the ``alerts`` table they deliver. Integrations register theirs the same
way (see :mod:`rtclake.registry`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr

from rtclake.brokers import BrokerConfig, build_broker
from rtclake.errors import ConfigError
from rtclake.lake.sink import lake_sink
from rtclake.registry import BuildContext, ProcessorConfig, Registry, SinkConfig, SourceConfig
from rtclake.sinks.base import Sink
from rtclake.sinks.elasticsearch import ELASTICSEARCH
from rtclake.sinks.influxdb import INFLUXDB
from rtclake.sinks.mongodb import MONGODB
from rtclake.sinks.nats import NATS
from rtclake.sinks.postgresql import POSTGRESQL
from rtclake.sinks.redis import REDIS
from rtclake.sinks.slack import SLACK
from rtclake.sinks.webhook import WEBHOOK
from rtclake.sinks.websocket import WEBSOCKET_SINK
from rtclake.sources.file_tail import FileTail, JsonLinesTailConfig
from rtclake.sources.http_ingest import HttpIngest
from rtclake.sources.mqtt import MQTT
from rtclake.sources.websocket import WEBSOCKET
from rtclake.tables import ALERTS, OUTBOX


class HttpIngestConfig(SourceConfig):
    """``POST /ingest/{stream}``; its body limit and token are ``server.max_body_bytes`` and
    ``server.ingest_token``."""


class EntityTrackerConfig(ProcessorConfig):
    """What is live, from start and end events; and the reconciler's source of truth."""

    reconcile_interval: float = Field(
        default=60.0, gt=0, description="seconds between the reconciler's rounds"
    )
    livekit_url: str | None = Field(
        default=None, description="LiveKit's URL for its RoomService API (ListRooms,"
        " ListParticipants), e.g. http://livekit:7880; unset: LiveKit is not reconciled",
    )  # fmt: skip
    livekit_api_key: str | None = Field(default=None, description="default LIVEKIT_API_KEY")
    livekit_api_secret: SecretStr | None = Field(
        default=None, description="default LIVEKIT_API_SECRET"
    )
    sora_session_timeout: float | None = Field(
        default=None, gt=0,
        description="seconds a Sora session may go without a session.updated heartbeat"
        " before it is closed; unset: Sora sessions are not reconciled",
    )  # fmt: skip


class LakeSinkConfig(SinkConfig):
    """Another Parquet lake (a copy in a second folder); the lake that queries read is
    ``lake:``."""

    root: Path = Field(description="a folder")
    catalog: str | None = Field(
        default=None, description="sqlite:PATH, postgres://... or hive; default: in ROOT"
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    compression_level: int | None = None


def register(registry: Registry) -> None:
    @registry.source("http_ingest", HttpIngestConfig)
    def http_ingest(config: HttpIngestConfig, ctx: BuildContext) -> HttpIngest:
        """HTTP ingest of JSON records (on by default as the source ``http``)."""
        assert ctx.intake is not None
        server = ctx.settings.server
        token = server.ingest_token
        return HttpIngest(
            ctx.intake,
            max_body=server.max_body_bytes,
            token=token.get_secret_value() if token else None,
            name=ctx.name,
        )

    @registry.source("file_tail", JsonLinesTailConfig)
    def file_tail(config: JsonLinesTailConfig, ctx: BuildContext) -> FileTail:
        """Follows directories of JSON Lines files into the tables its rule names."""
        assert ctx.intake is not None
        for table in [config.table, *config.files.values()]:
            if table is not None and table not in ctx.tables:
                known = ", ".join(ctx.tables.names())
                raise ConfigError(f"sources.{ctx.name}: unknown table {table!r} (known: {known})")
        return FileTail(
            config,
            ctx.intake,
            ctx.data_dir,
            tables=ctx.tables,
            table_for=config.rule(),
            name=ctx.name,
            source=config.source or ctx.name,
            label=ctx.name,
            checkpoint_name=f"{ctx.name}.checkpoint.json",
        )

    @registry.sink("lake", LakeSinkConfig)
    def lake(config: LakeSinkConfig, ctx: BuildContext) -> Sink:
        """Another lake: Parquet files partitioned by table and UTC date, with a catalog."""
        sink = lake_sink(
            config.root,
            ctx.tables,
            catalog=config.catalog,
            compression=config.compression,
            compression_level=config.compression_level,
        )
        sink.name = ctx.name
        return sink

    registry.add_default("source", "http", {"type": "http_ingest"})
    registry.add_table(ALERTS, OUTBOX)

    @registry.processor("broker", BrokerConfig)
    def broker(config: BrokerConfig, ctx: BuildContext) -> Any:
        """A user's function or class run on each record it matches once the record is
        durable: it may reply to the caller and emit records (docs/BROKERS.md)."""
        return build_broker(config, ctx.name)

    @registry.processor("entity_tracker", EntityTrackerConfig)
    def entity_tracker(config: EntityTrackerConfig, ctx: BuildContext) -> Any:
        """What is live now (rooms, sessions, participants, connections, tracks, egresses,
        ingresses) from LiveKit's and Sora's start and end events; GET /api/entities; a
        reconciler closes what the SFU no longer has with synthetic end events."""
        import os

        from rtclake.entities import EntityTracker, Reconcile

        key = config.livekit_api_key or os.environ.get("LIVEKIT_API_KEY")
        secret = (config.livekit_api_secret.get_secret_value() if config.livekit_api_secret
                  else os.environ.get("LIVEKIT_API_SECRET"))  # fmt: skip
        if config.livekit_url and not (key and secret):
            raise ConfigError(
                f"processors.{ctx.name}: livekit_url needs livekit_api_key and"
                " livekit_api_secret (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET)"
            )
        reconcile = Reconcile(
            interval=config.reconcile_interval, livekit_url=config.livekit_url,
            livekit_key=key, livekit_secret=secret,
            sora_session_timeout=config.sora_session_timeout,
        )  # fmt: skip
        return EntityTracker(ctx.data_dir / "entities.json", reconcile, ctx.tables)

    registry.add(MQTT)
    registry.add(WEBSOCKET)
    registry.add(SLACK)
    registry.add(REDIS)
    registry.add(MONGODB)
    registry.add(WEBHOOK)
    registry.add(INFLUXDB)
    registry.add(POSTGRESQL)
    registry.add(ELASTICSEARCH)
    registry.add(WEBSOCKET_SINK)
    registry.add(NATS)
