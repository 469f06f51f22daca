"""Crash recovery: what the server acknowledged survives kill -9, once and only once."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest

from rtclake.catalog import default_registry
from rtclake.lake.catalog import DEFAULT_FILE, LEDGER, Catalog, default_url
from rtclake.lake.query import QueryEngine
from rtclake.lake.storage import storage_for
from tests.conftest import Server

STREAM = "crash"
# Records' times start two minutes before midnight, one second apart, so batches span
# several date partitions (one Parquet file per date and batch).
TIME0 = int(dt.datetime(2026, 3, 1, 23, 58, tzinfo=dt.UTC).timestamp())
CRASH_ENV = {
    "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.3",
    "RTCLAKE_SPOOL__FSYNC": "true",
    "RTCLAKE_QUERY__MAX_ROWS": "5000000",
}


class Load:
    """Client threads posting records with unique ``seq`` numbers to one server.

    Half the requests are JSON Lines batches of 50-500 records, the rest single objects.
    A seq counts as acknowledged only when its request was answered 2xx with the right
    ``accepted`` count.
    """

    def __init__(self, url: str, seqs: itertools.count[int], threads: int = 4) -> None:
        self.url = url
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.unanswered = 0  # requests that got no answer (the server died under them)
        self.refused: list[str] = []  # non-2xx answers: none are expected
        self.in_flight = 0
        self._seqs = seqs
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a client thread hangs"

    def wait_in_flight(self, timeout: float = 2.0) -> int:
        """Wait (bounded) until a request is under way; return how many are."""
        deadline = time.monotonic() + timeout
        while self.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.in_flight

    def _body(self, rng: random.Random) -> tuple[list[int], bytes]:
        with self._lock:
            count = 1 if rng.random() < 0.5 else rng.randint(50, 500)
            seqs = [next(self._seqs) for _ in range(count)]
            self.sent.update(seqs)
        lines = [orjson.dumps({"seq": s, "time": TIME0 + s, "pad": "x" * (s % 64)}) for s in seqs]
        return seqs, (b"\n".join(lines) + b"\n" if count > 1 else lines[0])

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                seqs, body = self._body(rng)
                with self._lock:
                    self.in_flight += 1
                try:
                    response = client.post(f"/ingest/{STREAM}", content=body)
                except httpx.TransportError:
                    with self._lock:
                        self.unanswered += 1
                    time.sleep(0.02)
                    continue
                finally:
                    with self._lock:
                        self.in_flight -= 1
                if response.is_success and response.json() == {"accepted": len(seqs)}:
                    with self._lock:
                        self.acked.update(seqs)
                else:
                    self.refused.append(f"{response.status_code} {response.text[:200]}")


class Ledger:
    """The lake's ledger as another process reads it: which spool segments are committed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._con: Any = None

    def committed(self) -> set[str]:
        if self._con is None:
            if not (self.data_dir / "lake" / DEFAULT_FILE).exists():
                return set()
            catalog = Catalog(
                default_url(str(self.data_dir / "lake")),
                storage_for(self.data_dir / "lake"),
                default_registry(),
            )
            self._con = catalog.connect()
        try:
            rows = self._con.execute(f"SELECT run, seq FROM lake.{LEDGER}").fetchall()
        except duckdb.Error:  # the ledger is created with the sink's first connection
            return set()
        return {f"{run}-{seq:012d}" for run, seq in rows}

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def delivered_but_spooled(data_dir: Path, ledger: Ledger) -> set[str]:
    """Segments the lake committed while they are still in the spool."""
    spooled = {
        entry.name[:-4] for entry in os.scandir(data_dir / "spool") if entry.name.endswith(".wal")
    }
    return spooled & ledger.committed() if spooled else set()


def run_load_and_kill(server: Server, seqs: itertools.count[int], seconds: float) -> Load:
    """Post records for ``seconds``, then SIGKILL the server with requests in flight,
    preferably just after a batch reached the lake and before the spool let go of it
    (its replay then writes records the lake already holds)."""
    ledger = Ledger(server.data_dir)
    with Load(server.url, seqs) as load:
        time.sleep(seconds)
        deadline = time.monotonic() + 3.0
        while not delivered_but_spooled(server.data_dir, ledger) and time.monotonic() < deadline:
            time.sleep(0.001)
        in_flight = load.wait_in_flight()
        server.stop(signal.SIGKILL)
        replayed = delivered_but_spooled(server.data_dir, ledger)
        ledger.close()
        files = len(list((server.data_dir / "lake").rglob("*.parquet")))
        wal = len(list((server.data_dir / "spool").glob("*.wal")))
    print(
        f"killed with {in_flight} requests in flight, {files} Parquet files, {wal} spool"
        f" segments ({len(replayed)} already in the lake); acked {len(load.acked)},"
        f" unanswered requests {load.unanswered}"
    )
    assert not load.refused, load.refused[:5]
    return load


def wait_drained(server: Server, timeout: float = 60.0) -> None:
    """Wait until the spool is empty (everything replayed into the lake)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/healthz", timeout=5).json()
        if health["spool_segments"] == 0 and health["spool_bytes"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"spool not drained after {timeout} s: {health}")


def seq_counts_in_view(server: Server) -> Counter[int]:
    result = server.query(
        "SELECT (extra->>'seq')::BIGINT AS seq, count(*) AS n FROM telemetry"
        f" WHERE stream = '{STREAM}' GROUP BY seq",
        max_rows=5_000_000,
    )
    assert not result["truncated"]
    return Counter({int(seq): int(n) for seq, n in result["rows"]})


def seq_counts_in_parquet(data_dir: Path) -> Counter[int]:
    """Count every row of the live files the catalog lists, read as plain Parquet."""
    engine = QueryEngine(data_dir / "lake", default_registry())
    try:
        files = engine.lake_files(default_registry()["telemetry"])
    finally:
        engine.close()
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT CAST(json_extract_string(extra, '$.seq') AS BIGINT) AS seq, count(*)"
            " FROM read_parquet(?) WHERE stream = ? GROUP BY seq",
            [files, STREAM],
        ).fetchall()
    return Counter({int(seq): int(n) for seq, n in rows})


def lost_and_duplicated(
    where: str, counts: Counter[int], acked: set[int], sent: set[int]
) -> tuple[set[int], dict[int, int]]:
    lost = acked - counts.keys()
    duplicated = {seq: n for seq, n in counts.items() if n > 1}
    print(
        f"{where}: acked {len(acked)}, stored {len(counts)} ({sum(counts.values())} rows),"
        f" lost {len(lost)}, duplicated {len(duplicated)},"
        f" stored without ack {len(counts.keys() - acked)}"
    )
    assert counts.keys() <= sent, "rows that no client sent"
    return lost, duplicated


def test_acknowledged_records_survive_kill_9_exactly_once(make_server: Any) -> None:
    seqs = itertools.count()
    first: Server = make_server(**CRASH_ENV)
    load1 = run_load_and_kill(first, seqs, seconds=4.0)

    # Restart on the same data and kill again while the spool replays and new load arrives.
    second: Server = make_server(first.data_dir, **CRASH_ENV)
    load2 = run_load_and_kill(second, seqs, seconds=1.5)

    third: Server = make_server(first.data_dir, **CRASH_ENV)
    wait_drained(third)

    acked = load1.acked | load2.acked
    sent = load1.sent | load2.sent
    assert len(load1.acked) > 1000 and len(load2.acked) > 100, "too little load to mean much"
    view_lost, view_dup = lost_and_duplicated("SQL view", seq_counts_in_view(third), acked, sent)
    raw_lost, raw_dup = lost_and_duplicated(
        "Parquet files", seq_counts_in_parquet(first.data_dir), acked, sent
    )
    assert not view_lost, f"lost in the view: {sorted(view_lost)[:20]}"
    assert not view_dup, f"duplicated in the view: {sorted(view_dup.items())[:20]}"
    assert not raw_lost, f"lost in the files: {sorted(raw_lost)[:20]}"
    assert not raw_dup, f"duplicated in the files: {sorted(raw_dup.items())[:20]}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_after_the_spool_drained_keeps_earlier_batches(
    make_server: Any, sig: signal.Signals
) -> None:
    # Once every batch is in the lake the spool folder holds no segment; the batches of
    # the next run must still get file names of their own, not overwrite earlier ones.
    first: Server = make_server()
    before = b"\n".join(
        b'{"time": "2026-03-01T00:00:00Z", "run": 1, "i": %d}' % i for i in range(3)
    )
    assert httpx.post(first.url + "/ingest/restart", content=before).json() == {"accepted": 3}
    assert first.wait_rows("SELECT count(*) FROM telemetry", 3) == 3
    wait_drained(first)
    first.stop(sig)

    second: Server = make_server(first.data_dir)
    after = b'{"time": "2026-03-01T00:00:01Z", "run": 2, "i": 0}'
    assert httpx.post(second.url + "/ingest/restart", content=after).json() == {"accepted": 1}
    wait_drained(second)
    rows = second.query("SELECT extra->>'run' AS run, count(*) FROM telemetry GROUP BY 1")
    assert dict(rows["rows"]) == {"1": 3, "2": 1}
