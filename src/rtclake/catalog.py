"""The catalog: every lake table this version of rtclake knows."""

from __future__ import annotations

from rtclake.sora.api import SORA_API_TABLES
from rtclake.sora.tables import SORA_TABLES
from rtclake.tables import EVENTS, TELEMETRY, TableRegistry


def default_registry() -> TableRegistry:
    """The generic tables and those of each supported source."""
    return TableRegistry((TELEMETRY, EVENTS, *SORA_TABLES, *SORA_API_TABLES))
