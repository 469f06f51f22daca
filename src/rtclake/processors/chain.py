"""The chain: runs the configured processors, in order, with timeouts and isolation.

See :mod:`rtclake.processors.base` for the contract. The chain works on JSON Lines (what
the intake validated, what the spool holds). Each call of a processor runs on a thread of
its own, started for the call (a daemon: a processor that never returns cannot hold up
the others, nor the end of the process), with the processor's ``timeout`` counted from
the start of the call. Inside that thread the records are decoded afresh (msgspec, as
the intake read them: integers of any size), the processor runs, and a generator's
output is collected; the chain then encodes the output, checks it against the table, and
checks the reply can be sent. A call that raises, times out, returns what the table
refuses or a reply that is not JSON leaves no trace: its input goes on to the next
processor, and what it emitted or replied is dropped (each call has a context of its
own, merged only on success). While a call that timed out is still running, the
processor is skipped (``busy``), so a hung processor costs one thread, not one per batch.
A processor that returns None leaves the text of the records as it was.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
import structlog
from prometheus_client import Counter

from rtclake.errors import ConfigError, InputError
from rtclake.metrics import Metrics
from rtclake.processors.base import Context, Processor, Record, Stage
from rtclake.sources.base import Records, split_lines
from rtclake.tables import Table

if TYPE_CHECKING:
    from rtclake.brokers import BrokerSet

log = structlog.get_logger(__name__)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


@dataclass
class Processed:
    """What the chain made of one hand-over or spool entry."""

    records: Records
    changed: bool = False
    emitted: list[tuple[str, str | None, str | None, Record]] = field(default_factory=list)
    reply: Any = None


class _Failed(Exception):
    def __init__(self, reason: str, error: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _Runner:
    """Runs one processor's calls, one at a time, each on a daemon thread."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.busy = threading.Lock()

    def call(self, body: bytes, ctx: Context) -> list[Record] | None:
        """The processor's records for ``body`` (None: unchanged); raises _Failed."""
        if not self.busy.acquire(blocking=False):
            raise _Failed("busy", "its call that timed out is still running; skipped")
        box: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                records = [_decode(line) for line in body.split(b"\n")] if body else []
                result = self.processor.process(records, ctx)
                box["result"] = None if result is None else list(result)
            except BaseException as exc:  # isolation: reported to the chain, never raised
                box["error"] = exc
            finally:
                self.busy.release()
                done.set()

        thread = threading.Thread(target=run, name=f"rtclake-processor-{self.processor.name}")
        thread.daemon = True
        thread.start()
        if not done.wait(self.processor.timeout):
            raise _Failed("timeout", f"no answer within {self.processor.timeout} s")
        if "error" in box:
            error = box["error"]
            reason = "undecodable" if isinstance(error, msgspec.DecodeError) else "error"
            raise _Failed(reason, error)
        result: list[Record] | None = box["result"]
        if result is not None and not all(isinstance(r, dict) for r in result):
            raise _Failed("bad_output", "it returned something that is not a record")
        return result


# the reasons of rtclake_processor_errors_total
ERROR_REASONS = ("error", "timeout", "busy", "undecodable", "invalid_output", "invalid_emit",
                 "bad_output")  # fmt: skip


class Chain:
    """The configured processors; ``run`` is called from any thread."""

    def __init__(self, processors: Sequence[Processor], metrics: Metrics) -> None:
        names = [p.name for p in processors]
        if len(set(names)) != len(names):
            raise ValueError(f"processor names must differ: {names}")
        self.processors = list(processors)
        self._runners = {p.name: _Runner(p) for p in processors}
        self._stages = {p.stage for p in processors}
        self._active: dict[tuple[Stage, str, str], tuple[Processor, ...]] = {}
        self.errors = Counter(
            "rtclake_processor_errors",
            "Processor calls whose output was not used (error, timeout, busy, undecodable,"
            " invalid_output, invalid_emit, bad_output): the input went on unchanged.",
            ["processor", "reason"],
            registry=metrics.registry,
        )
        for processor in processors:  # at 0 from the start, so rate() sees the first one
            for reason in ERROR_REASONS:
                self.errors.labels(processor.name, reason)
        self.emitted = Counter(
            "rtclake_processor_emitted_records",
            "Records processors emitted, by processor.",
            ["processor"],
            registry=metrics.registry,
        )
        brokers = [p for p in processors if p.stage == "broker"]
        self.brokers: BrokerSet | None = None
        if brokers:
            from rtclake.brokers import Broker, BrokerSet

            self.brokers = BrokerSet(
                [b for b in brokers if isinstance(b, Broker)], metrics, self.errors
            )

    def has(self, stage: Stage) -> bool:
        return stage in self._stages

    def active(self, stage: Stage, table: str, source: str) -> tuple[Processor, ...]:
        """The processors of ``stage`` that see records of ``table`` from ``source``."""
        key = (stage, table, source)
        found = self._active.get(key)
        if found is None:
            found = tuple(
                p for p in self.processors if p.stage == stage and p.matches(table, source)
            )
            self._active[key] = found
        return found

    def start(self) -> None:
        """Start each processor; one that cannot (its database out of reach, a bad
        option) is a :class:`ConfigError` naming it: ``rtclake run`` says so in one line
        instead of a traceback."""
        for processor in self.processors:
            try:
                processor.start()
            except Exception as exc:
                raise ConfigError(
                    f"processors.{processor.name}: cannot start: {type(exc).__name__}: {exc}"
                ) from exc

    def close(self) -> None:
        for processor in self.processors:
            try:
                processor.close()
            except Exception as exc:  # closing one must not keep others open
                log.error("processor failed to close", processor=processor.name, error=str(exc))

    def run(
        self, processors: Sequence[Processor], records: Records, table: Table, ctx: Context
    ) -> Processed:
        """Run ``processors`` over ``records`` (validated JSON Lines of ``table``)."""
        out = Processed(records)
        body = records.body
        for processor in processors:
            own = Context(ctx.table, ctx.source, ctx.stream, ctx.stage)
            try:
                result = self._runners[processor.name].call(body, own)
                if result is not None:
                    encoded = b"\n".join(_encode(r) for r in result)
                    checked = split_lines(encoded, table) if encoded else Records(b"", 0, None)
                if own.replies:
                    orjson.dumps(own.replies[0])  # a reply must be sendable as JSON
            except _Failed as failed:
                self._failed(processor, failed.reason, failed.error)
                continue
            except InputError as exc:
                self._failed(processor, "invalid_output", exc)
                continue
            except (TypeError, ValueError, msgspec.EncodeError, RecursionError) as exc:
                self._failed(processor, "bad_output", exc)
                continue
            if result is not None:
                out.records, out.changed, body = checked, True, encoded
            for table_name, stream, record in own.emitted:
                out.emitted.append((processor.name, table_name, stream, record))
            if own.emitted:
                self.emitted.labels(processor.name).inc(len(own.emitted))
            ctx.emitted += own.emitted
            ctx.replies += own.replies
        if ctx.replies:
            out.reply = ctx.replies[0]
            if len(ctx.replies) > 1:
                log.warning("several processors replied; the first reply is sent",
                            table=ctx.table, source=ctx.source)  # fmt: skip
        return out

    def _failed(self, processor: Processor, reason: str, error: object) -> None:
        self.errors.labels(processor.name, reason).inc()
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        log.error("processor failed; its input went on unchanged", processor=processor.name,
                  reason=reason, error=text)  # fmt: skip
