"""The ``rtclake`` command as an operator meets it: mistakes refused with what to do, one
server per data directory, imports that fail loudly and find rotated files."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from rtclake.testing import free_port, wait_for

ROTC = '{"channel_id":"c","session_id":"s","connection_id":"%s","timestamp":"%s",' \
    '"rtc_id":"RTCInboundRTPAudioStream_%d","rtc_timestamp":%d,"rtc_type":"inbound-rtp",' \
    '"rtc_data":{"id":"x","type":"inbound-rtp","timestamp":%d,"packetsReceived":%d}}'  # fmt: skip


def rtclake(
    *args: str, cwd: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "rtclake", *args], cwd=cwd, env={**base, **env},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_an_unknown_variable_is_refused_with_the_closest_setting(tmp_path: Path) -> None:
    out = rtclake("config", cwd=tmp_path, RTCLAKE_SERVER_PORT="9000")
    assert out.returncode == 2
    assert "RTCLAKE_SERVER_PORT is not a setting; did you mean RTCLAKE_SERVER__PORT?" in out.stderr
    # what is not a setting but rtclake's own stays allowed
    out = rtclake("config", cwd=tmp_path, RTCLAKE_TEST_ANYTHING="1", RTCLAKE_FAULTS="")
    assert out.returncode == 0, out.stderr


def test_config_prints_the_folders_as_resolved_and_names_a_bad_file(tmp_path: Path) -> None:
    out = rtclake("config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"dir: {tmp_path / 'rtclake-data' / 'spool'}" in out.stdout
    assert f"root: {tmp_path / 'rtclake-data' / 'lake'}" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: [\n")
    out = rtclake("config", "--config", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert f'in "{bad}", line' in out.stderr and "<unicode string>" not in out.stderr


def test_a_second_server_on_one_data_directory_is_refused(tmp_path: Path, server: Any) -> None:
    out = rtclake(
        "run", cwd=tmp_path, RTCLAKE_DATA_DIR=str(server.data_dir),
        RTCLAKE_SERVER__PORT=str(free_port()),
    )  # fmt: skip
    assert out.returncode == 2
    assert f"is in use by another rtclake (pid {server.proc.pid})" in out.stderr
    assert server.health().status_code == 200  # the first one is untouched


def test_a_second_node_under_one_name_on_one_lake_is_told_so(
    tmp_path: Path, make_server: Any
) -> None:
    """Two processes running as one node on one lake: the second logs it, naming the
    first (its pid), and still serves; a node of another name logs nothing of it."""
    lake = str(tmp_path / "shared-lake")
    first = make_server(tmp_path / "a", RTCLAKE_LAKE__ROOT=lake, RTCLAKE_NODE="n1")
    second = make_server(tmp_path / "b", RTCLAKE_LAKE__ROOT=lake, RTCLAKE_NODE="n1")
    other = make_server(tmp_path / "c", RTCLAKE_LAKE__ROOT=lake, RTCLAKE_NODE="n2")
    said = "another rtclake runs under this node's name on this lake"
    assert wait_for(lambda: said in second.log(), 10), second.log()
    assert f"pid {first.proc.pid}" in second.log()
    assert said not in first.log() and said not in other.log()
    assert second.health().status_code == 200
    # the first one gone (killed), its name is free again: a new process takes it
    first.stop(signal.SIGKILL)
    second.stop()
    again = make_server(tmp_path / "b", RTCLAKE_LAKE__ROOT=lake, RTCLAKE_NODE="n1")
    assert again.health().status_code == 200
    assert said not in again.log()


def test_a_node_name_lock_not_reachable_at_start_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The catalog down when the node starts: its name's lock is tried again until it
    is taken, beside the start (never blocking it), and let go at stop."""
    from rtclake import service as service_module
    from rtclake.config import load_settings

    class Flaky:
        holder = None

        def __init__(self) -> None:
            self.tries, self.held = 0, False

        def acquire(self) -> bool:
            self.tries += 1
            if self.tries < 3:
                raise OSError("connection refused")
            self.held = True
            return True

        def release(self) -> None:
            self.held = False

    lock = Flaky()
    monkeypatch.setattr(service_module, "node_lock", lambda url, node: lock)
    monkeypatch.setenv("RTCLAKE_DATA_DIR", str(tmp_path))
    node = SimpleNamespace(settings=load_settings(), _name_lock=None)
    asyncio.run(service_module.Service._hold_name(node, every=0.01))  # type: ignore[arg-type]
    assert lock.tries == 3 and lock.held and node._name_lock is lock


def test_config_checks_the_alert_rules_as_run_does(tmp_path: Path) -> None:
    rule = (
        "alerts:\n  rules:\n    r: {source: SOURCE, metric: loss_pct, condition: '> 5',"
        " for: 2m, scope: connection_id, notify: [NOTIFY]}\n"
    )
    path = tmp_path / "rtclake.yaml"
    path.write_text(rule.replace("SOURCE", "rtc_rates").replace("NOTIFY", "log"))
    assert rtclake("config", "-c", str(path), cwd=tmp_path).returncode == 0
    path.write_text(rule.replace("SOURCE", "nosuch").replace("NOTIFY", "slack"))
    out = rtclake("config", "-c", str(path), cwd=tmp_path)
    assert out.returncode == 2, out.stdout
    assert "alerts.rules.r.source: no table or view 'nosuch'" in out.stderr
    assert "alerts.rules.r.notify: no sink named 'slack' (sinks: lake;" in out.stderr


def test_config_checks_the_retention_as_run_does(tmp_path: Path) -> None:
    # (it had printed the configuration, which run then refused)
    out = rtclake("config", cwd=tmp_path, RTCLAKE_LAKE__MAINTENANCE__RETENTION='{"rtc_stats": 30}')
    assert out.returncode == 0, out.stderr
    out = rtclake("config", cwd=tmp_path, RTCLAKE_LAKE__MAINTENANCE__RETENTION='{"sensors": 30}')
    assert out.returncode == 2, out.stdout
    assert "lake.maintenance.retention: no table sensors (known:" in out.stderr


def test_query_says_where_it_looked_for_the_lake(tmp_path: Path) -> None:
    out = rtclake("query", "SELECT 1", cwd=tmp_path)
    assert out.returncode == 1
    assert f"no lake at {tmp_path / 'rtclake-data' / 'lake'}" in out.stderr


def test_files_says_where_it_looked_for_the_lake_and_what_a_view_is(tmp_path: Path) -> None:
    # a script handing the list to Spark must not take "no lake" for "no files"
    out = rtclake("files", "telemetry", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert f"no lake at {tmp_path / 'rtclake-data' / 'lake'}" in out.stderr
    out = rtclake("files", "connection_quality", cwd=tmp_path)
    assert out.returncode == 2
    assert "'connection_quality' is a view, with no files of its own; tables:" in out.stderr
    out = rtclake("files", "nosuch", cwd=tmp_path)
    assert out.returncode == 2 and "no table 'nosuch'; tables:" in out.stderr


def test_import_of_a_missing_path_fails(tmp_path: Path) -> None:
    out = rtclake("import", str(tmp_path / "no" / "such"), cwd=tmp_path)
    assert out.returncode == 1
    assert "no such file or folder" in out.stderr


def stats_lines(connection: str, first: int, count: int) -> str:
    lines = [
        ROTC
        % (connection, f"2026-07-25T00:00:{n:02d}Z", n, 1785000000000 + n, 1785000000000 + n, n)
        for n in range(first, first + count)
    ]
    return "\n".join(lines) + "\n"


def test_import_reads_rotated_copies_and_a_forced_table(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rtc_stats.jsonl").write_text(stats_lines("a", 0, 2))
    (logs / "rtc_stats.jsonl.1").write_text(stats_lines("b", 0, 3))
    (logs / "rtc_stats.jsonl.2.gz").write_bytes(gzip.compress(stats_lines("c", 0, 4).encode()))
    (logs / "rtc_stats.jsonl-20250725").write_text(stats_lines("d", 0, 5))
    (logs / "rtc_stats.jsonl-20250725.gz").write_bytes(
        gzip.compress(stats_lines("e", 0, 6).encode())
    )
    out = rtclake("import", str(logs), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "imported 20 rows from 5 files" in out.stdout and "0 files not recognised" in out.stdout
    sql = "SELECT connection_id, count(*) FROM rtc_stats GROUP BY 1 ORDER BY 1"
    counted = rtclake("query", sql, "--format", "csv", cwd=tmp_path)
    assert counted.stdout.split() == [
        "connection_id,count_star()",
        "a,2",
        "b,3",
        "c,4",
        "d,5",
        "e,6",
    ]

    other = tmp_path / "app.log"
    other.write_text('{"id": "x1"}\n{"id": "x2"}\n')
    assert "1 files not recognised" in rtclake("import", str(other), cwd=tmp_path).stdout
    forced = rtclake("import", str(other), "--table", "events", cwd=tmp_path)
    assert "imported 2 rows from 1 files" in forced.stdout, forced.stderr
    unknown = rtclake("import", str(other), "--table", "nope", cwd=tmp_path)
    assert unknown.returncode == 2 and "--table nope: no such table" in unknown.stderr


def test_an_s3_error_is_one_line_and_the_traceback_comes_with_debug(tmp_path: Path) -> None:
    args = ("import", "s3://bucket/prefix", "--endpoint-url", f"http://127.0.0.1:{free_port()}")
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"}
    out = rtclake(*args, cwd=tmp_path, **env)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr
    assert "127.0.0.1" in errors[0] or "Connect" in errors[0], out.stderr
    debug = rtclake(*args, "--debug", cwd=tmp_path, **env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_import_refuses_a_line_without_the_tables_identity(tmp_path: Path) -> None:
    log = tmp_path / "rtc_stats.jsonl"
    log.write_text(stats_lines("a", 0, 1) + '{"foo": 1}\n' + stats_lines("a", 1, 1))
    out = rtclake("import", str(log), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "imported 2 rows" in out.stdout and "1 bad lines skipped" in out.stdout
    said = out.stdout + out.stderr
    assert "rtc_stats.jsonl" in said and "line=2" in said and "no connection_id" in said
    counted = rtclake("query", "SELECT count(*) FROM rtc_stats WHERE connection_id IS NULL",
                      "--format", "csv", cwd=tmp_path)  # fmt: skip
    assert counted.stdout.split()[-1] == "0"


def test_import_to_a_table_skips_a_line_that_is_not_utf8_naming_file_and_line(
    tmp_path: Path,
) -> None:
    """As a line that is not JSON: skipped and logged with its place, the others imported
    (the record ids of telemetry hash each line's text, which had stopped the import)."""
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b'{"device_id":"ok1"}\n\xff\xfe bad\n{"device_id":"ok2"}\n')
    out = rtclake("import", "--table", "telemetry", str(mixed), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "imported 2 rows" in out.stdout and "1 bad lines skipped" in out.stdout
    said = out.stdout + out.stderr
    assert "import: bad line skipped" in said and "not valid UTF-8" in said
    assert "mixed.jsonl" in said and "line=2" in said
    stored = rtclake("query", "SELECT device_id FROM telemetry ORDER BY 1", "--format", "csv",
                     cwd=tmp_path)  # fmt: skip
    assert stored.stdout.split() == ["device_id", "ok1", "ok2"]


def test_version_and_help_load_none_of_the_heavy_modules(tmp_path: Path) -> None:
    heavy = ["pyarrow", "duckdb", "starlette", "uvicorn", "boto3", "httpx", "prometheus_client"]
    # rtclake's settings (pydantic, yaml) too, except where typer's own help needs pydantic
    for args, also in ((["--version"], ["pydantic", "yaml"]), (["--help"], ["pydantic", "yaml"]),
                       (["import", "--help"], ["yaml"])):  # fmt: skip
        probe = (
            "import sys\n"
            "from typer.testing import CliRunner\n"
            "from rtclake.cli import app\n"
            f"out = CliRunner().invoke(app, {args!r})\n"
            "assert out.exit_code == 0, out.output\n"
            "print(out.output)\n"
            f"print('LOADED', [m for m in {heavy + also!r} if m in sys.modules])\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        assert "LOADED []" in out.stdout, (args, out.stdout[-300:])
        assert "``" not in out.stdout  # no reStructuredText markup in the help
        if args == ["--version"]:
            assert "rtclake 0.1.0" in out.stdout


def test_tables_lists_each_table_with_rows_and_columns(tmp_path: Path) -> None:
    log = tmp_path / "rtc_stats.jsonl"
    log.write_text(stats_lines("a", 0, 3))
    assert rtclake("import", str(log), cwd=tmp_path).returncode == 0
    out = rtclake("tables", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "\nrtc_stats: 3 rows\n" in out.stdout and "connection_id string" in out.stdout
    assert "\nsessions: 0 rows\n" in out.stdout
    assert "dead_letters" in out.stdout and "_empty_" not in out.stdout


def test_run_takes_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtclake", "run", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_make_run_installs_no_test_tools() -> None:
    root = Path(__file__).resolve().parent.parent
    plan = subprocess.run(
        ["make", "-n", "-B", "-C", str(root), ".venv/.installed-run"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert any(line.endswith("-e .") for line in installs), plan
    assert not any("[test]" in line for line in installs), plan
    full = subprocess.run(["make", "-n", "-B", "-C", str(root), "test"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "-e '.[test]'" in full


def test_batches_are_logged_at_info_and_requests_when_asked(make_server: Any) -> None:
    server = make_server(RTCLAKE_LOG_LEVEL="info", RTCLAKE_SERVER__ACCESS_LOG="true")
    assert httpx.post(server.url + "/ingest/logged", json={"n": 1}).status_code == 200
    server.wait_rows("SELECT count(*) FROM telemetry", 1)
    assert wait_for(lambda: "batch stored" in server.log())
    log = server.log()
    assert "rows={'telemetry': 1}" in log or '"telemetry": 1' in log, log
    assert "POST /ingest/logged" in log


def test_run_refuses_a_catalog_that_is_not_its_lakes_in_one_line(tmp_path: Path) -> None:
    """A catalog left out (a new one of its own over a lake's files) and a lake.root
    that is not the catalog's: `rtclake run` exits 3 naming the settings. It had
    started, taken records it could not store (or stored them where no other node saw
    them), and its cleanup had deleted the lake's files as orphans."""
    from rtclake.lake.catalog import Catalog
    from rtclake.lake.storage import LocalStorage
    from tests.conftest import free_port
    from tests.test_maintenance import TABLES, fill, open_lake

    lake = tmp_path / "rtclake-data" / "lake"
    theirs = f"sqlite:{tmp_path / 'theirs.sqlite'}"
    con = open_lake(Catalog(theirs, LocalStorage(lake), TABLES))
    fill(con, "telemetry", range(1), commits=1, size=2)
    con.close()

    cases = [
        ({}, "holds no table, but lake.root"),  # lake.catalog left out
        ({"RTCLAKE_LAKE__ROOT": str(tmp_path / "elsewhere"), "RTCLAKE_LAKE__CATALOG": theirs},
         "lake.root: the catalog (lake.catalog) keeps its lake"),
    ]  # fmt: skip
    for env, reason in cases:
        out = rtclake("run", cwd=tmp_path, RTCLAKE_SERVER__PORT=str(free_port()), **env)
        assert out.returncode == 3, out.stderr
        lines = [line for line in out.stderr.splitlines() if "rtclake cannot start" in line]
        assert len(lines) == 1 and reason in lines[0], out.stderr
        assert "Traceback" not in out.stderr, out.stderr


def test_query_refuses_a_row_limit_below_one_as_a_usage_error(tmp_path: Path) -> None:
    # -3 had crashed with DuckDB's traceback, 0 had been taken for "the default"
    for value in ("0", "-3"):
        out = rtclake("query", "SELECT 1", "--max-rows", value, cwd=tmp_path)
        assert out.returncode == 2, (value, out.stderr)
        assert "--max-rows" in out.stderr and "Traceback" not in out.stderr


def test_run_and_demo_name_a_data_directory_they_cannot_write_in_one_line(
    tmp_path: Path,
) -> None:
    # a file where the data directory belongs (as a read-only one, or one of another user)
    (tmp_path / "data").write_text("")
    out = rtclake("run", "--port", str(free_port()), cwd=tmp_path, RTCLAKE_DATA_DIR="data")
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"error: cannot write the data directory {tmp_path / 'data'}")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    out = rtclake("demo", "--no-import", cwd=tmp_path, RTCLAKE_DATA_DIR="data")
    assert out.returncode == 1, out.stderr
    assert "error: cannot write the demo's folder" in out.stderr and "Traceback" not in out.stderr


def test_run_names_a_spool_folder_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    # a file where the spool's folder belongs (as a read-only mount): the lifespan's
    # traceback had ended "Application startup failed"
    (tmp_path / "spool").write_text("")
    out = rtclake("run", "--port", str(free_port()), cwd=tmp_path, timeout=60,
                  RTCLAKE_DATA_DIR="data", RTCLAKE_SPOOL__DIR="spool")  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "spool.dir spool: cannot use it (not a folder)" in out.stderr
    assert "Traceback" not in out.stderr


def test_migrate_names_a_data_directory_it_cannot_write_in_one_line(tmp_path: Path) -> None:
    # it had ended in a traceback (NotADirectoryError, or a read-only file system's)
    (tmp_path / "afile").write_text("")
    (tmp_path / "old").mkdir()
    out = rtclake("migrate", "--from", "old", cwd=tmp_path, RTCLAKE_DATA_DIR="afile/x")
    assert out.returncode == 1, out.stderr
    assert f"error: cannot write the data directory {tmp_path / 'afile' / 'x'}" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_names_a_port_in_use_in_one_line_before_it_starts(tmp_path: Path) -> None:
    # uvicorn's bind error had come after "rtclake started" and "Application startup
    # complete"
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = rtclake("run", "--port", str(port), cwd=tmp_path, timeout=60)
    assert out.returncode == 3, out.stderr
    assert out.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port} (")
    assert len(out.stderr.splitlines()) == 1 and "started" not in out.stderr


def test_run_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    # 99999 had been logged as "running on http://127.0.0.1:99999" while the server
    # listened on 99999 - 65536
    out = rtclake("run", "--port", "99999", cwd=tmp_path, timeout=20)
    assert out.returncode == 2 and "--port" in out.stderr
    assert not (tmp_path / "rtclake-data").exists()


def test_a_hive_lake_says_it_has_no_maintenance(tmp_path: Path) -> None:
    # rtclake run had kept quiet about retention it never applies to a hive lake, and
    # rtclake maintain had said only "a hive lake has no catalog"
    from structlog.testing import capture_logs

    from rtclake.catalog import default_registry
    from rtclake.config import load_settings
    from rtclake.metrics import Metrics
    from rtclake.service import _maintenance

    settings = load_settings(
        data_dir=str(tmp_path / "data"),
        lake={"catalog": "hive", "maintenance": {"retention": {"*": 30}}},
    )
    with capture_logs() as logged:
        assert _maintenance(settings, default_registry(), Metrics()) is None
    (line,) = [e for e in logged if e["event"] == "maintenance: off"]
    assert line["log_level"] == "warning" and line["retention"] == {"*": 30}
    assert "no retention" in line["reason"] and "rtclake migrate" in line["reason"]
    (tmp_path / "rtclake-data" / "lake").mkdir(parents=True)
    out = rtclake("maintain", cwd=tmp_path, RTCLAKE_LAKE__CATALOG="hive")
    assert out.returncode == 2
    assert "has no maintenance: no retention" in out.stderr and "rtclake migrate" in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_arrows_allocator_asks_for_no_huge_pages_unless_the_user_says_otherwise(
    tmp_path: Path,
) -> None:
    """pyarrow's mimalloc backs fresh memory with transparent huge pages when the kernel
    allows it (a 2 MiB page cleared at each first touch: ~5 % of an import's CPU); rtclake
    turns that off before pyarrow loads (mimalloc then disables them for the process and
    its children), and leaves a value the user set alone. The child allows them again
    first: it inherits this test process's setting."""
    code = (
        "import ctypes; libc = ctypes.CDLL('libc.so.6'); libc.prctl(41, 0, 0, 0, 0)\n"
        "import os, rtclake, pyarrow; pyarrow.array([1])\n"
        "print(os.environ['MIMALLOC_ALLOW_THP'], libc.prctl(42, 0, 0, 0, 0))"
    )  # 41, 42: PR_SET_THP_DISABLE, PR_GET_THP_DISABLE
    base = {k: v for k, v in os.environ.items() if k != "MIMALLOC_ALLOW_THP"}

    def run(**env: str) -> str:
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**base, **env},
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return out.stdout.strip()

    assert run() == "0 1"
    assert run(MIMALLOC_ALLOW_THP="1") == "1 0"


def test_rtclakes_commands_map_large_blocks_on_their_own(tmp_path: Path) -> None:
    """glibc raises its mmap threshold to each mapped block freed: then every later block
    up to that size comes from the heap, whose holes stay resident. An ``rtclake``
    command fixes it at 4 MiB (rtclake.memory.map_large_allocations): a 5 MiB block
    allocated after an 8 MiB one was freed is still mapped on its own."""
    code = (
        "import ctypes, sys\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks',"
        " 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = Info\n"
        "libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
        "if sys.argv[1] == 'rtclake':\n"
        "    from rtclake.cli import main_options; main_options(version=False)\n"
        "libc.free(libc.malloc(8 << 20))\n"
        "before = libc.mallinfo2().hblkhd; block = libc.malloc(5 << 20)\n"
        "print(libc.mallinfo2().hblkhd - before >= 5 << 20)\n"
    )

    def mapped(how: str) -> str:
        out = subprocess.run([sys.executable, "-c", code, how], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=True)  # fmt: skip
        return out.stdout.strip()

    assert mapped("glibc") == "False"  # glibc's own behaviour, which the setting changes
    assert mapped("rtclake") == "True"
