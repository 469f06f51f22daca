"""Giving freed memory back to the system.

Arrow's pool, the parser's buffer pool and glibc's free lists keep what a batch or a query
used; under steady load that is hundreds of MB held for nothing between two of them. The
writer calls :func:`release_memory` after each batch, the query engine after each query.

:func:`map_large_allocations` (called by every ``rtclake`` command) keeps glibc from
taking large blocks into its heap in the first place.
"""

from __future__ import annotations

import ctypes


def release_memory(*, parser: bool = True) -> None:
    """Return the memory freed by the last batch or query to the system; ``parser=False``
    leaves the parser's pool (which a query does not use) to the writer."""
    # (imported here: the CLI imports this module for map_large_allocations, and a command
    # such as `rtclake --version` loads neither)
    import pyarrow as pa

    from rtclake import _jsoncols

    if parser:
        _jsoncols.release_pool()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


#: ``mallopt``'s parameter number of glibc's mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3
#: Blocks of at least this size are mapped on their own and unmapped when freed.
MMAP_THRESHOLD = 4 * 1024 * 1024


def map_large_allocations() -> bool:
    """Have glibc map every block of :data:`MMAP_THRESHOLD` or more on its own, given back
    to the system when freed; False where there is no glibc.

    glibc maps blocks of 128 KiB or more, but raises that threshold to the size of each
    mapped block freed (up to 32 MiB): after the writer's first 4 MiB copies of a segment
    (the joined lines, the parser's text columns), every later one came from the heap,
    between blocks kept longer, and the heap's holes stayed resident. A group of six
    20,000-record telemetry segments converted took 104 MB more resident memory that
    way, 80 MB with the threshold fixed (the tables' own data: 30 MB); a Sora import took as
    long either way (docs/BENCHMARKS.md). Set once, as the process starts: it applies to
    the blocks allocated after it."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
