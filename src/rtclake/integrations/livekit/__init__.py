"""LiveKit and OpenVidu: signed webhooks and analytics messages.

Source types: ``livekit_webhook`` (``POST /livekit/webhook`` into ``livekit_events``,
:mod:`.webhooks`; its keys from the configuration, ``LIVEKIT_API_KEY``/
``LIVEKIT_API_SECRET`` or a key file, :mod:`.keys`) and ``livekit_analytics``
(``POST /livekit/analytics/events`` and ``/stats`` into ``livekit_analytics_events`` and
``livekit_stats``, :mod:`.analytics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from rtclake.errors import ConfigError
from rtclake.registry import BuildContext, Registry, SourceConfig


class LiveKitWebhookConfig(SourceConfig):
    """LiveKit's webhooks at ``path``; the body limit is ``server.max_body_bytes``."""

    keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="API key -> secret, as LiveKit's keys: (LIVEKIT_API_KEY and"
        " LIVEKIT_API_SECRET, and key_file, add to them)",
    )
    key_file: Path | None = Field(
        default=None, description="a key file as livekit-server --key-file takes it ('key: secret')"
    )
    path: str = Field(default="/livekit/webhook", pattern=r"^/[A-Za-z0-9/_.-]*$",
                      description="the URL path LiveKit posts to")  # fmt: skip
    clock_skew: float = Field(
        default=10.0, ge=0, le=300, description="seconds of tolerance on the token's nbf and exp"
    )


class LiveKitAnalyticsConfig(SourceConfig):
    """``/livekit/analytics/events`` and ``/livekit/analytics/stats``; body limit and
    token from ``server.max_body_bytes`` and ``server.ingest_token``."""


def register(registry: Registry) -> None:
    from rtclake.integrations.livekit.tables import (
        LIVEKIT_RATES_COLUMNS,
        LIVEKIT_RATES_SQL,
        LIVEKIT_TABLES,
    )
    from rtclake.sinks.mongodb import Layout, register_layout
    from rtclake.tables import View

    registry.add_table(*LIVEKIT_TABLES)
    registry.add_view(View(
        name="livekit_rates",
        sql=LIVEKIT_RATES_SQL,
        description=(
            "livekit_stats with rtc_rates' columns (a room is a session, a participant a"
            " connection, a track's stream a stream): each counter over its stat's interval;"
            " the dashboard's connection pages read it beside rtc_rates."
        ),
        columns=LIVEKIT_RATES_COLUMNS,
    ))  # fmt: skip

    def openvidu_layout() -> Layout:
        from rtclake.integrations.livekit.openvidu import layout

        return layout()

    # the mongodb sink's layout: what openvidu-livekit writes (openvidu.py)
    register_layout("openvidu", openvidu_layout)

    @registry.source("livekit_webhook", LiveKitWebhookConfig)
    def livekit_webhook(config: LiveKitWebhookConfig, ctx: BuildContext) -> Any:
        """LiveKit's (and OpenVidu's) webhooks, signature-checked, into livekit_events."""
        from rtclake.integrations.livekit.keys import load_keys
        from rtclake.integrations.livekit.webhooks import LiveKitWebhook

        assert ctx.intake is not None
        configured = {k: v.get_secret_value() for k, v in config.keys.items()}
        try:
            keys = load_keys(configured, config.key_file)
        except ValueError as exc:  # a key file that cannot be read or parsed
            raise ConfigError(f"sources.{ctx.name}: {exc}") from exc
        if not keys:  # (the environment may hold them: known only now, not by `config`)
            raise ConfigError(
                f"sources.{ctx.name}: no LiveKit API key: set keys: {{KEY: SECRET}}, key_file:,"
                " or LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        return LiveKitWebhook(
            ctx.intake, ctx.tables["livekit_events"], keys=keys, clock_skew=config.clock_skew,
            max_body=ctx.settings.server.max_body_bytes, path=config.path,
        )  # fmt: skip

    @registry.source("livekit_analytics", LiveKitAnalyticsConfig)
    def livekit_analytics(config: LiveKitAnalyticsConfig, ctx: BuildContext) -> Any:
        """LiveKit's AnalyticsEvent and AnalyticsStat messages (protojson or protobuf)."""
        from rtclake.integrations.livekit.analytics import LiveKitAnalytics

        assert ctx.intake is not None
        token = ctx.settings.server.ingest_token
        return LiveKitAnalytics(
            ctx.intake, ctx.tables["livekit_analytics_events"], ctx.tables["livekit_stats"],
            max_body=ctx.settings.server.max_body_bytes,
            token=token.get_secret_value() if token else None,
        )  # fmt: skip
