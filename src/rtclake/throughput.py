"""What this process has been storing lately: its own counters (``metrics.py``) sampled on
an interval into a ring buffer in memory, for the dashboard's "records/s" chart.

Read from the counters, not from the lake: the figure says what rtclake is doing, also
while the lake cannot be queried, and costs no query. Nothing is kept across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from rtclake.metrics import Metrics


@dataclass(frozen=True)
class Sample:
    """The counters' totals at one moment (``time``: seconds since the epoch)."""

    time: float
    received: float  # records made durable in the spool, every source
    stored: dict[str, float]  # rows written, per sink


def _total(counter: Counter) -> dict[str, float]:
    """A labelled counter's ``_total`` samples, summed per value of its first label."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = next(iter(sample.labels.values()), "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


class Throughput:
    """Samples ``metrics`` every ``interval`` seconds, keeping the last ``keep`` seconds."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        interval: float = 5.0,
        keep: float = 3_600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.interval = interval
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=max(2, int(keep / interval) + 1))
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        """Take one sample now."""
        received = sum(_total(self.metrics.received).values())
        self.samples.append(Sample(self.clock(), received, _total(self.metrics.stored)))

    def series(self) -> dict[str, Any]:
        """Records per second between consecutive samples: ``time`` (the later sample, epoch
        seconds), ``received`` and ``stored`` per sink, lists of the same length. A counter
        that went down (it cannot, short of a restart) counts from zero."""
        samples = list(self.samples)
        times: list[float] = []
        received: list[float] = []
        sinks = sorted({name for s in samples for name in s.stored})
        stored: dict[str, list[float]] = {name: [] for name in sinks}
        for before, after in itertools.pairwise(samples):
            seconds = after.time - before.time
            if seconds <= 0:
                continue
            times.append(after.time)
            received.append(_rate(before.received, after.received, seconds))
            for name in sinks:
                stored[name].append(
                    _rate(before.stored.get(name, 0.0), after.stored.get(name, 0.0), seconds)
                )
        return {"interval_s": self.interval, "time": times, "received": received, "stored": stored}

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Sample on the running event loop until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _rate(before: float, after: float, seconds: float) -> float:
    return (after - before if after >= before else after) / seconds
