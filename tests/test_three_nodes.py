"""Three ``rtclake run`` nodes, one lake: a PostgreSQL catalog and one S3 bucket (moto).

They are loaded together, one is killed (SIGKILL) mid-load and restarted: every
acknowledged record is in the lake exactly once (counted by record identity: each
``seq`` sent once, read back once), maintenance ran on exactly one node (the leader: the
metric ``rtclake_maintenance_runs_total`` is labelled with the node), and a fourth
process reading with ``rtclake query`` all along sees a consistent snapshot: counts that
never go down and never a record twice, also while merges run.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import orjson
import psycopg
import pytest
from psycopg import sql

from tests.conftest import Server, wait_for

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STREAM = "three"


@pytest.fixture
def catalog_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the lake's catalog, dropped after the test."""
    name = f"rtclake_nodes_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # scripts/services.sh starts it
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not running: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgres://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class Load:
    """Posts batches of records with increasing ``seq`` to every node in turn, from one
    thread per node; remembers what each node acknowledged."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.seqs = itertools.count()
        self.lock = threading.Lock()
        self.acked: set[int] = set()
        self.sent: set[int] = set()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(servers))
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                with self.lock:
                    seqs = [next(self.seqs) for _ in range(50)]
                    self.sent.update(seqs)
                # half with a time of their own, half without (ids from the spool place)
                body = b"\n".join(
                    orjson.dumps({"seq": s, **({"time": 1_795_132_800 + s} if s % 2 else {})})
                    for s in seqs
                )
                try:
                    url = self.servers[index].url
                    answer = client.post(f"{url}/ingest/{STREAM}", content=body)
                except httpx.HTTPError:  # the node is down (killed): the next try
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200 and answer.json() == {"accepted": len(seqs)}:
                    with self.lock:
                        self.acked.update(seqs)
                else:
                    time.sleep(0.05)


def query(env: dict[str, str], data_dir: Path, text: str) -> list[list[Any]]:
    """``rtclake query`` as a fourth process, with the nodes' lake settings."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    environ |= env | {"RTCLAKE_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "rtclake", "query", "--format", "json", text],
        env=environ, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return [list(row.values()) for row in orjson.loads(done.stdout)]


def test_three_nodes_store_each_acknowledged_record_once_and_one_maintains(
    make_server: Any, tmp_path: Path, s3_endpoint: str, catalog_url: str
) -> None:
    bucket = f"nodes-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="k", aws_secret_access_key="s",
    ).create_bucket(Bucket=bucket)  # fmt: skip
    lake = {
        "RTCLAKE_LAKE__ROOT": f"s3://{bucket}/lake",
        "RTCLAKE_LAKE__CATALOG": catalog_url,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1",
    }
    env = lake | {
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.3",
        "RTCLAKE_QUERY__MAX_ROWS": "2000000",
        "RTCLAKE_QUERY__MAX_RESULT_BYTES": "268435456",
        "RTCLAKE_LAKE__MAINTENANCE__INTERVAL": "300",
        "RTCLAKE_LAKE__MAINTENANCE__CLEANUP_AFTER": "60",  # > any upload-to-commit gap
        "RTCLAKE_LAKE__MAINTENANCE__EXPIRE_AFTER": "1",
    }
    nodes = [make_server(tmp_path / f"node{i}", RTCLAKE_NODE=f"n{i}", **env) for i in range(3)]
    total = "SELECT count(*), count(DISTINCT (extra->>'seq')) FROM telemetry"
    seen: list[tuple[int, int]] = []
    reader_errors: list[str] = []
    reading = threading.Event()

    def reader() -> None:  # the fourth process, all along
        while not reading.is_set():
            try:
                (row,) = query(lake, tmp_path / "reader", total)
                seen.append((int(row[0]), int(row[1])))
            except Exception as exc:
                reader_errors.append(f"{type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    try:
        with Load(nodes) as load:
            runs = "rtclake_maintenance_runs_total"
            assert wait_for(lambda: any(n.metric(runs, outcome="done") >= 1 for n in nodes), 40), (
                "no node maintained the lake"
            )
            leader = next(n for n in nodes if n.metric(runs, outcome="done") >= 1)
            victim = next(n for n in nodes if n is not leader)
            time.sleep(2)
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)  # mid-load
            victim.proc.wait(10)
            victim.proc = None
            time.sleep(1)
            victim.start()  # the same data directory: its spool replays
            time.sleep(4)
        acked, sent = set(load.acked), set(load.sent)
        assert len(acked) > 2000, "too little load to mean much"

        def stored() -> Counter[int]:
            rows = nodes[0].query(
                "SELECT (extra->>'seq')::BIGINT, count(*) FROM telemetry"
                f" WHERE stream = '{STREAM}' GROUP BY 1",
                max_rows=10_000_000,
            )["rows"]
            return Counter({int(s): int(n) for s, n in rows})

        assert wait_for(lambda: acked <= stored().keys(), 60), "acknowledged records missing"
        counts = stored()
        assert not (counts.keys() - sent), "rows nobody sent"
        assert [s for s, n in counts.items() if n > 1] == [], "records stored twice"
        assert acked <= counts.keys()
    finally:
        reading.set()
        watcher.join(60)
    assert not reader_errors, reader_errors[:3]
    assert len(seen) >= 3
    for (before, _), (after, _) in itertools.pairwise(seen):
        assert after >= before, seen  # a snapshot never goes back
    assert all(rows == distinct for rows, distinct in seen), seen  # never a record twice
    ran = {n.env["RTCLAKE_NODE"]: n.metric("rtclake_maintenance_runs_total", outcome="done")
           for n in nodes}  # fmt: skip
    print(
        f"acked {len(acked)}, stored {sum(counts.values())} rows of {len(counts)} seqs;"
        f" the reader's {len(seen)} snapshots: {seen[0]} .. {seen[-1]}; maintenance runs {ran}"
    )
    assert sorted(v > 0 for v in ran.values()) == [False, False, True], ran
