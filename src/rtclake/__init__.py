"""rtclake: a self-hosted telemetry lake for real-time media and IoT."""

__version__ = "0.1.0"

from rtclake.config import Settings, load_settings
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
