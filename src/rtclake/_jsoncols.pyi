"""Type stubs of the C++ extension ``_jsoncols.cpp``."""

from collections.abc import Sequence
from typing import Any

# (validity, offsets, values, null count); the buffers are None when no line had a value.
ColumnBuffers = tuple[Any, Any, Any, int]

class Spec:
    def __init__(self, tree: dict[str, Any], readers: Sequence[Sequence[str]] = ()) -> None:
        """``tree``: each mapped key path and its kind; ``readers``: the key paths each
        reader (a column, the envelope's time) takes the first present of; a key with a
        value that no reader takes goes into ``extra`` as sent, unless the reader took
        the same value from another key."""
    def parse(
        self, block: bytes | bytearray | memoryview, /
    ) -> tuple[
        int, list[ColumnBuffers], ColumnBuffers, bytes, list[tuple[int, str]], list[tuple[int, str]]
    ]:
        """(rows, one ColumnBuffers per key path, extra, status per line (0 stored, 1 bad,
        2 blank), bad lines and values kept in extra for their type, as (line index,
        message))."""
    def paths(self) -> list[str]: ...

def set_pool_limit(limit: int, /) -> int:
    """How many bytes of freed column memory to keep for the next blocks (0: none); returns
    the previous limit (256 MiB at first)."""

def release_pool() -> None:
    """Free the column memory kept for reuse."""

def pool_bytes() -> int:
    """Bytes of column memory kept for reuse."""

def parse_time(text: str | bytes, /) -> int | None:
    """Microseconds since the epoch of an RFC 3339 time with its offset (``T``, ``t`` or a
    space between date and time; digits past microseconds cut), or None: the one rule for
    times written as text, used by the HTTP edge and by the parser."""
