"""Continuous import of Kohaku's S3 layout inside ``rtclake run``.

Every ``interval`` seconds, new objects under ``s3://BUCKET/PREFIX/TAG/YYYY/MM/DD/`` are
imported (see :mod:`rtclake.integrations.sora.kohaku_s3_import`). The objects are the
durable copy, so this source delivers to the sinks directly (through the delivery)
instead of through the spool; its checkpoint (the keys imported) advances after the sinks
confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from rtclake.delivery import Delivery
from rtclake.importer import Importer
from rtclake.integrations.sora.config import KohakuS3Config
from rtclake.integrations.sora.kohaku_s3_import import S3Importer, S3Location, s3_client
from rtclake.integrations.sora.logs import table_for
from rtclake.metrics import Metrics
from rtclake.sources.base import Source
from rtclake.tables import TableRegistry

log = structlog.get_logger(__name__)


class KohakuS3Source(Source):
    """Imports new objects on an interval, on a thread of its own."""

    name = "kohaku_s3"

    def __init__(
        self,
        config: KohakuS3Config,
        tables: TableRegistry,
        delivery: Delivery,
        metrics: Metrics,
        *,
        node: str,
        state_path: Path,
    ) -> None:
        self.config = config
        self.location = S3Location.parse(config.url)
        self.importer = Importer(
            tables, delivery, state_path, node=node, table_for=table_for, metrics=metrics
        )
        secret = config.secret_access_key
        self.client = s3_client(
            endpoint_url=config.endpoint_url,
            access_key_id=config.access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            region=config.region,
            path_style=config.path_style,
        )
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kohaku-s3")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.importer.close()

    def run_once(self) -> int:
        """One listing and import; returns the rows imported."""
        stats = S3Importer(self.importer, self.client, self.location).run()
        if stats.files:
            log.info("kohaku s3: imported", files=stats.files, rows=stats.rows)
        return stats.rows

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as exc:  # the store may be down; try again next interval
                self.metrics.source_errors.labels(self.name).inc()
                log.error("kohaku s3: import failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.config.interval)
