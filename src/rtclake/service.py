"""The service: one node of rtclake, wired from its settings.

sources -> router -> spool -> writer -> sinks, and the query engine over the lake.
"""

from __future__ import annotations

import asyncio

import structlog

from rtclake.catalog import default_registry
from rtclake.config import Settings
from rtclake.delivery import Delivery
from rtclake.intake import Intake
from rtclake.metrics import Metrics
from rtclake.query import QueryEngine
from rtclake.router import Router
from rtclake.sinks.base import Sink
from rtclake.sinks.lake import LakeSink
from rtclake.sources.base import Source
from rtclake.sources.http_ingest import HttpIngest
from rtclake.sources.sora_webhooks import SoraWebhooks
from rtclake.spool import Spool
from rtclake.tables import TableRegistry
from rtclake.writer import Writer

log = structlog.get_logger(__name__)


def build_sinks(settings: Settings, tables: TableRegistry) -> list[Sink]:
    sinks: list[Sink] = []
    if settings.lake.enabled:
        compression = settings.lake.compression
        sinks.append(
            LakeSink(
                settings.lake_root,
                tables,
                compression="none" if compression == "none" else compression,
                compression_level=settings.lake.compression_level,
            )
        )
    return sinks


def build_sources(settings: Settings, service: Service) -> list[Source]:
    """The background sources the configuration switches on."""
    sources: list[Source] = []
    if settings.sora.logs.dirs:
        from rtclake.sources.sora_logs import SoraLogTail

        sources.append(
            SoraLogTail(
                settings.sora.logs, service.intake, settings.data_dir, tables=service.tables
            )
        )
    api = settings.sora.api
    if api.nodes:
        from rtclake.sources.sora_api import SoraApiPoller

        sources.append(SoraApiPoller(api, service.intake, service.tables))
    s3 = settings.sora.kohaku_s3
    if s3.enabled:
        from rtclake.sources.kohaku_s3 import KohakuS3Source

        sources.append(
            KohakuS3Source(
                s3,
                service.tables,
                service.delivery,
                service.metrics,
                node=settings.node,
                state_path=settings.data_dir / "kohaku-s3-state.json",
            )
        )
    return sources


class Service:
    """Everything one ``rtclake run`` holds. ``start``/``stop`` run on the event loop."""

    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink] | None = None,
        sources: list[Source] | None = None,
    ) -> None:
        self.settings = settings
        self.tables = default_registry()
        self.metrics = Metrics()
        self.router = Router(settings.routes, settings.default_table, self.tables)
        s = settings.spool
        self.spool = Spool(
            settings.spool_dir,
            max_bytes=s.max_bytes,
            segment_max_bytes=s.segment_max_bytes,
            segment_max_records=s.segment_max_records,
            flush_interval=s.flush_interval,
            fsync=s.fsync,
        )
        self.spool.on_sync = self.metrics.fsync_seconds.observe
        self.intake = Intake(self.spool, self.metrics, self.router)
        self.metrics.watch_spool(
            lambda: self.spool.used_bytes,
            lambda: self.spool.segment_count,
            lambda: float("nan") if (free := self.spool.disk_free_bytes()) is None else free,
            lambda: float(self.spool.failure is None),
        )
        self.sinks = build_sinks(settings, self.tables) if sinks is None else sinks
        self.delivery = Delivery(self.sinks, self.metrics)
        w = settings.writer
        self.writer = Writer(
            self.spool,
            self.delivery,
            self.tables,
            self.metrics,
            node=settings.node,
            retry_initial=w.retry_initial,
            retry_max=w.retry_max,
            maintenance_interval=w.maintenance_interval,
        )
        self.query = QueryEngine.from_config(
            settings.lake_root,
            self.tables,
            settings.query,
            temp_root=settings.data_dir / "query-tmp",
        )
        token = settings.server.ingest_token
        self.http_ingest = HttpIngest(
            self.intake,
            max_body=settings.server.max_body_bytes,
            token=token.get_secret_value() if token else None,
        )
        self.sora_webhooks = SoraWebhooks(
            self.intake,
            self.tables,
            max_body=settings.server.max_body_bytes,
            token=token.get_secret_value() if token else None,
        )
        self.sources: list[Source] = build_sources(settings, self) if sources is None else sources

    async def start(self) -> None:
        self.query.remove_stale_temp()
        await self.spool.start()
        await self.writer.start()
        for source in self.sources:
            await source.start()
        log.info(
            "rtclake started",
            node=self.settings.node,
            spool=str(self.settings.spool_dir),
            lake=self.settings.lake_root,
            sinks=[s.name for s in self.sinks],
        )

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, store what the spool holds (within ``drain_timeout``), close."""
        for source in self.sources:
            await source.stop()
        drained = await self.writer.drain(drain_timeout)
        if not drained:
            log.warning("rtclake stopping with records still spooled; they replay on start")
        await self.spool.close()
        await self.writer.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.delivery.close)
        self.query.close()
