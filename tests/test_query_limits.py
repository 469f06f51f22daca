"""The limits of a query: memory, temp space, result size and concurrent queries. A query
past one is refused with a 4xx JSON reason (a one-line error from ``rtclake query``), and
the server's memory stays bounded."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from rtclake.catalog import default_registry
from rtclake.cli import app
from rtclake.config import QueryConfig
from rtclake.errors import QueryError
from rtclake.lake.query import QueryEngine
from tests.conftest import Server

MiB = 1024 * 1024
# 400 strings of 20 MB: 8 GB if DuckDB may take what it likes.
HUNGRY = (
    "SELECT max(length(s)) FROM"
    " (SELECT repeat(chr(120), 20000000) || range::VARCHAR AS s FROM range(400))"
)
# 10,000 values of 100 kB: a 1 GB answer.
HUGE_RESULT = "SELECT repeat('x', 100000) AS s FROM range(10000)"
# A sort of ~200 MB of incompressible text, which must spill under a 64 MiB memory limit.
SPILLING_SORT = (
    "SELECT * FROM (SELECT range AS n, md5(range::VARCHAR) || md5('a' || range::VARCHAR) AS s"
    " FROM range(3000000)) ORDER BY s"
)

SLOW = "SELECT count(*) FROM range(1000000000000)"  # until the time limit


def engine(tmp_path: Path, **limits: Any) -> QueryEngine:
    return QueryEngine(tmp_path / "lake", default_registry(), temp_root=tmp_path / "qt", **limits)


def refused(run: Callable[[], Any]) -> QueryError:
    with pytest.raises(QueryError) as info:
        run()
    return info.value


def test_defaults_fit_a_small_host() -> None:
    q = QueryConfig()
    assert (q.memory_limit, q.max_concurrent, q.threads) == (512 * MiB, 2, 1)
    assert q.max_result_bytes == 64 * MiB and q.max_temp_bytes == 1024 * MiB


def test_limits_are_set_and_locked(tmp_path: Path) -> None:
    query = engine(tmp_path, memory_limit=100 * MiB, max_temp_bytes=50 * MiB, threads=1)
    sql = (
        "SELECT current_setting('memory_limit'), current_setting('max_temp_directory_size'),"
        " current_setting('threads')"
    )
    assert query.run(sql).rows() == [["100.0 MiB", "50.0 MiB", 1]]
    error = refused(lambda: query.run("SET memory_limit = '10GB'"))
    assert error.reason == "read_only" and error.status == 400


def test_a_query_over_the_memory_limit_is_refused(tmp_path: Path) -> None:
    error = refused(lambda: engine(tmp_path, memory_limit=512 * MiB).run(HUNGRY))
    assert (error.status, error.reason) == (422, "memory_limit")
    assert "query.memory_limit" in error.message and "\n" not in error.message


def test_a_query_spills_within_the_temp_limit(tmp_path: Path) -> None:
    query = engine(tmp_path, memory_limit=64 * MiB, max_temp_bytes=1024 * MiB)
    result = query.run(SPILLING_SORT, max_rows=3)
    assert result.table.num_rows == 3 and result.truncated


def test_spill_files_are_encrypted(tmp_path: Path) -> None:
    query = engine(tmp_path, memory_limit=64 * MiB, max_temp_bytes=1024 * MiB)
    plain = b"c4ca4238a0b923820dcc509a6f75849b"  # md5('1'), a value of the sort
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for folder, _, names in os.walk(tmp_path / "qt"):
                for name in names:
                    try:
                        data = (Path(folder) / name).read_bytes()
                    except FileNotFoundError:
                        continue
                    seen.append(len(data))
                    assert plain not in data
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        query.run(SPILLING_SORT, max_rows=1)
    finally:
        done.set()
        watcher.join(30)
    assert seen and max(seen) > 16 * MiB, "the sort did not spill"


def test_a_query_over_the_temp_limit_is_refused(tmp_path: Path) -> None:
    query = engine(tmp_path, memory_limit=64 * MiB, max_temp_bytes=16 * MiB)
    error = refused(lambda: query.run(SPILLING_SORT, max_rows=1))
    assert (error.status, error.reason) == (422, "temp_limit")
    assert "query.max_temp_bytes" in error.message


def test_a_result_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    error = refused(lambda: engine(tmp_path, max_result_bytes=64 * MiB).run(HUGE_RESULT))
    assert (error.status, error.reason) == (413, "result_too_large")
    assert "query.max_result_bytes" in error.message


def wait_for_a_query(temp_root: Path) -> None:
    """Return once a query runs: it has its temp folder (it holds a slot by then)."""
    deadline = time.monotonic() + 10
    while not (temp_root.exists() and os.listdir(temp_root)):
        assert time.monotonic() < deadline, "the slow query did not start"
        time.sleep(0.01)


def test_a_query_waits_for_a_slot_then_is_refused_as_busy(tmp_path: Path) -> None:
    query = engine(tmp_path, max_concurrent=1, queue_timeout=0.2, timeout=3)
    errors: list[QueryError] = []

    def run_slow() -> None:
        try:
            query.run(SLOW)
        except QueryError as exc:
            errors.append(exc)

    slow = threading.Thread(target=run_slow)
    slow.start()
    try:
        wait_for_a_query(tmp_path / "qt")
        started = time.monotonic()
        error = refused(lambda: query.run("SELECT 1"))
        assert time.monotonic() - started >= 0.2
        assert (error.status, error.reason) == (429, "busy")
        assert getattr(error, "retry_after", 0) >= 1
    finally:
        slow.join(30)
    assert [e.reason for e in errors] == ["timeout"]
    assert query.run("SELECT 1").rows() == [[1]]  # the slot is free again


def test_cli_prints_one_line_and_fails(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()  # an empty lake (without one, the CLI says where it looked)
    result = CliRunner().invoke(
        app,
        ["query", HUNGRY],
        env={"RTCLAKE_DATA_DIR": str(tmp_path), "RTCLAKE_QUERY__MEMORY_LIMIT": "256MiB"},
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (memory_limit): "), result.stderr


def post(server: Server, sql: str, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/api/query", json={"sql": sql, **body}, timeout=120)


@pytest.mark.parametrize(
    ("sql", "body", "answer"),
    [
        (HUNGRY, {}, (422, "memory_limit")),
        (HUGE_RESULT, {}, (413, "result_too_large")),
        (HUGE_RESULT, {"max_rows": 5}, (200, None)),  # all 10,000 texts made, 5 kept
    ],
    ids=["memory_limit", "result_too_large", "first_rows_of_a_huge_result"],
)
def test_the_server_stays_bounded_while_queries_run(
    make_server: Callable[..., Server], sql: str, body: dict[str, Any], answer: tuple[int, Any]
) -> None:
    server = make_server()
    q = QueryConfig()
    bound = q.max_concurrent * q.memory_limit + 400 * 10**6
    process = psutil.Process(server.proc.pid if server.proc else 0)
    answers: list[httpx.Response] = []
    clients = [
        threading.Thread(target=lambda: answers.append(post(server, sql, **body)))
        for _ in range(q.max_concurrent)
    ]
    for client in clients:
        client.start()
    peak = 0
    deadline = time.monotonic() + 120
    while any(c.is_alive() for c in clients):
        peak = max(peak, process.memory_info().rss)
        # Fail as soon as the bound is crossed, before the host runs out of memory.
        assert peak < bound, f"server RSS {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB"
        assert time.monotonic() < deadline, "the queries did not finish in 120 s"
        time.sleep(0.005)
    for client in clients:
        client.join()
    print(f"peak RSS {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB")
    assert [(a.status_code, a.json().get("error")) for a in answers] == [answer] * q.max_concurrent


def test_a_busy_server_answers_429_with_retry_after(make_server: Callable[..., Server]) -> None:
    server = make_server(
        RTCLAKE_QUERY__MAX_CONCURRENT="1",
        RTCLAKE_QUERY__QUEUE_TIMEOUT="0.2",
        RTCLAKE_QUERY__TIMEOUT="3",
    )
    slow = threading.Thread(target=lambda: post(server, SLOW))
    slow.start()
    try:
        wait_for_a_query(server.data_dir / "query-tmp")
        answer = post(server, "SELECT 1")
        assert answer.status_code == 429 and answer.json()["error"] == "busy"
        assert int(answer.headers["Retry-After"]) >= 1
    finally:
        slow.join(30)


def test_a_query_body_over_a_mebibyte_is_refused_before_it_is_read_whole(
    make_server: Callable[..., Server],
) -> None:
    # (it had been read whole, whatever its size: 300 MB took the server past 2 GB)
    server = make_server()
    big = b'{"sql": "SELECT 1 --' + b"x" * (2 * 1024 * 1024) + b'"}'
    answer = httpx.post(server.url + "/api/query", content=big, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once it has read 1 MiB
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    answer = httpx.post(server.url + "/api/query", content=chunks(), timeout=60)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"
    assert post(server, "SELECT 42 AS x").json()["rows"] == [[42]]


def test_refused_results_do_not_pile_up_in_memory(tmp_path: Path) -> None:
    # Exceptions that crossed a thread sit in reference cycles until the garbage collector
    # runs; a refusal must not keep the fetched batches alive through its traceback.
    query = engine(tmp_path, threads=1, max_result_bytes=64 * MiB, memory_limit=512 * MiB)
    process = psutil.Process()
    errors: list[BaseException] = []

    def refuse_once() -> None:
        try:
            query.run(HUGE_RESULT)
        except QueryError as exc:
            errors.append(exc)

    gc.disable()
    try:
        rss = []
        for _ in range(4):
            worker = threading.Thread(target=refuse_once)
            worker.start()
            worker.join()
            rss.append(process.memory_info().rss)
    finally:
        gc.enable()
    assert [e.reason for e in errors] == ["result_too_large"] * 4  # type: ignore[attr-defined]
    assert rss[-1] - rss[0] < 100 * MiB, [r // MiB for r in rss]


def test_server_queries_run_on_threads_of_lower_cpu_priority(tmp_path: Path) -> None:
    # One DuckDB thread per query runs on the calling thread: a nice query thread leaves
    # the CPU to the event loop and the spool's fsyncs first.
    query = engine(tmp_path, threads=1, max_concurrent=2, nice=10)
    try:
        result = asyncio.run(query.run_async("SELECT 42"))
        assert result.rows() == [[42]]
        assert query._executor is not None
        threads = list(query._executor._threads)
        assert threads
        assert {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads} == {  # type: ignore[arg-type]
            os.getpriority(os.PRIO_PROCESS, 0) + 10
        }
    finally:
        query.close()
