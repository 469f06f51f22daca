"""Derived tables: rows computed from each batch of another table as it is stored.

A query-time window over a whole table (rates from the counters of consecutive samples)
does not scale: at ten million rows it takes seconds on every chart. The writer and the
importer see the samples in order, batch after batch, so they compute such rows once:
a :class:`Derivation` reads the rows of a batch of its source tables with the *state* it
left after the previous batch (for rates, the last sample of every stream) and returns
rows of its output tables, stored with the batch (the same batch name: a replayed batch overwrites
its derived files too), and its new state.

The new state is adopted only once the batch is stored by every sink
(:meth:`Derivations.commit`): a batch delivered again after a failure or a crash is
derived again from the same state, so it produces the same rows. The writer keeps the
state on disk (``DATA_DIR/derived/NAME.arrow``) across restarts; an import keeps it in
memory for the run, so the first sample of each stream of an import makes no rate.

Lines read twice (rotated copies that overlap, an upload repeated, a log tailed and
imported) are derived again: a state keeps the latest of each stream or connection, and
cannot tell an older line read again from one never read. A derived table whose record
id comes from its identity (``rtc_rates``, ``connection_reports``) is therefore declared
``derived_again``: the lake's repeat check keeps a row derived again once.

Derivations run in registration order, and a source may be an earlier derivation's
output: per-report rows are derived from the batch's stats and the rates just derived
from them.
"""

from __future__ import annotations

import io
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import structlog

from rtclake.durable import write_atomic
from rtclake.tables import Table

log = structlog.get_logger(__name__)


class Derivation(ABC):
    """Rows of ``outputs`` derived from each batch of the ``sources``' rows, in order."""

    name: str
    sources: tuple[str, ...]  # the first one decides: a batch without its rows is skipped
    outputs: tuple[Table, ...]

    @abstractmethod
    def derive(
        self, tables: Mapping[str, pa.Table], state: pa.Table | None
    ) -> tuple[dict[str, pa.Table], pa.Table | None]:
        """The derived rows of one batch (``tables``: the batch's rows of each source that
        has some, their stored columns) and the state to carry to the next batch. Pure:
        the same rows and state give the same answer."""


def concat(parts: Sequence[pa.Table]) -> pa.Table:
    """Tables of one output, one after the other (columns a part lacks are NULL)."""
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")


class Pending:
    """New states waiting for their batch to be stored."""

    def __init__(self, states: dict[str, pa.Table | None]) -> None:
        self.states = states


class Derivations:
    """The derivations of a node, with their states (kept in ``state_dir`` if given)."""

    def __init__(self, derivations: Sequence[Derivation], state_dir: Path | None = None) -> None:
        self.derivations = list(derivations)
        self.state_dir = state_dir
        self._states: dict[str, pa.Table | None] = {}
        self._lock = threading.Lock()
        for derivation in self.derivations:
            self._states[derivation.name] = self._load(derivation.name)

    def _path(self, name: str) -> Path | None:
        return self.state_dir / f"{name}.arrow" if self.state_dir is not None else None

    def _load(self, name: str) -> pa.Table | None:
        path = self._path(name)
        if path is None or not path.exists():
            return None
        try:
            with pa.ipc.open_file(path) as reader:
                return reader.read_all()
        except (OSError, pa.ArrowInvalid) as exc:  # derived rows, never records: start over
            log.error("derive: state unreadable; starting without it", path=str(path),
                      error=str(exc))  # fmt: skip
            return None

    def derive(
        self, tables: dict[str, pa.Table], after: Pending | None = None
    ) -> tuple[dict[str, pa.Table], Pending]:
        """The derived tables of one batch and the states to :meth:`commit` once it is
        stored; ``after``: the pending states of the batch before it, not stored yet
        (batches stored together, in one group). A derivation that fails is logged and
        skipped (its rows are derived data: the batch's own records are stored
        regardless) and keeps its state."""
        derived: dict[str, pa.Table] = {}
        pending: dict[str, pa.Table | None] = dict(after.states) if after else {}
        available = {name: rows for name, rows in tables.items() if rows.num_rows}
        with self._lock:
            states = dict(self._states)
        states.update(pending)
        for derivation in self.derivations:
            if derivation.sources[0] not in available:
                continue
            given = {name: available[name] for name in derivation.sources if name in available}
            try:
                out, state = derivation.derive(given, states[derivation.name])
            except Exception as exc:
                log.error(
                    "derive: failed; the batch is stored without its derived rows",
                    derivation=derivation.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            made = {name: table for name, table in out.items() if table.num_rows}
            derived.update(made)
            available.update(made)
            pending[derivation.name] = state
        return derived, Pending(pending)

    def commit(self, pending: Pending) -> None:
        """Adopt the states of a stored batch (and write them down, for the writer)."""
        with self._lock:
            self._states.update(pending.states)
        for name, state in pending.states.items():
            path = self._path(name)
            if path is None or state is None:
                continue
            sink = io.BytesIO()
            with pa.ipc.new_file(sink, state.schema) as writer:
                writer.write_table(state)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_atomic(path, sink.getvalue())
            except OSError as exc:  # the next batch tries again; a restart loses one rate
                log.error("derive: cannot save state", path=str(path), error=str(exc))
