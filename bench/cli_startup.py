"""Start-up of the ``rtclake`` command: what a short command costs before it does anything.

Each command runs as a fresh process (``python -m rtclake ...``), timed wall-clock from
start to exit, ``ROUNDS`` times, the commands round-robin. With a baseline revision
(``--cli-baseline REV``) the same commands also run from that revision's ``src`` (checked
out under ``bench/out`` with its parser built in place), the two sides alternating in
each round, so both see the same noise of this 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bench.report import ROOT, machine, md_table, print_tables, rich_table, update_section

ROUNDS = 15
# (label, arguments); EMPTY is an empty rtc_stats.jsonl, ONE a file of one line; the
# commands run in this order in every round
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rtclake --version", ("--version",)),
    ("rtclake --help", ("--help",)),
    ("rtclake config", ("config",)),
    ("rtclake import (empty file)", ("import", "EMPTY")),
    ("rtclake import (one line)", ("import", "ONE")),
    # over the lake the one-line import just made
    ("rtclake query (one-line lake)", ("query", "SELECT count(*) FROM rtc_stats")),
)
LINE = (
    b'{"channel_id":"c","session_id":"s","connection_id":"k","timestamp":"2025-07-25T00:00:00Z",'
    b'"rtc_id":"RTCInboundRTPAudioStream_1","rtc_timestamp":1,"rtc_type":"inbound-rtp",'
    b'"rtc_data":{"id":"x","type":"inbound-rtp","timestamp":1,"packetsReceived":1}}\n'
)


def _checkout(rev: str, out: Path) -> Path:
    """``rev``'s sources under ``out``, its C++ parser built in place; returns its src."""
    where = out / f"baseline-{rev}"
    if not (where / "src").is_dir():
        where.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "src", "setup.py", "pyproject.toml"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=where, check=True, capture_output=True,
        )  # fmt: skip
    return where / "src"


def _time(args: tuple[str, ...], src: Path | None, cwd: Path, files: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTCLAKE_")}
    if src is not None:  # the baseline's package before the installed (editable) one
        env["PYTHONPATH"] = str(src)
    argv = [files.get(a, a) for a in args]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "rtclake", *argv], cwd=cwd, env=env, capture_output=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"rtclake {' '.join(argv)}: {done.stderr.decode()[-500:]}")
    return seconds


def run(out: Path, write_docs: bool, rounds: int = ROUNDS, baseline: str | None = None) -> None:
    console = Console()
    sides: dict[str, Path | None] = {"now": None}
    if baseline is not None:
        sides[baseline] = _checkout(baseline, out)
        probe = subprocess.run(
            [sys.executable, "-c", "import rtclake; print(rtclake.__file__)"],
            env={**os.environ, "PYTHONPATH": str(sides[baseline])},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert probe.startswith(str(sides[baseline])), probe  # the baseline really runs
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="rtclake-cli-") as tmp:
        cwd = Path(tmp)
        (cwd / "empty").mkdir()
        (cwd / "one").mkdir()
        (cwd / "empty" / "rtc_stats.jsonl").write_bytes(b"")
        (cwd / "one" / "rtc_stats.jsonl").write_bytes(LINE)
        files = {"EMPTY": str(cwd / "empty"), "ONE": str(cwd / "one")}
        order = list(sides)
        for r in range(rounds):
            for label, args in COMMANDS:
                for side in order if r % 2 == 0 else reversed(order):
                    if args[0] == "import":  # every import reads its file again
                        shutil.rmtree(cwd / "rtclake-data", ignore_errors=True)
                    seconds = _time(args, sides[side], cwd, files)
                    times.setdefault((label, side), []).append(seconds)
    header = ["command", *(f"{s} (median)" for s in sides), *(f"{s} (min)" for s in sides)]
    if baseline is not None:
        header.append(f"{baseline} / now")
    rows = []
    for label, _ in COMMANDS:
        medians = [statistics.median(times[label, s]) for s in sides]
        row = [label, *(f"{m:.3f} s" for m in medians)]
        row += [f"{min(times[label, s]):.3f} s" for s in sides]
        if baseline is not None:
            row.append(f"{medians[1] / medians[0]:.2f}x")
        rows.append(row)
    print_tables(console, rich_table("rtclake command start-up", header, rows))
    if write_docs:
        facts = "\n".join(f"- {k}: {v}" for k, v in machine(out))
        against = (
            f" Baseline: revision `{baseline}`, run from its own `src` in the same virtualenv,"
            " alternating with the current code in every round."
            if baseline
            else ""
        )
        body = (
            "## rtclake command start-up\n\nCommand: `make bench` (`python -m bench --only cli"
            + (f" --cli-baseline {baseline}" if baseline else "")
            + "`)\n\nMachine:\n\n"
            f"{facts}\n\n"
            f"Each command is a fresh process, timed from start to exit; {rounds} rounds, the"
            " commands round-robin." + against + " `import` reads a folder holding an empty or a"
            " one-line `rtc_stats.jsonl` into a fresh data directory (local lake); `query`"
            " reads the lake the one-line import just made. DuckDB's extension checks are"
            " remembered across processes (`~/.cache/rtclake`, `rtclake/lake/extensions.py`):"
            " only the first command of a machine, or after an upgrade, pays them.\n\n"
            + md_table(header, rows)
        )
        update_section("cli-startup", body)
