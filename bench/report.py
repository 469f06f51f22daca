"""What a benchmark report shares: the machine, formatting, tables and docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"

_MD_HEADER = """# Benchmarks

Measured with `make bench` (`.venv/bin/python -m bench`). Each benchmark rewrites its own
section, between its `<!-- bench:NAME:begin/end -->` comments, on every run; text outside
the markers is kept.
"""


@dataclass(frozen=True)
class Verdict:
    """One target or check: what is required, what was measured, and whether it held."""

    name: str
    required: str
    measured: str
    passed: bool

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "FAIL"


def _first(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = " (with uncommitted changes in src)" if dirty.stdout else ""
    return head.stdout.decode().strip() + changed


def _filesystem(path: Path) -> str:
    path = path.resolve()
    best: tuple[int, str] = (-1, "unknown")
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        if (path == mount or mount in path.parents) and len(str(mount)) > best[0]:
            best = (len(str(mount)), f"{part.fstype} on {part.device}")
    return best[1]


def machine(data_path: Path) -> list[tuple[str, str]]:
    """The facts about this machine and run that a reader needs to weigh the figures."""
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    mem = f"{int(mem_kib) / 1024 / 1024:.1f} GiB" if mem_kib.isdigit() else "unknown"
    return [
        ("Date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("CPU", _first("/proc/cpuinfo", "model name")),
        ("Memory", mem),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Data dir filesystem", _filesystem(data_path)),
        ("rtclake commit", _git_commit()),
    ]


def busy_before(console: Console, seconds: float = 2.0) -> tuple[str, str]:
    """How busy the machine is before a benchmark starts, as a fact; warns when it is."""
    busy = psutil.cpu_percent(interval=seconds)
    if busy > 20:
        console.print(f"[yellow]The machine is already {busy:.0f} % busy: expect noisy figures.")
    return ("CPU busy before the run", f"{busy:.0f} % of all cores")


def disk_fsync_probe(folder: Path, seconds: float = 20.0) -> tuple[str, str]:
    """How this disk's fsync behaves with nothing of rtclake running, as a fact: 300-byte
    appends, each fsync'd (what one acknowledged record costs the spool at the least)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fsync-probe.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    took: list[float] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            os.write(fd, b"x" * 300)
            started = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - started)
            time.sleep(0.002)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    slow = sum(1 for t in took if t > 0.1)
    return (
        f"Disk fsync alone ({seconds:g} s before the run, no rtclake)",
        f"{len(took):,} fsyncs, p50 {took[len(took) // 2] * 1000:.2f} ms,"
        f" {slow} over 100 ms, worst {took[-1] * 1000:.0f} ms",
    )


# -- formatting --------------------------------------------------------------------------


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"


def mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def pct(value: float) -> str:
    return f"{value:.0f} %"


# -- output ------------------------------------------------------------------------------


def rich_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, verdict_col: int = -1
) -> Table:
    table = Table(*header, title=title, title_justify="left", show_lines=False)
    for row in rows:
        cells = list(row)
        if verdict_col >= 0:
            word = cells[verdict_col]
            style = "bold green" if word == "PASS" else "bold red" if word == "FAIL" else ""
            cells[verdict_col] = f"[{style}]{word}[/]" if style else word
        table.add_row(*cells)
    return table


def print_tables(console: Console, *tables: Table) -> None:
    for table in tables:
        console.print(table)
        console.print()


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section ``name`` of ``path`` (between its markers), or append it."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else _MD_HEADER
    start, stop = text.find(begin), text.find(end)
    if start >= 0 and stop > start:
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
