"""Which lake table each of Sora's log files goes to."""

from __future__ import annotations

_TABLES = {
    "rtc_stats": "rtc_stats",
    "session_webhook": "sessions",
    "connection": "connections",
    "event_webhook": "sora_events",
    "event_webhook_error": "sora_events",
    "auth_webhook": "sora_events",
    "auth_webhook_error": "sora_events",
    "stats_webhook": "sora_events",
    "stats_webhook_error": "sora_events",
    "signaling": "sora_events",
    "api": "sora_events",
}


def table_for(filename: str) -> str | None:
    """The table of a Sora log file (``rtc_stats.jsonl``; a ``.gz`` suffix is allowed), or
    None for files rtclake does not store (``sora.jsonl``, ``cluster.jsonl``, rotated
    copies such as ``rtc_stats.jsonl.1``, anything else)."""
    name = filename.removesuffix(".gz")
    if not name.endswith(".jsonl"):
        return None
    return _TABLES.get(name.removesuffix(".jsonl"))
