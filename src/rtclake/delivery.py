"""Delivery: the one way converted batches reach the sinks.

The writer (spool segments) and imports (file blocks, which skip the spool because the
file is the durable copy) both deliver through a :class:`Delivery`, so both keep the sink
contract of :mod:`rtclake.sinks.base`: each sink is started once, and every call to a
sink (``start``, ``write``, ``maintain``, ``close``) runs on the delivery's one thread.

A batch goes to each sink that has not confirmed it yet; the caller records each
confirmation (the writer next to its spool segment, an import in memory for its block),
so a retry writes only to the sinks that lack the batch. A sink's failure never stops the
others. An ``OSError`` or :class:`~rtclake.errors.SinkError` is an outage, retried for as
long as it lasts; any other error is the batch's data (a value the sink cannot take),
which the caller sets aside after a few tries instead of retrying forever.

Metrics, labelled with each sink's name: ``rtclake_records_stored_total``,
``rtclake_batch_write_seconds``, ``rtclake_sink_errors_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import structlog

from rtclake import faults
from rtclake.errors import SinkError
from rtclake.metrics import Metrics
from rtclake.sinks.base import Batch, Sink

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Outcome(NamedTuple):
    """What one delivery of a batch came to."""

    done: bool  # every sink has the batch
    data_error: bool  # a sink refused the batch for its data, not for an outage


class Delivery:
    """Takes batches to ``sinks`` on one thread of its own."""

    def __init__(self, sinks: Sequence[Sink], metrics: Metrics) -> None:
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must differ (confirmations are kept by name): {names}")
        self.sinks = list(sinks)
        self.metrics = metrics
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="rtclake-sinks")
        self._started: set[str] = set()
        self._closed = False

    @property
    def needs_record_id(self) -> bool:
        """Whether some sink needs ``record_id`` on tables with an identity."""
        return any(sink.needs_record_id for sink in self.sinks)

    def _call(self, function: Callable[..., T], *args: object) -> T:
        return self._thread.submit(function, *args).result()

    def start(self) -> None:
        """Start the sinks not started yet (a sink whose start failed is tried again before
        its next write); failures are logged and counted, not raised."""
        self._call(self._start_pending)

    def _start_pending(self) -> None:
        for sink in self.sinks:
            if sink.name in self._started:
                continue
            try:
                sink.start()
            except Exception as exc:  # the destination may come back; tried again later
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error("delivery: sink failed to start", sink=sink.name, error=_text(exc))
                continue
            self._started.add(sink.name)

    def deliver(
        self, batch: Batch, confirmed: Collection[str], confirm: Callable[[str], None]
    ) -> Outcome:
        """Write ``batch`` to each sink not in ``confirmed``, calling ``confirm(name)`` once
        a sink holds it (an ``OSError`` from ``confirm`` propagates: nothing is lost, the
        batch is delivered again)."""
        return self._call(self._deliver, batch, confirmed, confirm)

    def _deliver(
        self, batch: Batch, confirmed: Collection[str], confirm: Callable[[str], None]
    ) -> Outcome:
        self._start_pending()
        done, data_error = True, False
        for sink in self.sinks:
            if sink.name in confirmed:
                continue
            if sink.name not in self._started:
                done = False
                continue
            started = time.perf_counter()
            try:
                sink.write(batch)
            except Exception as exc:  # a sink's failure must not stop the others
                done = False
                data_error |= not isinstance(exc, OSError | SinkError)
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error(
                    "delivery: sink failed; batch kept", sink=sink.name, batch=batch.name,
                    error=_text(exc),
                )  # fmt: skip
                continue
            faults.check("writer.after_sink_write")
            self.metrics.batch_seconds.labels(sink.name).observe(time.perf_counter() - started)
            for table_name, table in batch.tables.items():
                self.metrics.stored.labels(sink.name, table_name).inc(table.num_rows)
            confirm(sink.name)
            faults.check("writer.after_ack")
        return Outcome(done, data_error)

    def deliver_retrying(
        self,
        batch: Batch,
        *,
        attempts: int = 6,
        retry_initial: float = 0.5,
        retry_max: float = 8.0,
    ) -> None:
        """Deliver ``batch`` to every sink, retrying with backoff; raise
        :class:`~rtclake.errors.SinkError` if some sink still lacks it after ``attempts``
        (what imports use: their checkpoint must not pass a batch a sink lacks)."""
        confirmed: set[str] = set()
        delay = retry_initial
        for attempt in range(1, attempts + 1):
            outcome = self.deliver(batch, confirmed, confirmed.add)
            if outcome.done:
                return
            if outcome.data_error or attempt == attempts:
                break  # data errors do not heal by waiting
            time.sleep(delay)
            delay = min(delay * 2, retry_max)
        missing = sorted(sink.name for sink in self.sinks if sink.name not in confirmed)
        raise SinkError(
            f"sinks {', '.join(missing)} did not take batch {batch.name} after {attempt}"
            " attempts; see the log for why"
        )

    def maintain(self) -> None:
        """Each sink's periodic housekeeping; failures are logged and counted."""
        self._call(self._maintain)

    def _maintain(self) -> None:
        for sink in self.sinks:
            if sink.name not in self._started:
                continue
            try:
                sink.maintain()
            except Exception as exc:  # maintenance is tried again at the next interval
                self.metrics.sink_errors.labels(sink.name).inc()
                log.error("delivery: maintenance failed", sink=sink.name, error=_text(exc))

    def close(self) -> None:
        """Close the started sinks and end the delivery's thread."""
        if self._closed:
            return
        self._closed = True
        self._call(self._close_sinks)
        self._thread.shutdown(wait=True)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            if sink.name in self._started:
                try:
                    sink.close()
                except Exception as exc:  # closing one sink must not keep others open
                    log.error("delivery: sink failed to close", sink=sink.name, error=_text(exc))


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
