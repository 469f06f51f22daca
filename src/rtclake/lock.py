"""One server per data directory: an exclusive lock on ``DATA_DIR/rtclake.pid``.

Two servers on one data directory would replay each other's spool segments and write the
same checkpoints. The lock is an ``flock`` (released by the kernel when the process ends,
also on kill -9), and the file holds the holder's pid, which the refusal names.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from rtclake.errors import ConfigError


class DataDirLock:
    """The lock of one data directory; :meth:`acquire` raises :class:`ConfigError` when
    another process holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "rtclake.pid"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"data directory {self.path.parent.absolute()} is in use by another rtclake"
                f" (pid {holder}); stop it, or give this one another data_dir"
                " (RTCLAKE_DATA_DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
