"""Kraken (an IoT collector and broker): rtclake in the place of Kraken's broker.

Source type ``kraken_grpc`` (:mod:`.grpc_server`): Kraken's gRPC contract
(``kraken.proto``, built at run time by :mod:`.contract`), current and older, so an
unmodified Kraken collector sends its messages to rtclake.

When ``KRAKENB_GRPC_HOST`` (the address Kraken's broker listens on, e.g. ``[::]:50051``)
is set, a ``kraken_grpc`` source named ``kraken`` runs on that address without being
configured, as Kraken's broker would; ``sources.kraken`` in the configuration overrides it
(``listen:`` another address, ``enabled: false`` turns it off). Kraken's adapter variables
(``KRAKENB_SLACK_URL``, ``KRAKENB_REDIS_*``, ``KRAKENB_MONGODB_*``, ``KRAKENB_INFLUXDB_*``,
``KRAKENB_WEBSOCKET_URL``) make default sinks the same way (:mod:`.environment`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import Field, field_validator

from rtclake.config import MiB
from rtclake.errors import ConfigError
from rtclake.integrations.kraken.environment import sink_defaults
from rtclake.registry import BuildContext, Registry, SourceConfig

ENV_HOST = "KRAKENB_GRPC_HOST"
# host:port, as grpc takes it: 127.0.0.1:50051, [::]:50051, localhost:50051 (grpc refuses
# an empty host, ":50051", and binds a port above 65535 as if it were 0: any free port)
_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):([0-9]{1,5})")


class KrakenGrpcConfig(SourceConfig):
    """Both contracts (ProcessKrakenRequest and the older Send) on ``listen``. Like Kraken's
    broker it asks callers for no credentials: listen where only the collectors reach it."""

    listen: str = Field(
        default="localhost:50051",
        description="host:port to serve on; [::]:50051 or 0.0.0.0:50051 for every address."
        " The default is loopback only (127.0.0.1 and ::1: Kraken's collector sends to"
        " http://[::1]:50051 unless KRKNC_BROKER_HOST says otherwise). KRAKENB_GRPC_HOST,"
        " when set, turns on a source named kraken on its address (Kraken's broker's"
        " variable; sources.kraken overrides it)",
    )
    stream: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$",
        description="the stream of every message; default: the collector's name"
        " (collector_name, or provider in the older contract), as a stream name",
    )
    table: str | None = Field(
        default=None,
        description="the table of every message; default: the router's for the stream"
        " (telemetry unless routed)",
    )
    max_message_bytes: int = Field(
        default=16 * MiB, gt=0, lt=2**31, description="largest request (and reply) gRPC takes"
    )
    id_keys: list[str] = Field(
        default=["message_id"],
        description="keys of a request's metadata whose value identifies the message: a"
        " retry with the same value is stored once",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        found = _LISTEN.fullmatch(value)
        if not found or int(found[2]) > 65535:
            raise ValueError(
                f"{value!r} is not host:port with a port up to 65535 (127.0.0.1:50051;"
                " [::]:50051 or 0.0.0.0:50051 for every address; KRAKENB_GRPC_HOST has the"
                " same form)"
            )
        return value


def register(registry: Registry) -> None:
    @registry.source("kraken_grpc", KrakenGrpcConfig)
    def kraken_grpc(config: KrakenGrpcConfig, ctx: BuildContext) -> Any:
        """Kraken's broker contract over gRPC: each message a record, answered once durable."""
        from rtclake.integrations.kraken.grpc_server import KrakenGrpc

        assert ctx.intake is not None
        if config.table is not None and config.table not in ctx.tables:
            known = ", ".join(ctx.tables.names())
            raise ConfigError(
                f"sources.{ctx.name}.table: unknown table {config.table!r} (known: {known})"
            )
        return KrakenGrpc(
            ctx.intake, name=ctx.name, listen=config.listen, stream=config.stream,
            table=ctx.tables[config.table] if config.table else None,
            max_message_bytes=config.max_message_bytes, id_keys=config.id_keys,
        )  # fmt: skip

    host = os.environ.get(ENV_HOST, "").strip()
    if host:  # as Kraken's broker: serve where its collectors send
        registry.add_default("source", "kraken", {"type": "kraken_grpc", "listen": host})
    for name, sink in sink_defaults().items():  # Kraken's adapters' variables
        registry.add_default("sink", name, sink)
