"""rtclake: a self-hosted telemetry lake for real-time media and IoT."""

__version__ = "0.1.0"

import os
from typing import TYPE_CHECKING, Any

# Arrow's allocator (mimalloc, in pyarrow) asks the kernel for transparent huge pages
# where it allows them on request (``madvise``, Debian's default): every first touch of
# its fresh memory then clears 2 MiB. A Sora import spent ~5 % of its CPU there
# (``clear_page_erms`` under ``perf``), and took 2-4 % longer. Read once, when pyarrow
# loads: so set here, before any of rtclake imports it (a value of the user's stays).
os.environ.setdefault("MIMALLOC_ALLOW_THP", "0")

from rtclake.errors import (
    ConfigError,
    DiskFull,
    InputError,
    LakeUnreadable,
    QueryBusy,
    QueryError,
    QueryOverLimit,
    ResultTooLarge,
    RtclakeError,
    SinkError,
    SpoolFull,
    SpoolIOError,
    SpoolUnavailable,
)

if TYPE_CHECKING:
    from rtclake.config import Settings, load_settings


def __getattr__(name: str) -> Any:
    # the settings (pydantic) load when first used: `rtclake --version` needs none of it
    if name in ("Settings", "load_settings"):
        from rtclake import config

        return getattr(config, name)
    raise AttributeError(f"module 'rtclake' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DiskFull",
    "InputError",
    "LakeUnreadable",
    "QueryBusy",
    "QueryError",
    "QueryOverLimit",
    "ResultTooLarge",
    "RtclakeError",
    "Settings",
    "SinkError",
    "SpoolFull",
    "SpoolIOError",
    "SpoolUnavailable",
    "__version__",
    "load_settings",
]
