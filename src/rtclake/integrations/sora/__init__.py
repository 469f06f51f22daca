"""WebRTC SFU Sora: its tables, log files, webhooks, API poller, Kohaku's S3 import and
Sorabeat's derived fields, registered as components (``register`` is the entry point
``rtclake.integrations: sora``).

Source types: ``sora_webhooks`` (on by default as ``sora_webhooks``), ``sora_logs``,
``sora_api``, ``kohaku_s3``. Processor types: ``sora_counter_names`` and
``sorabeat_fields`` (on by default). File rule: Sora's log file names. Importer: ``s3://``
(Kohaku's layout). Demo: ``rtclake demo``'s generated Sora log folder (``demo.py``).
Grafana dashboards: overview, session, connection (``dashboards.py``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from rtclake.registry import BuildContext, ProcessorConfig, Registry, SourceConfig


class SoraWebhooksConfig(SourceConfig):
    """``/sora/webhooks/*`` and ``/sora/stats-exporter``; body limit and token from
    ``server.max_body_bytes`` and ``server.ingest_token``."""


def register(registry: Registry) -> None:
    from rtclake.integrations.sora import logs
    from rtclake.integrations.sora.api import SORA_API_TABLES
    from rtclake.integrations.sora.config import KohakuS3Config, SoraApiConfig, SoraLogsConfig
    from rtclake.integrations.sora.tables import SORA_TABLES
    from rtclake.integrations.sora.views import (
        VIEWS,
        RatesDerivation,
        ReportsDerivation,
        SpansDerivation,
    )

    registry.add_table(*SORA_TABLES, *SORA_API_TABLES)
    registry.add_derivation(RatesDerivation(), ReportsDerivation(), SpansDerivation())
    registry.add_view(*VIEWS)
    registry.add_file_rule(logs.table_for)

    @registry.source("sora_webhooks", SoraWebhooksConfig)
    def sora_webhooks(config: SoraWebhooksConfig, ctx: BuildContext) -> Any:
        """Sora's session, event, auth and statistics webhooks and the stats exporter."""
        from rtclake.integrations.sora.webhooks import SoraWebhooks

        assert ctx.intake is not None
        token = ctx.settings.server.ingest_token
        return SoraWebhooks(
            ctx.intake,
            ctx.tables,
            max_body=ctx.settings.server.max_body_bytes,
            token=token.get_secret_value() if token else None,
        )

    @registry.source("sora_logs", SoraLogsConfig)
    def sora_logs(config: SoraLogsConfig, ctx: BuildContext) -> Any:
        """Follows Sora's log directories (rtc_stats.jsonl, session_webhook.jsonl, ...)."""
        from rtclake.integrations.sora.log_tail import SoraLogTail

        assert ctx.intake is not None
        return SoraLogTail(config, ctx.intake, ctx.data_dir, tables=ctx.tables, name=ctx.name)

    @registry.source("sora_api", SoraApiConfig)
    def sora_api(config: SoraApiConfig, ctx: BuildContext) -> Any:
        """Polls Sora nodes' HTTP API, as Sorabeat and sora_exporter do."""
        from rtclake.integrations.sora.api_poller import SoraApiPoller

        assert ctx.intake is not None
        return SoraApiPoller(config, ctx.intake, ctx.tables)

    @registry.source("kohaku_s3", KohakuS3Config)
    def kohaku_s3(config: KohakuS3Config, ctx: BuildContext) -> Any:
        """Imports Kohaku's S3 layout (Fluent Bit's uploads) on an interval."""
        from rtclake.integrations.sora.kohaku_s3 import KohakuS3Source

        assert ctx.delivery is not None
        state = "kohaku-s3-state.json" if ctx.name == "kohaku_s3" else f"{ctx.name}-state.json"
        return KohakuS3Source(
            config, ctx.tables, ctx.delivery, ctx.metrics, node=ctx.node,
            state_path=ctx.data_dir / state,
        )  # fmt: skip

    @registry.processor("sora_counter_names", ProcessorConfig)
    def sora_counter_names(config: ProcessorConfig, ctx: BuildContext) -> Any:
        """Sora 18.10's per-connection counter names for older nodes' answers."""
        from rtclake.integrations.sora.processors import counter_names

        return counter_names()

    @registry.processor("sorabeat_fields", ProcessorConfig)
    def sorabeat_fields(config: ProcessorConfig, ctx: BuildContext) -> Any:
        """Sorabeat's derived fields of the Erlang VM lists, and channel_client_id."""
        from rtclake.integrations.sora.processors import sorabeat_fields

        return sorabeat_fields()

    registry.add_default("source", "sora_webhooks", {"type": "sora_webhooks"})
    registry.add_default("processor", "sora_counter_names", {"type": "sora_counter_names"})
    registry.add_default("processor", "sorabeat_fields", {"type": "sorabeat_fields"})

    def import_s3(url: str, importer: Any, stats: Any, **options: Any) -> None:
        from rtclake.integrations.sora.kohaku_s3_import import S3Importer, S3Location, s3_client

        S3Importer(importer, s3_client(**options), S3Location.parse(url)).run(stats)

    registry.add_importer("s3", import_s3)

    def write_demo(folder: Path, *, now: datetime, seed: int, minutes: int) -> dict[str, Any]:
        from rtclake.integrations.sora import demo

        return demo.write(folder, now=now, seed=seed, minutes=minutes)

    registry.add_demo("sora", write_demo)

    from rtclake.integrations.sora.dashboards import DASHBOARDS

    for uid, build in DASHBOARDS.items():
        registry.add_dashboard(uid, build)
