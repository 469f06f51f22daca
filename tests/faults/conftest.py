"""Tooling of the fault suite: a real small disk (a tmpfs, when the tests run as root)
and helpers that count stored records by identity."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server

IS_ROOT = os.geteuid() == 0
NOT_ROOT = "mounting a tmpfs needs root; the injected-fault variant of this test runs instead"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 20 MB tmpfs. Root only: CI runs as root, so there it never skips."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT)
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """Take the disk's space until ``leave`` bytes are free; delete the file to give it
    back."""
    filler = disk / "filler"
    size = free_bytes(disk) - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


def post(server: Server, stream: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/ingest/{stream}", content=body, headers=headers, timeout=30)


def stored_counts(server: Server, stream: str) -> Counter[int]:
    """How many rows hold each ``seq`` of ``stream`` (the server runs with
    ``RTCLAKE_QUERY__DEDUP=false``, so a row stored twice shows twice)."""
    result = server.query(
        "SELECT (extra->>'seq')::BIGINT, count(*) FROM telemetry"
        f" WHERE stream = '{stream}' GROUP BY 1",
        max_rows=1_000_000,
    )
    return Counter({int(seq): int(n) for seq, n in result["rows"]})


NO_DEDUP = {"RTCLAKE_QUERY__DEDUP": "false"}
