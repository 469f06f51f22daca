"""Delivery: the one way converted batches reach the sinks.

The writer (spool segments) and imports (file blocks, which skip the spool because the
file is the durable copy) both deliver through a :class:`Delivery`, so both keep the sink
contract of :mod:`rtclake.sinks.base`: each sink is started once, and every call to a
sink (``start``, ``write``, ``maintain``, ``close``) runs on the delivery's one thread.

A record a sink refuses for good (it raises :class:`~rtclake.sinks.base.Rejected` after
storing the rest) goes to the ``dead_letters`` table, through every other sink that takes
dead letters (the lake), with the sink, the reason and the time; then the batch counts as
confirmed by that sink, so one bad record never blocks the ones behind it. Records given
up on because the destination is out (a sink's ``give_up_after``) go the same way, but
that write counts as failed: the sink is down (``rtclake_sink_up`` 0, ``/healthz``
degraded) until a write reaches its destination again.

A batch goes to each sink that has not confirmed it yet; the caller records each
confirmation (the writer next to its spool segment, an import in memory for its block),
so a retry writes only to the sinks that lack the batch. A sink's failure never stops the
others. An ``OSError`` or :class:`~rtclake.errors.SinkError` is an outage, retried for as
long as it lasts; any other error is the batch's data (a value the sink cannot take),
which the caller sets aside after a few tries instead of retrying forever.

Metrics, labelled with each sink's name: ``rtclake_records_stored_total``,
``rtclake_batch_write_seconds``, ``rtclake_sink_errors_total``,
``rtclake_dead_letters_total``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import orjson
import pyarrow as pa
import structlog
from prometheus_client import Counter

from rtclake import faults
from rtclake.errors import ConfigError, SinkError
from rtclake.metrics import Metrics
from rtclake.redact import redact
from rtclake.sinks.base import Batch, Rejected, Sink, group_name, json_as_written
from rtclake.tables import DEAD_LETTERS, TableRegistry

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Outcome(NamedTuple):
    """What one delivery of a batch came to."""

    done: bool  # every sink has the batch
    data_error: bool  # a sink refused the batch for its data, not for an outage


class Delivery:
    """Takes batches to ``sinks`` on one thread of its own. ``tables``: which columns
    hold JSON, for the dead letters' ``record`` (without it, ``extra`` only)."""

    def __init__(
        self, sinks: Sequence[Sink], metrics: Metrics, tables: TableRegistry | None = None
    ) -> None:
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must differ (confirmations are kept by name): {names}")
        self.sinks = list(sinks)
        self.metrics = metrics
        self.tables = tables
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="rtclake-sinks", initializer=self._note_thread
        )
        self._ident: int | None = None
        self._started: set[str] = set()
        # sink -> (since when, the last error) while its start or its writes fail
        self._failing: dict[str, tuple[float, str]] = {}
        self._closed = False
        self.dead_letters = Counter(
            "rtclake_dead_letters",
            "Records a sink refused for good, written to the dead_letters table.",
            ["sink", "table"],
            registry=metrics.registry,
        )

    @property
    def needs_record_id(self) -> bool:
        """Whether some sink needs ``record_id`` on tables with an identity."""
        return any(sink.needs_record_id for sink in self.sinks)

    def _note_thread(self) -> None:
        self._ident = threading.get_ident()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The delivery's thread, for a caller whose whole batch work should run on it
        (the writer converts there: one thread, one malloc arena for a batch's life, which
        kept ~20 MB of peak RSS off under load)."""
        return self._thread

    def _call(self, function: Callable[..., T], *args: object) -> T:
        if threading.get_ident() == self._ident:
            return function(*args)  # already on the delivery's thread
        return self._thread.submit(function, *args).result()

    def prepare(self, table: str, rows: pa.Table) -> dict[tuple[str, str], Any]:
        """What each sink prepares of one table's rows (:meth:`Sink.prepare`), for the
        batch's ``prepared``; safe to call on any thread. A sink whose preparation fails
        does the work in :meth:`Sink.write`, where failures are retried and reported."""
        prepared = {}
        for sink in self.sinks:
            try:
                made = sink.prepare(table, rows)
            except Exception:
                continue
            if made is not None:
                prepared[(sink.name, table)] = made
        return prepared

    def start(self, *, refuse_misconfigured: bool = False) -> None:
        """Start the sinks not started yet (a sink whose start failed is tried again before
        its next write); failures are logged and counted, not raised, but for a
        :class:`ConfigError` when ``refuse_misconfigured`` (the service's start): no
        retry mends a configuration, and a node that took records it cannot store would
        only pile them up."""
        self._call(functools.partial(self._start_pending, refuse_misconfigured))

    def start_soon(self) -> None:
        """:meth:`start` on the delivery's thread without waiting for it: the batches
        delivered after it wait their turn behind it. An import parses its first blocks
        meanwhile (a lake's catalog takes ~0.3 s to attach and create its tables)."""
        if threading.get_ident() == self._ident:
            self._start_pending()
        else:
            self._thread.submit(self._start_pending)

    def _start_pending(self, refuse_misconfigured: bool = False) -> None:
        for sink in self.sinks:
            if sink.name in self._started:
                continue
            try:
                sink.start()
            except Exception as exc:  # the destination may come back; tried again later
                if refuse_misconfigured and isinstance(exc, ConfigError):
                    raise
                self.metrics.sink_errors.labels(sink.name).inc()
                self._fails(sink.name, exc)
                log.error("delivery: sink failed to start", sink=sink.name, error=_text(exc))
                continue
            self._started.add(sink.name)
            self._works(sink.name)

    def deliver(
        self,
        batch: Batch | Sequence[Batch],
        confirmed: Collection[str],
        confirm: Callable[[str], None],
    ) -> Outcome:
        """Write ``batch`` to each sink not in ``confirmed``, calling ``confirm(name)`` once
        a sink holds it (an ``OSError`` from ``confirm`` propagates: nothing is lost, the
        batch is delivered again).

        ``batch`` may be a group: consecutive batches of one run, which every sink takes
        in one call (:meth:`Sink.write_group`); ``confirm(name)`` then says the sink holds
        them all. A record refused for good in a group fails the group (neither an outage
        nor the data's fault): the caller then delivers the batches one at a time, where
        each refusal goes to the dead letters."""
        batches = [batch] if isinstance(batch, Batch) else list(batch)
        return self._call(self._deliver, batches, confirmed, confirm)

    def _deliver(
        self, batches: list[Batch], confirmed: Collection[str], confirm: Callable[[str], None]
    ) -> Outcome:
        self._start_pending()
        done, data_error = True, False
        name = group_name(batches)
        for sink in self.sinks:
            if sink.name in confirmed:
                continue
            if sink.name not in self._started:
                done = False
                continue
            started = time.perf_counter()
            refused: dict[str, int] = {}
            outage: str | None = None  # the destination is out; its records were given up on
            try:
                if len(batches) > 1:
                    sink.write_group(batches)
                else:
                    try:
                        sink.write(batches[0])
                    except Rejected as rejected:
                        self._dead_letter(sink, batches[0], rejected)
                        refused = {name: len(rows) for name, rows in rejected.rows.items()}
                        outage = rejected.outage
            except Rejected:  # only from a group: its batches then go one at a time
                done = False
                log.info("delivery: a record refused in a group; its batches go one at a time",
                         sink=sink.name, batch=name)  # fmt: skip
                continue
            except Exception as exc:  # a sink's failure must not stop the others
                done = False
                data_error |= not isinstance(exc, OSError | SinkError)
                self.metrics.sink_errors.labels(sink.name).inc()
                self._fails(sink.name, exc)
                log.error(
                    "delivery: sink failed; batch kept", sink=sink.name, batch=name,
                    error=_text(exc),
                )  # fmt: skip
                continue
            faults.check("writer.after_sink_write")
            self.metrics.batch_seconds.labels(sink.name).observe(time.perf_counter() - started)
            for batch in batches:
                for table_name, rows in sink.taken(batch).items():
                    stored = max(rows - refused.get(table_name, 0), 0)
                    self.metrics.stored.labels(sink.name, table_name).inc(stored)
            if outage is None:
                self._works(sink.name)
            else:
                self.metrics.sink_errors.labels(sink.name).inc()
                self._fails(sink.name, outage)
            confirm(sink.name)
            faults.check("writer.after_ack")
        return Outcome(done, data_error)

    def _fails(self, name: str, error: BaseException | str) -> None:
        since = self._failing.get(name, (time.time(), ""))[0]
        text = error if isinstance(error, str) else _text(error)
        shown = redact(text).splitlines() or [type(error).__name__]  # on /healthz
        self._failing[name] = (since, shown[0][:500])
        self.metrics.sink_up.labels(name).set(0)

    def _works(self, name: str) -> None:
        if self._failing.pop(name, None) is not None:
            log.info("delivery: sink works again", sink=name)
        self.metrics.sink_up.labels(name).set(1)

    def health(self) -> dict[str, dict[str, Any]]:
        """Each sink's state (``/healthz``): ``{"ok": true}``, or, since its last start or
        write failed, ``{"ok": false, "since": ISO time, "error": ...}``."""
        failing = dict(self._failing)  # written by the delivery's thread only
        out: dict[str, dict[str, Any]] = {}
        for sink in self.sinks:
            if sink.name in failing:
                since, error = failing[sink.name]
                when = dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds")
                out[sink.name] = {"ok": False, "since": when, "error": error}
            else:
                out[sink.name] = {"ok": True}
        return out

    def _dead_letter(self, refusing: Sink, batch: Batch, rejected: Rejected) -> None:
        """Write the rows ``refusing`` refused to the sinks that take dead letters (an
        error here leaves the batch unconfirmed by ``refusing``: retried)."""
        table = dead_letter_table(refusing.name, batch, rejected, self.tables)
        targets = [s for s in self.sinks if s.takes_dead_letters and s is not refusing]
        for name, refused in rejected.rows.items():
            self.dead_letters.labels(refusing.name, name).inc(len(refused))
            log.error(
                "delivery: records refused for good; kept as dead letters",
                sink=refusing.name,
                table=name,
                records=len(refused),
                reason=refused[0][1],
                to=[s.name for s in targets] or "the log only",
            )
        if not targets:
            for row in table.select(["table_name", "reason", "record"]).to_pylist():
                log.error("delivery: dead letter (no sink takes dead letters)", **row)
            return
        letters = Batch(batch.node, f"{batch.run}-dead-{refusing.name}", batch.segment,
                        {DEAD_LETTERS.name: table})  # fmt: skip
        for target in targets:
            if target.name not in self._started:
                raise SinkError(f"{target.name} is not started; the dead letters wait")
            target.write(letters)

    def deliver_retrying(
        self,
        batch: Batch | Sequence[Batch],
        *,
        attempts: int = 6,
        retry_initial: float = 0.5,
        retry_max: float = 8.0,
        already: Collection[str] = (),
    ) -> None:
        """Deliver ``batch`` (or a group, as :meth:`deliver`) to every sink (but those
        named in ``already``, which hold it), retrying with backoff; raise
        :class:`~rtclake.errors.SinkError` if some sink still lacks it after ``attempts``
        (what imports use: their checkpoint must not pass a batch a sink lacks). A group
        that fails is delivered one batch at a time."""
        batches = [batch] if isinstance(batch, Batch) else list(batch)
        took: set[str] = set(already)  # the sinks that took the whole group
        if len(batches) > 1 and self.deliver(batches, took, took.add).done:
            return
        for one in batches:
            self._deliver_retrying_one(one, took, attempts, retry_initial, retry_max)

    def _deliver_retrying_one(
        self,
        batch: Batch,
        already: Collection[str],
        attempts: int,
        retry_initial: float,
        retry_max: float,
    ) -> None:
        """:meth:`deliver_retrying` of one batch, to the sinks not in ``already``."""
        confirmed: set[str] = set(already)
        delay = retry_initial
        attempt = 0
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


def _as_json(text: Any) -> Any:
    """A JSON column's text, to be put into the record's JSON as it is; text that is not
    JSON (none a sink refused should be) stays text."""
    if not isinstance(text, str):
        return text
    try:
        return json_as_written(text)
    except ValueError:
        return text


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dead_letter_table(
    sink: str, batch: Batch, rejected: Rejected, tables: TableRegistry | None = None
) -> pa.Table:
    """The ``dead_letters`` rows of ``rejected`` (record ids stable across replays). Each
    ``record`` is the row as JSON, its ``extra`` and the JSON columns ``tables`` names
    as the JSON they hold (``record->'extra'->>'temp'``), not as text."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for name, refused in rejected.rows.items():
        source = batch.tables[name]
        json_columns = {"extra"}
        if tables is not None and name in tables:
            json_columns |= {c.name for c in tables[name].columns if c.kind == "json"}
        json_columns &= set(source.column_names)
        for index, reason in refused:
            record = source.slice(index, 1).to_pylist()[0]
            for column in json_columns:
                record[column] = _as_json(record[column])
            own_id = record.get("record_id")
            key = f"{sink}\x1f{name}\x1f{own_id or f'{batch.name}:{index}'}"
            rows.append({
                "record_id": hashlib.md5(key.encode(), usedforsecurity=False).hexdigest(),
                "time": now, "received_at": now, "source": "delivery", "stream": sink,
                "kind": DEAD_LETTERS.kind, "type": "rejected", "sink": sink,
                "table_name": name, "reason": reason[:4096], "batch": batch.name,
                "row_record_id": own_id,
                "record": orjson.dumps(record, default=_json_default).decode(),
            })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DEAD_LETTERS.schema)
