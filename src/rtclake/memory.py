"""Giving freed memory back to the system.

Arrow's pool, the parser's buffer pool and glibc's free lists keep what a batch or a query
used; under steady load that is hundreds of MB held for nothing between two of them. The
writer calls :func:`release_memory` after each batch, the query engine after each query.
"""

from __future__ import annotations

import ctypes

import pyarrow as pa

from rtclake import _jsoncols


def release_memory(*, parser: bool = True) -> None:
    """Return the memory freed by the last batch or query to the system; ``parser=False``
    leaves the parser's pool (which a query does not use) to the writer."""
    if parser:
        _jsoncols.release_pool()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
