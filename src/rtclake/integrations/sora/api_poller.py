"""The Sora API poller: what Sorabeat and sora_exporter fetch, stored in the lake.

Every ``interval`` seconds it asks each configured Sora node (``POST`` to the node's API
URL with an ``x-sora-target`` header) for ``GetStatsReport``, ``GetStatsAllConnections``
and, on Sora 2024.1+, ``ListRtcStats``, and spools the answers as ``sora_stats_report``,
``sora_connection_counters`` and ``rtc_stats`` records (see :mod:`rtclake.integrations.sora.api`).

What it guarantees: an answer is stored only if it came with a 2xx status within
``timeout`` seconds, is JSON of the expected shape, and every record passes its table's
validation; otherwise nothing of it is stored, the failure is counted in
``rtclake_sora_api_errors_total{node, operation, reason}`` and logged, and the next round
polls again. A poll that could not be stored is not repeated (the API has no history);
records of a stored poll are durable when :meth:`Spool.append` returns. A node that
answers ListRtcStats with a 4xx (Sora older than 2024.1) is not asked for it again until
restart.

What it reports: the error counter above, ``rtclake_records_received_total{source=
"sora_api"}``, and the latest GetStatsReport of each node under sora_exporter's names
(:mod:`rtclake.integrations.sora.exporter`), including ``sora_up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import structlog
from prometheus_client import Counter

from rtclake.errors import ConfigError, InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.integrations.sora import api
from rtclake.integrations.sora.config import SoraApiConfig
from rtclake.integrations.sora.exporter import SoraExporterCollector
from rtclake.sources.base import Source
from rtclake.tables import TableRegistry

log = structlog.get_logger(__name__)

MiB = 1024 * 1024


class ApiCallFailed(Exception):
    """One API call gave nothing to store; ``reason`` is the metric's label."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


_FAILED: Any = object()  # what _fetch returns for a call that gave nothing (JSON null is None)


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class SoraApiPoller(Source):
    """Polls Sora nodes' HTTP API and spools what they answer."""

    name = "sora_api"

    def __init__(
        self,
        config: SoraApiConfig,
        intake: Intake,
        tables: TableRegistry,
    ) -> None:
        self.config = config
        self.intake = intake
        metrics = intake.metrics
        self.tables = tables
        for table in (api.SORA_STATS_REPORT.name, api.SORA_CONNECTION_COUNTERS.name, "rtc_stats"):
            if table not in tables:
                raise ConfigError(f"sora_api: the table {table!r} is not in the catalog")
        self.errors = Counter(
            "rtclake_sora_api_errors",
            "Sora API calls that gave nothing to store, by node, operation and reason"
            " (timeout, connection, http_<status>, bad_json, unexpected_answer,"
            " invalid_record, too_large, spool_full, unsupported).",
            ["node", "operation", "reason"],
            registry=metrics.registry,
        )
        self.exporter = SoraExporterCollector()
        metrics.registry.register(self.exporter)
        self._rtc_stats_unsupported: set[str] = set()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the HTTP client and start polling (the first round runs at once)."""
        self._client = self._new_client()
        self._task = asyncio.create_task(self._run(), name="sora_api")

    async def stop(self) -> None:
        """Stop polling; a round in progress is abandoned (nothing half-stored)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout),
            # Sora's API is an internal endpoint: proxies meant for outbound traffic must
            # not capture it, and a redirect is not an answer.
            trust_env=False,
            follow_redirects=False,
        )

    async def _run(self) -> None:
        # Rounds start on a fixed grid; a round longer than the interval skips ticks
        # instead of piling up calls on a slow node.
        started = time.monotonic()
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug in one round must not end polling for good
                log.exception("sora_api: poll round failed")
            elapsed = time.monotonic() - started
            await asyncio.sleep(self.config.interval - elapsed % self.config.interval)

    async def poll_once(self) -> None:
        """One round: every node, concurrently; returns when each has been stored or
        counted as failed."""
        own_client = self._client is None
        if own_client:
            self._client = self._new_client()
        try:
            when = _now_rfc3339()
            await asyncio.gather(*(self._poll_node(node, when) for node in self.config.nodes))
        finally:
            if own_client and self._client is not None:
                await self._client.aclose()
                self._client = None

    async def _poll_node(self, node: str, when: str) -> None:
        # A node's operations go one after another: Sora serves the API on the same
        # machine as the media, and polling must not add load bursts.
        report = await self._fetch(node, api.GET_STATS_REPORT)
        failure: str | None = "no answer"
        if report is not _FAILED:
            failure = await self._store(
                node,
                api.GET_STATS_REPORT,
                lambda: [api.stats_report_record(report, node=node, time=when)],
            )
        # A full spool is rtclake's trouble, not Sora's: the answer is still the latest.
        if failure in (None, "spool_full"):
            self.exporter.update(node, report)
        else:
            self.exporter.failed(node)
        if self.config.all_connections:
            connections = await self._fetch(node, api.GET_STATS_ALL_CONNECTIONS)
            if connections is not _FAILED:
                await self._store(
                    node,
                    api.GET_STATS_ALL_CONNECTIONS,
                    lambda: api.connection_records(connections, node=node, time=when),
                )
        if self.config.list_rtc_stats and node not in self._rtc_stats_unsupported:
            rtc = await self._fetch(node, api.LIST_RTC_STATS)
            if rtc is not _FAILED:
                await self._store(node, api.LIST_RTC_STATS, lambda: api.rtc_stats_records(rtc))

    async def _fetch(self, node: str, operation: str) -> Any:
        """The decoded JSON answer of one call, or ``_FAILED`` after counting why there is
        none."""
        try:
            return await self._call(node, operation)
        except ApiCallFailed as exc:
            status = exc.status
            if operation == api.LIST_RTC_STATS and status is not None and 400 <= status < 500:
                # Sora before 2024.1 does not know the operation; it will not learn it
                # without a restart, so stop asking.
                self._rtc_stats_unsupported.add(node)
                self.errors.labels(node, operation, "unsupported").inc()
                log.info(
                    "sora_api: node does not support ListRtcStats; not asking again",
                    node=node,
                    status=status,
                )
                return _FAILED
            self.errors.labels(node, operation, exc.reason).inc()
            log.warning("sora_api: call failed", node=node, operation=operation, error=str(exc))
            return _FAILED

    async def _call(self, node: str, operation: str) -> Any:
        assert self._client is not None
        headers = {"x-sora-target": api.TARGETS[operation]}
        limit = self.config.max_response_bytes
        try:
            # The whole call, body included, must fit in the timeout: httpx's own timeout
            # is per read, and a server trickling bytes would never trip it.
            async with asyncio.timeout(self.config.timeout):
                async with self._client.stream("POST", node, headers=headers) as response:
                    if not 200 <= response.status_code < 300:
                        raise ApiCallFailed(
                            f"http_{response.status_code}",
                            f"{operation} answered HTTP {response.status_code}",
                            response.status_code,
                        )
                    chunks = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise ApiCallFailed(
                                "too_large", f"{operation} answered more than {limit} bytes"
                            )
                        chunks.append(chunk)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ApiCallFailed(
                "timeout", f"{operation} gave no full answer in {self.config.timeout} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiCallFailed("connection", f"{operation}: {type(exc).__name__}: {exc}") from exc
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise ApiCallFailed("bad_json", f"{operation} answered invalid JSON: {exc}") from exc

    async def _store(
        self, node: str, operation: str, build: Callable[[], list[dict[str, Any]]]
    ) -> str | None:
        """Validate and spool the records ``build`` makes of an answer; the reason
        (counted, logged) if they could not be stored, else None."""
        table = self.tables[_TABLE_OF[operation]]
        try:
            records = build()
            if not records:
                return None
            body = b"\n".join(orjson.dumps(r) for r in records)
            checked = self.intake.validate(body, table, lines=True)
            kind = "connection.rtc" if operation == api.LIST_RTC_STATS else operation
            await self.intake.take(self.name, operation, table, checked, type=kind)
        except InputError as exc:
            self.errors.labels(node, operation, exc.reason).inc()
            log.warning(
                "sora_api: answer refused", node=node, operation=operation, error=exc.message
            )
            return exc.reason
        except SpoolUnavailable as exc:
            self.errors.labels(node, operation, exc.reason).inc()
            log.warning(
                "sora_api: spool cannot take the answer; poll dropped",
                node=node,
                operation=operation,
                error=exc.message,
            )
            return exc.reason
        return None


_TABLE_OF = {
    api.GET_STATS_REPORT: api.SORA_STATS_REPORT.name,
    api.GET_STATS_ALL_CONNECTIONS: api.SORA_CONNECTION_COUNTERS.name,
    api.LIST_RTC_STATS: "rtc_stats",
}
