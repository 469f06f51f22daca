"""The settings of Sora's sources (``type: sora_logs``, ``sora_api``, ``kohaku_s3``)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from rtclake.config import MiB
from rtclake.registry import SourceConfig
from rtclake.sources.file_tail import FileTailConfig


class KohakuS3Config(SourceConfig):
    """Continuous import of the S3 layout Kohaku's Fluent Bit writes."""

    url: str = Field(description="s3://BUCKET/PREFIX")
    endpoint_url: str | None = Field(default=None, description="MinIO, RustFS, R2, ...")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    region: str | None = None
    path_style: bool = False
    interval: float = Field(default=60.0, gt=0, description="seconds between listings")


class SoraApiConfig(SourceConfig):
    """Polling of Sora's HTTP API (what Sorabeat and sora_exporter do)."""

    nodes: list[str] = Field(
        default_factory=list,
        description="API URLs of the Sora nodes to poll, e.g. http://127.0.0.1:3000/",
    )
    interval: float = Field(default=60.0, gt=0, description="seconds between polls")
    timeout: float = Field(default=5.0, gt=0, description="seconds for one API call")
    all_connections: bool = Field(
        default=True, description="also fetch GetStatsAllConnections (per-connection counters)"
    )
    list_rtc_stats: bool = Field(
        default=True, description="also fetch ListRtcStats (Sora 2024.1+) into rtc_stats"
    )
    max_response_bytes: int = Field(default=256 * MiB, gt=0, description="larger answers fail")

    @field_validator("nodes")
    @classmethod
    def _http_urls(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            if not node.startswith(("http://", "https://")):
                raise ValueError(f"{node!r} is not an http:// or https:// URL")
        if len(set(nodes)) != len(nodes):
            raise ValueError("a node is listed twice")
        return nodes


class SoraLogsConfig(FileTailConfig):
    """The tail of Sora's log directories (``rtc_stats.jsonl``, ``session_webhook.jsonl``,
    ``connection.jsonl``, the webhook, signaling and API logs); the checkpoint defaults
    to DATA_DIR/NAME.checkpoint.json (sora-logs.checkpoint.json for the name sora_logs,
    as before)."""
