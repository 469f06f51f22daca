"""Fault injection points, the seam of the fault suite (``tests/faults/``).

Code that does durable I/O names the step it is about to take with :func:`hit`
(``faults.hit("spool.write")``). Nothing is armed in production, and a hit is then one
dictionary lookup. Tests arm points in-process with :func:`arm`, or in an ``rtclake run``
subprocess with the ``RTCLAKE_FAULTS`` environment variable, read once at import::

    RTCLAKE_FAULTS="spool.write=enospc*3, writer.after_ack=kill@1"

Each item is ``POINT=ACTION[*TIMES][@SKIP]``: skip the first SKIP hits, then act on the
next TIMES hits (every later hit when TIMES is left out). Actions: ``enospc`` and ``eio``
raise the ``OSError`` a full or failing disk raises; ``kill`` ends the process with
SIGKILL, as a crash or ``kill -9`` would; ``torn`` is for writers that can simulate a
write cut half-way (the spool writes half of the entry, then raises ENOSPC).

Points: ``spool.write``, ``spool.fsync``, ``spool.open_segment``, ``spool.ack``,
``writer.after_read``, ``writer.after_convert``, ``writer.after_sink_write``,
``writer.after_ack``, ``writer.after_remove``, ``lake.write`` (a Hive file's write; in
the catalog's transaction, before the data files are written), ``lake.before_rename``
(Hive layout), ``lake.before_commit`` (the catalog's data files written, the commit not
made).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import threading
from dataclasses import dataclass

ACTIONS = ("enospc", "eio", "kill", "torn")


@dataclass
class _Armed:
    action: str
    times: int | None
    skip: int


_armed: dict[str, _Armed] = {}
_lock = threading.Lock()


def arm(point: str, action: str, *, times: int | None = None, skip: int = 0) -> None:
    """Make the next hits of ``point`` fail with ``action`` (see the module's doc)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown fault action {action!r} (one of {', '.join(ACTIONS)})")
    with _lock:
        _armed[point] = _Armed(action, times, skip)


def disarm(point: str | None = None) -> None:
    """Disarm one point, or every point."""
    with _lock:
        if point is None:
            _armed.clear()
        else:
            _armed.pop(point, None)


_ITEM = re.compile(r"^(?P<point>[\w.]+)=(?P<action>\w+)(?:\*(?P<times>\d+)|@(?P<skip>\d+))*$")


def parse(spec: str) -> None:
    """Arm the points of an ``RTCLAKE_FAULTS`` value."""
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = _ITEM.match(item.replace(" ", ""))
        if match is None:
            raise ValueError(f"RTCLAKE_FAULTS: {item!r} is not POINT=ACTION[*TIMES][@SKIP]")
        times, skip = match["times"], match["skip"]
        arm(
            match["point"],
            match["action"],
            times=int(times) if times else None,
            skip=int(skip) if skip else 0,
        )


def hit(point: str) -> str | None:
    """Count a hit of ``point``; the action to take now, or None."""
    if not _armed:
        return None
    with _lock:
        armed = _armed.get(point)
        if armed is None:
            return None
        if armed.skip > 0:
            armed.skip -= 1
            return None
        if armed.times is not None:
            armed.times -= 1
            if armed.times <= 0:
                del _armed[point]
        return armed.action


def check(point: str) -> None:
    """Hit ``point`` and carry out its action: raise the armed ``OSError``, or die."""
    action = hit(point)
    if action is not None:
        act(action, point)


def act(action: str, point: str) -> None:
    """Carry out ``action`` at ``point`` (``torn`` raises ENOSPC, like a cut write)."""
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise OSError(code, f"{os.strerror(code)} (injected at {point})")


if os.environ.get("RTCLAKE_FAULTS"):
    parse(os.environ["RTCLAKE_FAULTS"])
