"""The service: one node of rtclake, built from its settings and the registry.

sources -> intake (router, intake-stage processors) -> spool -> writer (store-stage
processors, converter) -> delivery -> sinks, and the query engine over the lake.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from rtclake.alerts import AlertEngine
from rtclake.config import Settings
from rtclake.delivery import Delivery
from rtclake.errors import ConfigError
from rtclake.intake import Intake
from rtclake.lake.catalog import Catalog, parse_url
from rtclake.lake.maintenance import (
    MAINTENANCE_TMP,
    LeaderLock,
    Maintenance,
    Schedule,
    node_lock,
)
from rtclake.lake.query import QueryEngine
from rtclake.lake.sink import lake_sink
from rtclake.lake.storage import lake_storage
from rtclake.lock import DataDirLock
from rtclake.metrics import Metrics
from rtclake.processors.base import Processor, configure
from rtclake.processors.chain import Chain
from rtclake.registry import BuildContext, Kind, Registry, check_components, load_registry
from rtclake.router import Router
from rtclake.sinks.base import Sink
from rtclake.sources.base import Source
from rtclake.spool import Spool
from rtclake.tables import TableRegistry
from rtclake.throughput import Throughput
from rtclake.writer import Writer

log = structlog.get_logger(__name__)

#: Why a lake of the old layout is not maintained, for the log and ``rtclake maintain``.
HIVE_NO_MAINTENANCE = (
    "a lake of the old layout (lake.catalog: hive) has no maintenance: no retention,"
    " merging or cleanup; `rtclake migrate` moves it into a catalog"
)


def build_components(
    kind: Kind, settings: Settings, registry: Registry, context: dict[str, Any]
) -> list[Any]:
    """The enabled components of ``kind``, each built by its registered type."""
    section = {"source": settings.sources, "processor": settings.processors, "sink": settings.sinks}
    built = []
    for name, component_type, config in registry.configured(kind, section[kind]):
        ctx = BuildContext(name=name, settings=settings, registry=registry, **context)
        component = component_type.build(config, ctx)
        if kind == "processor":
            component = configure(component, name, config)
        elif kind == "sink":
            component.name = name
        built.append(component)
    return built


def build_sinks(settings: Settings, registry: Registry, metrics: Metrics) -> list[Sink]:
    """The lake (``lake:``, unless disabled), then the sinks of ``sinks:``."""
    sinks: list[Sink] = []
    if settings.lake.enabled:
        compression = settings.lake.compression
        sinks.append(
            lake_sink(
                settings.lake_root,
                registry.tables,
                catalog=settings.lake_catalog,
                compression="none" if compression == "none" else compression,
                compression_level=settings.lake.compression_level,
                storage=lake_storage(settings),
                dedupe_window=settings.lake.dedupe_window,
                metrics=metrics,
            )
        )
    sinks += build_components("sink", settings, registry, {"metrics": metrics})
    return sinks


class Service:
    """Everything one ``rtclake run`` holds. ``start``/``stop`` run on the event loop."""

    def __init__(
        self,
        settings: Settings,
        sinks: list[Sink] | None = None,
        sources: list[Source] | None = None,
        *,
        registry: Registry | None = None,
        processors: list[Processor] | None = None,
    ) -> None:
        self.settings = settings
        self.lock = DataDirLock(settings.data_dir)
        self._name_lock: LeaderLock | None = None
        self._name_task: asyncio.Task[None] | None = None
        self.registry = registry or load_registry()
        check_components(settings, self.registry)
        self.tables = self.registry.tables
        self.metrics = Metrics()
        self.throughput = Throughput(self.metrics)  # records/s, for the dashboard
        r = settings.router
        self.router = Router(r.routes, r.default_table, self.tables)
        s = settings.spool
        writer_type = Writer
        if s.backend == "jetstream":  # a replicated spool: docs/SPOOL-JETSTREAM.md
            from rtclake.spool_jetstream import JetStreamSpool, JetStreamWriter

            self.spool: Spool = JetStreamSpool(s, node=settings.node)
            writer_type = JetStreamWriter
        else:
            self.spool = Spool(
                settings.spool_dir,
                max_bytes=s.max_bytes,
                segment_max_bytes=s.segment_max_bytes,
                segment_max_records=s.segment_max_records,
                flush_interval=s.flush_interval,
                fsync=s.fsync,
            )
        self.spool.on_sync = self.metrics.fsync_seconds.observe
        if processors is None:
            processors = build_components(
                "processor", settings, self.registry, {"metrics": self.metrics}
            )
        for processor in processors:
            for table in processor.tables or ():
                if table not in self.tables:
                    raise ConfigError(f"processors.{processor.name}: unknown table {table!r}")
        self.chain = Chain(processors, self.metrics) if processors else None
        self._background: list[asyncio.Task[None]] = []  # processors' tasks (reconcilers)
        self._idle_sweep: asyncio.Task[None] | None = None  # closes idle query instances
        self.intake = Intake(
            self.spool, self.metrics, self.router, tables=self.tables, chain=self.chain
        )
        self.metrics.watch_spool(
            lambda: self.spool.used_bytes,
            lambda: self.spool.segment_count,
            lambda: float("nan") if (free := self.spool.disk_free_bytes()) is None else free,
            lambda: float(self.spool.failure is None),
        )
        self.sinks = build_sinks(settings, self.registry, self.metrics) if sinks is None else sinks
        self.delivery = Delivery(self.sinks, self.metrics, self.registry.tables)
        for sink in self.sinks:  # at 0 from the start, so rate() sees the first failure
            self.metrics.sink_errors.labels(sink.name)
        w = settings.writer
        self.writer = writer_type(
            self.spool,
            self.delivery,
            self.tables,
            self.metrics,
            node=settings.node,
            retry_initial=w.retry_initial,
            retry_max=w.retry_max,
            maintenance_interval=w.maintenance_interval,
            process=self.intake.process_entries if self.chain and self.chain.has("store") else None,
            derived_state=settings.data_dir / "derived",
        )
        self.query = QueryEngine.for_settings(settings, self.tables)
        self.maintenance = _maintenance(settings, self.tables, self.metrics)
        self.alerts = (
            AlertEngine(
                settings.alerts,
                tables=self.tables,
                query=self.query,
                intake=self.intake,
                metrics=self.metrics,
                sinks=[sink.name for sink in self.sinks],
                data_dir=settings.data_dir,
                public_url=settings.server.base_url,
            )
            if any(rule.enabled for rule in settings.alerts.rules.values())
            else None
        )
        context = {"metrics": self.metrics, "intake": self.intake, "delivery": self.delivery}
        self.sources: list[Source] = (
            build_components("source", settings, self.registry, context)
            if sources is None
            else sources
        )
        # as configured: some sources (Sora's, LiveKit's) keep their type as their name
        self.source_names = (
            [name for name, _, _ in self.registry.configured("source", settings.sources)]
            if sources is None
            else [s.name for s in sources]
        )

    def source(self, name: str) -> Source:
        """The source of that name (``http``, ``sora_webhooks``, ...)."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def claim(self) -> None:
        """Lock the data directory (raises ConfigError naming the pid that holds it)."""
        self.lock.acquire()

    async def _hold_name(self, every: float = 60.0) -> None:
        """Hold the lake's lock of this node's name for the process's life (beside the
        start, on a thread: a PostgreSQL catalog's connection may take its timeout);
        when another process holds it, say so and go on. Tried again every ``every``
        seconds while the catalog cannot be reached. Two nodes under one name keep
        their batches apart (each run has its own id), but an import of one file by
        both races for the same file names, and their metrics and logs are one node's."""
        url = parse_url(self.settings.lake_catalog)
        lock = node_lock(url, self.settings.node)
        if lock is None:
            return
        self._name_lock = lock  # stop() lets it go (a lock not held: nothing to do)
        loop = asyncio.get_running_loop()
        while True:
            try:
                held = await loop.run_in_executor(None, lock.acquire)
            except Exception as exc:  # the catalog may come later: tried again
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                log.warning("node: its name's lock on the lake not taken; tried again",
                            error=first, every=every)  # fmt: skip
                await asyncio.sleep(every)
                continue
            if held:
                return
            log.error(
                "node: another rtclake runs under this node's name on this lake; give each"
                " node its own (node, RTCLAKE_NODE)",
                node=self.settings.node, holder=lock.holder or "unknown",
            )  # fmt: skip
            return

    async def start(self) -> None:
        self.claim()
        self.query.remove_stale_temp()
        try:
            await self.spool.start()
        except OSError as exc:  # read-only, full, a file in its place, another user's
            folder = getattr(self.spool, "directory", None)  # (not JetStream's: NATS)
            if folder is None:
                raise
            where = Path(folder)
            why = "not a folder" if where.exists() and not where.is_dir() else exc.strerror
            raise ConfigError(
                f"spool.dir {where}: cannot use it ({why or exc}); give rtclake a folder it"
                " can write"
            ) from exc
        if self.chain is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.chain.start)
        await self.writer.start()
        self.throughput.start()
        for source in self.sources:
            await source.start()
        if self.settings.lake.enabled:
            self._name_task = asyncio.create_task(self._hold_name(), name="node-name")
        if self.alerts is not None:
            await self.alerts.start()
        if self.maintenance is not None:
            self.maintenance.start()
        if self.query.idle_timeout > 0:
            self._idle_sweep = asyncio.create_task(self._close_idle_queries(), name="query")
        for processor in self.chain.processors if self.chain is not None else ():
            task = processor.background(self.intake)
            if task is not None:
                self._background.append(asyncio.create_task(task, name=processor.name))
        log.info(
            "rtclake started",
            node=self.settings.node,
            spool=(
                f"jetstream stream {self.settings.spool.jetstream.stream}"
                if self.settings.spool.backend == "jetstream"
                else str(self.settings.spool_dir)
            ),
            lake=self.settings.lake_root,
            catalog=str(parse_url(self.settings.lake_catalog)),
            sources=self.source_names,
            processors=[p.name for p in self.chain.processors] if self.chain else [],
            sinks=[s.name for s in self.sinks],
        )

    async def _close_idle_queries(self) -> None:
        """Close the DuckDB instances the query engine kept and nobody used for a while:
        their memory goes back to the system."""
        timeout = self.query.idle_timeout
        while True:
            await asyncio.sleep(max(1.0, timeout / 2))
            await asyncio.to_thread(self.query.close_idle, older_than=timeout)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, store what the spool holds (within ``drain_timeout``), close."""
        await self.throughput.stop()
        tasks = [*self._background, *([self._idle_sweep] if self._idle_sweep else []),
                 *([self._name_task] if self._name_task else [])]  # fmt: skip
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        self._name_task = None
        self._idle_sweep = None
        if self.alerts is not None:
            await self.alerts.stop()
        if self.maintenance is not None:
            await self.maintenance.stop()
        for source in self.sources:
            await source.stop()
        drained = await self.writer.drain(drain_timeout)
        if not drained:
            log.warning("rtclake stopping with records still spooled; they replay on start")
        await self.spool.close()
        await self.writer.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.delivery.close)
        self.intake.close()
        if self.chain is not None:
            self.chain.close()
        self.query.close()
        if self._name_lock is not None:
            self._name_lock.release()
            self._name_lock = None
        self.lock.release()


def _maintenance(settings: Settings, tables: TableRegistry, metrics: Metrics) -> Schedule | None:
    """The lake's maintenance schedule (``lake.maintenance``), when the lake has a
    catalog."""
    lake = settings.lake
    if not lake.enabled or not lake.maintenance.enabled:
        return None
    url = parse_url(settings.lake_catalog)
    if url.kind == "hive":
        log.warning("maintenance: off", reason=HIVE_NO_MAINTENANCE,
                    retention=lake.maintenance.retention or None)  # fmt: skip
        return None
    catalog = Catalog(url, lake_storage(settings), tables)
    temp = settings.data_dir / MAINTENANCE_TMP
    maintenance = Maintenance(catalog, lake.maintenance, node=settings.node, metrics=metrics,
                              temp_directory=temp)  # fmt: skip
    return Schedule(maintenance)
