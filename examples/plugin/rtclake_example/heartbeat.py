"""A source: a heartbeat record every ``interval`` seconds, handed to the intake.

Everything a source does is here: read its transport (here, a clock), validate against
the table the router picks for its stream, hand the records over with ``intake.take``,
and treat its return as "durable" (a real source would acknowledge or checkpoint then).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket

import orjson
import structlog
from pydantic import Field

from rtclake.errors import InputError, SpoolUnavailable
from rtclake.intake import Intake
from rtclake.registry import BuildContext, ComponentType, SourceConfig
from rtclake.sources.base import Source

log = structlog.get_logger(__name__)


class HeartbeatConfig(SourceConfig):
    """``type: heartbeat``."""

    interval: float = Field(default=10.0, gt=0, description="seconds between two beats")
    stream: str = Field(default="heartbeat", description="the router picks the table by it")


class Heartbeat(Source):
    def __init__(self, name: str, config: HeartbeatConfig, intake: Intake) -> None:
        self.name = name
        self.config = config
        self.intake = intake
        self.beats = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        table = self.intake.table_for(self.config.stream)
        while True:
            self.beats += 1
            record = {
                "time": dt.datetime.now(dt.UTC).isoformat(),
                "device_id": socket.gethostname(),
                "beat": self.beats,
            }
            try:
                records = self.intake.validate(orjson.dumps(record), table)
                await self.intake.take(self.name, self.config.stream, table, records)
            except (InputError, SpoolUnavailable) as exc:
                log.warning("heartbeat not stored", source=self.name, error=str(exc))
            await asyncio.sleep(self.config.interval)


def build(config: HeartbeatConfig, ctx: BuildContext) -> Heartbeat:
    assert ctx.intake is not None  # sources are built with the intake
    return Heartbeat(ctx.name, config, ctx.intake)


HEARTBEAT = ComponentType("source", "heartbeat", HeartbeatConfig, build, "A beat every interval.")
