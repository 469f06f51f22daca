"""Small files written so that a crash leaves the old or the new one, never half of one.

Checkpoints and state files (the log tail's checkpoint, the import state) are written
under a temporary name, fsync'd, renamed over the old one, and the rename made durable by
an fsync of the folder. The spool and the lake sink use :func:`fsync_dir` for the same
reason: a new or renamed file is only durable once its folder is.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of folder ``path`` (new, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` in one durable step (its folder is created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
