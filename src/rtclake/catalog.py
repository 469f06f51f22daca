"""The catalog: every lake table this installation knows (the registry's tables)."""

from __future__ import annotations

from rtclake.tables import TableRegistry


def default_registry() -> TableRegistry:
    """The generic tables and those of each installed integration."""
    from rtclake.registry import load_registry

    return load_registry().tables
