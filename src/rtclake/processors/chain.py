"""The chain: runs the configured processors, in order, with timeouts and isolation.

See :mod:`rtclake.processors.base` for the contract. The chain works on JSON Lines (what
the intake validated, what the spool holds): each processor gets the records decoded
afresh and its output is encoded and checked against the table, so a processor that
fails (raises, times out, returns what the table refuses) leaves no trace and its input
goes on to the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from prometheus_client import Counter

from rtclake.errors import InputError
from rtclake.metrics import Metrics
from rtclake.processors.base import Context, Processor, Record, Stage
from rtclake.sources.base import Records, split_lines
from rtclake.tables import Table

log = structlog.get_logger(__name__)


@dataclass
class Processed:
    """What the chain made of one hand-over or spool entry."""

    records: Records
    changed: bool = False
    emitted: list[tuple[str, str | None, str | None, Record]] = field(default_factory=list)
    reply: Any = None


class Chain:
    """The configured processors; ``run`` is called from any thread."""

    def __init__(self, processors: Sequence[Processor], metrics: Metrics) -> None:
        names = [p.name for p in processors]
        if len(set(names)) != len(names):
            raise ValueError(f"processor names must differ: {names}")
        self.processors = list(processors)
        self._stages = {p.stage for p in processors}
        self._active: dict[tuple[Stage, str, str], tuple[Processor, ...]] = {}
        self._pool = ThreadPoolExecutor(
            max(2, len(processors)), thread_name_prefix="rtclake-processor"
        )
        self.errors = Counter(
            "rtclake_processor_errors",
            "Processor calls whose output was not used (error, timeout, invalid_output,"
            " invalid_emit, bad_output): the input went on unchanged.",
            ["processor", "reason"],
            registry=metrics.registry,
        )
        self.emitted = Counter(
            "rtclake_processor_emitted_records",
            "Records processors emitted, by processor.",
            ["processor"],
            registry=metrics.registry,
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
        for processor in self.processors:
            processor.start()

    def close(self) -> None:
        for processor in self.processors:
            try:
                processor.close()
            except Exception as exc:  # closing one must not keep others open
                log.error("processor failed to close", processor=processor.name, error=str(exc))
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self, processors: Sequence[Processor], records: Records, table: Table, ctx: Context
    ) -> Processed:
        """Run ``processors`` over ``records`` (validated JSON Lines of ``table``)."""
        out = Processed(records)
        body = records.body
        for processor in processors:
            emitted_before, replies_before = len(ctx.emitted), len(ctx.replies)
            result = self._call(processor, body, ctx)
            if result is None:
                continue
            try:
                encoded = b"\n".join(orjson.dumps(r) for r in result)
                checked = split_lines(encoded, table) if encoded else Records(b"", 0, None)
            except (TypeError, orjson.JSONEncodeError, InputError) as exc:
                reason = "invalid_output" if isinstance(exc, InputError) else "bad_output"
                self._failed(processor, reason, exc)
                del ctx.emitted[emitted_before:], ctx.replies[replies_before:]
                continue
            out.records, out.changed, body = checked, True, encoded
            for table_name, stream, record in ctx.emitted[emitted_before:]:
                out.emitted.append((processor.name, table_name, stream, record))
            if len(ctx.emitted) > emitted_before:
                self.emitted.labels(processor.name).inc(len(ctx.emitted) - emitted_before)
        if ctx.replies:
            out.reply = ctx.replies[0]
            if len(ctx.replies) > 1:
                log.warning("several processors replied; the first reply is sent",
                            table=ctx.table, source=ctx.source)  # fmt: skip
        return out

    def _call(self, processor: Processor, body: bytes, ctx: Context) -> list[Record] | None:
        """The processor's output, or None when it must be ignored (already counted)."""
        records = [orjson.loads(line) for line in body.split(b"\n")] if body else []
        emitted_before, replies_before = len(ctx.emitted), len(ctx.replies)
        future = self._pool.submit(processor.process, records, ctx)
        try:
            result = future.result(timeout=processor.timeout)
        except FutureTimeout:
            future.cancel()
            self._failed(processor, "timeout", f"no answer within {processor.timeout} s")
            result = _FAILED
        except Exception as exc:  # isolation: the input goes on
            self._failed(processor, "error", exc)
            result = _FAILED
        if result is _FAILED:
            del ctx.emitted[emitted_before:], ctx.replies[replies_before:]
            return None
        if result is None:
            result = records
        if not isinstance(result, list):
            try:
                result = list(result)
            except TypeError as exc:
                self._failed(processor, "bad_output", exc)
                del ctx.emitted[emitted_before:], ctx.replies[replies_before:]
                return None
        if not all(isinstance(r, dict) for r in result):
            self._failed(processor, "bad_output", "it returned something that is not a record")
            del ctx.emitted[emitted_before:], ctx.replies[replies_before:]
            return None
        return result

    def _failed(self, processor: Processor, reason: str, error: object) -> None:
        self.errors.labels(processor.name, reason).inc()
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
        log.error("processor failed; its input went on unchanged", processor=processor.name,
                  reason=reason, error=text)  # fmt: skip


_FAILED: Any = object()
