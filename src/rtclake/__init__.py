"""rtclake: a self-hosted telemetry lake for real-time media and IoT."""

__version__ = "0.1.0"

from rtclake.config import Settings, load_settings
from rtclake.errors import (
    ConfigError,
    DiskFull,
    InputError,
    QueryError,
    RtclakeError,
    SinkError,
    SpoolFull,
    SpoolUnavailable,
)

__all__ = [
    "ConfigError",
    "DiskFull",
    "InputError",
    "QueryError",
    "RtclakeError",
    "Settings",
    "SinkError",
    "SpoolFull",
    "SpoolUnavailable",
    "__version__",
    "load_settings",
]
