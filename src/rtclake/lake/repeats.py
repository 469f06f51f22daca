"""Which rows of a batch the lake, or the batch itself, holds already: the lake sink's
repeat check (:class:`RepeatCheck`).

A row is a repeat when a row before it in the batch has its key (``Table.record_key``),
or when the lake holds its key at the same time, or, for a record timed at its arrival
(it had no time of its own, so a sender's retry arrives later), within the window.

The exact check is SQL over the lake's rows at the batch's times (:meth:`RepeatCheck.exact`).
Run on every row, it cost the writer more than anything else the catalog adds: HTTP
groups follow each other within the same seconds, so each read the last groups' rows of
those seconds back and joined them (60-135 ms a group of 100,000 records, measured:
docs/BENCHMARKS.md). So the check first compares 64-bit hashes of the keys: the batch's
with each other, and with the hashes of the lake's rows at the batch's times. Those are
kept in memory from one transaction to the next (:class:`Seen`), so only the times the
last one did not cover are read; and the first reads every row after the batch's first
time when there are few, so that later batches, which follow it in time, read nothing.
Only rows whose hash is met (a repeat, or very rarely two keys with one hash) go through
the exact check, which decides.

What is kept holds while every commit to the lake since it was made is this sink's own:
each transaction compares DuckLake's snapshot with the one the sink's last commit made,
and reads the lake afresh when another node, maintenance or anything else committed
meanwhile. It is forgotten when a commit fails (its outcome is unknown).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rtclake.lake.catalog import ALIAS, PARTITION, duck_columns
from rtclake.tables import Table

#: At most this many of the lake's keys are read into memory for the exact check (beyond
#: it the join stays in DuckLake's scan, memory bounded).
LAKE_KEYS = 200_000
#: At most this many hashes of the lake's keys (with their times: 16 bytes each) are kept
#: in memory, over all tables; beyond it a table's batches are checked exactly.
SEEN_ROWS = 2_000_000
#: A check with nothing kept reads every row of the lake after the batch's first time when
#: there are at most this many (else those at the batch's times only).
OPEN_ROWS = 200_000
#: ``Seen.hi`` of what holds every row of the lake after ``Seen.lo``.
OPEN = np.iinfo(np.int64).max
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def _micros(at: dt.datetime) -> int:
    return (at - _EPOCH) // _US


def _lake_rows(table: Table, above: str = ">=", below: str = "<=") -> str:
    """``FROM`` and ``WHERE`` of the lake's rows of ``table`` (as ``x``) between two times,
    by date partition first (:func:`_between` gives the parameters)."""
    return (
        f'{ALIAS}."{table.name}" x WHERE x.{PARTITION} BETWEEN ?::DATE AND ?::DATE'
        f" AND x.time {above} ? AND x.time {below} ?"
    )


def _between(first: dt.datetime, last: dt.datetime) -> list[Any]:
    """The parameters of :func:`_lake_rows`."""
    return [first.date(), last.date(), first, last]


@dataclass
class Seen:
    """The hashes of the keys of every row one table of the lake holds from ``lo`` to
    ``hi`` (microseconds, both included), as of DuckLake's snapshot ``snapshot``; sorted,
    each with its row's time."""

    snapshot: int
    lo: int
    hi: int
    hashes: np.ndarray[Any, np.dtype[np.uint64]]
    times: np.ndarray[Any, np.dtype[np.int64]]

    def within(self, lo: int, hi: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        keep = (self.times >= lo) & (self.times <= hi)
        if keep.all():  # (the usual case: the next group's rows follow in time; no copy)
            return self.hashes, self.times
        return self.hashes[keep], self.times[keep]


def _merged(
    snapshot: int, lo: int, hi: int, parts: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
) -> Seen:
    """One :class:`Seen` of parts, each sorted by hash: the smaller ones inserted into the
    largest where they belong. (Concatenated and sorted again, the kept hashes, up to
    :data:`SEEN_ROWS` of them, were copied three times a group: a sort order and two
    gathers beside the concatenation, ~80 MB at once for 2,000,000 of them.)"""
    parts = [part for part in parts if len(part[0])]
    if not parts:
        return Seen(snapshot, lo, hi, np.empty(0, np.uint64), np.empty(0, np.int64))
    parts.sort(key=lambda part: len(part[0]), reverse=True)
    hashes, times = parts[0]
    if len(parts) > 1:
        more_hashes = np.concatenate([h for h, _ in parts[1:]])
        more_times = np.concatenate([t for _, t in parts[1:]])
        if len(parts) > 2:
            order = np.argsort(more_hashes)
            more_hashes, more_times = more_hashes[order], more_times[order]
        at = np.searchsorted(hashes, more_hashes)
        hashes, times = np.insert(hashes, at, more_hashes), np.insert(times, at, more_times)
    return Seen(snapshot, lo, hi, hashes, times)


class RepeatCheck:
    """The lake sink's repeat check, and what it keeps of the lake between transactions.

    Call :meth:`begin` before a transaction's first :meth:`new_rows`, :meth:`committed`
    after its commit, :meth:`forget` when it failed. One connection, one thread."""

    def __init__(self, window: dt.timedelta) -> None:
        self.window = window
        self._seen: dict[str, Seen] = {}  # as of the sink's last commit
        self._pending: dict[str, Seen] = {}  # as of the open transaction's commit
        self._snapshot: int | None = None  # the open transaction's
        self._types: dict[str, dict[str, str]] = {}

    def begin(self) -> None:
        self._pending.clear()
        self._snapshot = None

    def committed(self) -> None:
        """The open transaction committed: what was kept, and what it added, now holds as of
        its commit's snapshot (the next after the one it began at: a commit is one
        snapshot; if another commit came first, the next transaction's snapshot differs
        and it reads the lake afresh)."""
        if self._snapshot is None:  # no check ran: what the lake holds now is not known
            self.forget()
            return
        before, after = self._snapshot, self._snapshot + 1
        seen = {name: s for name, s in self._seen.items() if s.snapshot == before}
        seen.update(self._pending)
        for s in seen.values():
            s.snapshot = after
        while seen and sum(len(s.hashes) for s in seen.values()) > SEEN_ROWS:
            del seen[max(seen, key=lambda name: len(seen[name].hashes))]
        self._seen = seen
        self._pending = {}
        self._snapshot = None

    def forget(self) -> None:
        self._seen.clear()
        self._pending.clear()
        self._snapshot = None

    def _transaction_snapshot(self, con: Any) -> int:
        if self._snapshot is None:
            row = con.execute(f"SELECT id FROM {ALIAS}.current_snapshot()").fetchone()
            self._snapshot = int(row[0])
        return self._snapshot

    def _hash_sql(self, con: Any, table: Table, prefix: str = "") -> str:
        """``hash()`` of the key columns, each cast to the lake's type of it, so a batch's
        Arrow and the lake's files hash alike."""
        types = self._types.get(table.name)
        if types is None:
            types = self._types[table.name] = duck_columns(con, table)
        keys = ", ".join(f'CAST({prefix}"{k}" AS {types[k]})' for k in table.record_key)
        return f"hash({keys})"

    def new_rows(self, con: Any, table: Table, rows: pa.Table) -> pa.Table:
        """``rows`` without the repeats (in their order), inside the open transaction.

        Rows timed at their arrival are compared with the lake's rows within the window
        either side, which what is kept does not cover: they always go to the exact check
        (records without a time of their own; one whose own time equals its arrival by
        chance has its arrival moved on by the converter)."""
        if pc.min_max(rows["time"])["min"].as_py() is None:  # (every row has a time)
            return rows
        arrived = (
            pc.equal(rows["time"], rows["received_at"])
            .fill_null(False)
            .to_numpy(zero_copy_only=False)
        )
        timed = rows.filter(pa.array(~arrived)) if arrived.any() else rows
        seen = None
        if timed.num_rows:
            lo, hi = (v.as_py() for v in pc.min_max(timed["time"]).values())
            start, end = _micros(lo), _micros(hi)
            seen = self._lake(con, table, start, end)
        drop = np.zeros(rows.num_rows, dtype=bool)
        if seen is None:  # too many to keep, or none timed: the exact check, on every row
            self._seen.pop(table.name, None)
            self._pending.pop(table.name, None)
            drop[self.exact(con, table, rows, np.arange(rows.num_rows))] = True
            return rows.filter(pa.array(~drop)) if drop.any() else rows
        name = "_hashed"
        con.register(name, rows.select(list(table.record_key)))
        try:
            got = con.execute(f"SELECT {self._hash_sql(con, table)} FROM {name}")
            hashes = got.fetch_arrow_table().column(0).to_numpy()
        finally:
            con.unregister(name)
        times = rows["time"].cast(pa.int64()).to_numpy()
        # equal hashes may come in any order (all of them are met): NumPy's default sort,
        # vectorised, took a fifth of the stable one's time (15 -> 3 ms a 120,000-row group)
        order = np.argsort(hashes)
        ordered = hashes[order]
        met = arrived.copy()
        twice = ordered[1:] == ordered[:-1]  # within the batch
        met[order[1:][twice]] = True
        met[order[:-1][twice]] = True
        if len(seen.hashes):
            at = np.minimum(np.searchsorted(seen.hashes, ordered), len(seen.hashes) - 1)
            met[order[seen.hashes[at] == ordered]] = True
        if met.any():
            positions = np.flatnonzero(met)
            drop[self.exact(con, table, rows.take(positions), positions)] = True
        # what the lake holds at the kept times once this commits (every row stored there)
        added = ~drop[order] & (times[order] >= seen.lo) & (times[order] <= seen.hi)
        parts = [(seen.hashes, seen.times), (ordered[added], times[order][added])]
        pending = _merged(seen.snapshot, seen.lo, seen.hi, parts)
        if len(pending.hashes) <= SEEN_ROWS:
            self._pending[table.name] = pending
        else:
            self._pending.pop(table.name, None)
            self._seen.pop(table.name, None)
        return rows.filter(pa.array(~drop)) if drop.any() else rows

    def _lake(self, con: Any, table: Table, start: int, end: int) -> Seen | None:
        """The hashes of the lake's rows from ``start`` to ``end``: what is kept of them,
        and the rest read; None when there are more than :data:`SEEN_ROWS`.

        Without what is kept, every row of the lake from ``start`` on is read when there
        are at most :data:`OPEN_ROWS` (the usual case: a writer's or an import's groups
        follow each other in time): what is kept then covers every later time (``hi`` is
        :data:`OPEN`), and the next groups read the lake only if they reach back before
        it. (Each group read its own range, one query of DuckLake's scan a table and
        group, which found nothing but this sink's own last rows.)"""
        snapshot = self._transaction_snapshot(con)
        base = self._pending.get(table.name) or self._seen.get(table.name)
        reads: list[tuple[int, str, int, str]] = []
        parts = []
        hi = end
        if base is None or base.snapshot != snapshot or base.hi < start or base.lo > end:
            opened = self._read(con, table, start, ">=", OPEN, "", OPEN_ROWS)
            if opened is not None:
                parts.append(opened)
                hi = OPEN
            else:
                reads.append((start, ">=", end, "<="))
        else:
            hi = OPEN if base.hi == OPEN else end
            parts.append(base.within(start, hi))
            if start < base.lo:
                reads.append((start, ">=", base.lo, "<"))
            if end > base.hi:
                reads.append((base.hi, ">", end, "<="))
        total = sum(len(h) for h, _ in parts)
        for a, above, b, below in reads:
            got = self._read(con, table, a, above, b, below, SEEN_ROWS - total)
            if got is None:
                return None
            total += len(got[0])
            parts.append(got)
        return _merged(snapshot, start, hi, parts)

    def _read(
        self, con: Any, table: Table, a: int, above: str, b: int, below: str, most: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
        """The hashes of the lake's rows between two times (microseconds; ``above`` and
        ``below`` compare), sorted, with their times; None if there are more than
        ``most``."""
        first = _EPOCH + a * _US
        if b == OPEN:  # every row from ``a`` on
            where = f'{ALIAS}."{table.name}" x WHERE x.{PARTITION} >= ?::DATE AND x.time {above} ?'
            params: list[Any] = [first.date(), first]
        else:
            where, params = _lake_rows(table, above, below), _between(first, _EPOCH + b * _US)
        got = con.execute(
            f"SELECT {self._hash_sql(con, table, 'x.')}, epoch_us(x.time)"
            f" FROM {where} LIMIT {max(most, 0) + 1}",
            params,
        ).fetch_arrow_table()
        if got.num_rows > most:
            return None
        hashes, times = got.column(0).to_numpy(), got.column(1).to_numpy()
        order = np.argsort(hashes)
        return hashes[order], times[order]

    def exact(self, con: Any, table: Table, rows: pa.Table, positions: np.ndarray[Any, Any]) -> Any:
        """Of ``rows`` (at ``positions`` of their batch), the positions of the repeats:
        of a row before it among them, or of a record the lake holds at the same time or,
        for a record timed at its arrival, within the window.

        The repeats are found on the key columns alone (a window over the whole batch cost
        twice the insert and shuffled the rows: files 1.9x larger). Looking only at the
        rows' own times lets the lake's side skip every file of other times (a Sora
        import: 0.44 -> 0.2 s per 300k rows, one measurement)."""
        lo, hi = (v.as_py() for v in pc.min_max(rows["time"]).values())
        keys = table.record_key
        arrived = pc.equal(rows["time"], rows["received_at"]).fill_null(False)
        window = self.window if pc.any(arrived).as_py() else dt.timedelta(0)
        start, end = lo - window, hi + window
        columns = pa.table(
            {
                **{k: rows[k] for k in keys},
                "_i": pa.array(np.asarray(positions, dtype=np.int64)),
                "_t": rows["time"],
                "_arrived": arrived,
            }
        )
        names = ", ".join(f'"{k}"' for k in keys)
        wanted = names if "time" in keys else f"{names}, time"
        same = " AND ".join(f'x."{k}" IS NOT DISTINCT FROM b."{k}"' for k in keys)
        repeats = (
            f"SELECT unnest(list_sort(list(_i))[2:]) FROM _keys GROUP BY {names}"
            " HAVING count(*) > 1"
        )
        con.register("_keys", columns)
        try:
            # repeats inside the batch: rare, so first a count of distinct key hashes (7x
            # cheaper than grouping the keys; a collision only costs the exact check)
            distinct = con.execute(f"SELECT count(DISTINCT hash({names})) FROM _keys").fetchone()
            inner = distinct is None or distinct[0] != rows.num_rows
            # The lake's rows at the batch's times, read once: usually few, and then the
            # match is an in-memory join, not a join through DuckLake's scan (a 30k-row
            # Sora block: ~45 -> ~20 ms). Beyond LAKE_KEYS of them, the join stays in
            # DuckLake's scan (memory bounded).
            lake = con.execute(
                f"SELECT {wanted} FROM {_lake_rows(table)} LIMIT {LAKE_KEYS + 1}",
                _between(start, end),
            ).fetch_arrow_table()
            queries, params = [repeats] if inner else [], []
            if lake.num_rows > LAKE_KEYS:
                queries.append(
                    f"SELECT _i FROM _keys b WHERE EXISTS (SELECT 1 FROM {_lake_rows(table)}"
                    f" AND {same} AND (x.time = b._t OR b._arrived))"
                )
                params = _between(start, end)
            elif lake.num_rows:
                # semi joins on equalities alone, 4x cheaper than the EXISTS in memory
                # (an OR in the condition makes DuckDB join by nested loops: 40 s for
                # 144k rows on either side). Through DuckLake's scan it stays an EXISTS:
                # a semi join there failed on files other nodes had just added
                # ("Unknown name map id", tests/test_three_nodes.py).
                con.register("_lake", lake)
                queries.append(
                    f"SELECT _i FROM _keys b SEMI JOIN _lake x ON {same} AND x.time = b._t"
                    " WHERE NOT b._arrived"
                )
                if window:
                    queries.append(
                        f"SELECT _i FROM _keys b SEMI JOIN _lake x ON {same} WHERE b._arrived"
                    )
            if not queries:
                return np.empty(0, dtype=np.int64)
            repeated = con.execute(" UNION ALL ".join(queries), params).fetch_arrow_table()
        finally:
            con.unregister("_keys")
            con.unregister("_lake")
        return repeated.column(0).to_numpy()
