"""Sources: where records come from (HTTP ingest first; Sora, LiveKit, MQTT, ... later)."""

from rtclake.sources.base import split_records
from rtclake.sources.http_ingest import HttpIngest

__all__ = ["HttpIngest", "split_records"]
