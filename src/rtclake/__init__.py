"""rtclake: a self-hosted telemetry lake for real-time media and IoT."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

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
