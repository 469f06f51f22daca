"""Kraken's broker variables (``KRAKENB_*``) as rtclake components, so a Kraken user
switches by changing one command (docs/MIGRATING.md).

Kraken's brokers call its adapters themselves; rtclake's brokers emit records addressed
to sinks (``ctx.emit(record, sinks=["slack"])``, the ``outbox`` table), and the sink of
that name delivers them. So each adapter's variables make a default sink of the
adapter's name that takes the outbox rows addressed to it:

- ``KRAKENB_GRPC_HOST``: the source ``kraken`` (``kraken_grpc`` on that ``listen``);
- ``KRAKENB_SLACK_URL``: the sink ``slack`` (its ``url``);
- ``KRAKENB_REDIS_HOST``, ``_PORT``, ``_DB``, ``_USER`` (or Kraken's own spelling
  ``KRAKENB_REIDS_USER``), ``_PASSWORD``: the sink ``redis`` (its ``url``; ``tables:
  [outbox]``);
- ``KRAKENB_MONGODB_HOST`` (a host or a ``mongodb://`` URL), ``_USER``, ``_PASSWORD``,
  ``_DATABASE`` (default ``kraken``): the sink ``mongodb`` (``tables: [outbox]``);
- ``KRAKENB_INFLUXDB_*`` and ``KRAKENB_WEBSOCKET_URL``: the ``influxdb`` and
  ``websocket`` sinks, once those sink types exist (until then a warning names them).

A component of the same name in the configuration overrides what a variable set (its
keys win; ``enabled: false`` turns it off), as "when the matching rtclake key is unset"
asks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from rtclake.tables import OUTBOX


def _get(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def redis_url(env: Mapping[str, str]) -> str | None:
    host = _get(env, "KRAKENB_REDIS_HOST")
    if host is None:
        return None
    user = _get(env, "KRAKENB_REDIS_USER", "KRAKENB_REIDS_USER")
    password = _get(env, "KRAKENB_REDIS_PASSWORD")
    auth = ""
    if user or password:
        auth = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@"
    port = _get(env, "KRAKENB_REDIS_PORT") or "6379"
    db = _get(env, "KRAKENB_REDIS_DB") or "0"
    return f"redis://{auth}{host}:{port}/{db}"


def mongodb_url(env: Mapping[str, str]) -> str | None:
    host = _get(env, "KRAKENB_MONGODB_HOST")
    if host is None:
        return None
    if host.startswith(("mongodb://", "mongodb+srv://")):
        return host
    user, password = _get(env, "KRAKENB_MONGODB_USER"), _get(env, "KRAKENB_MONGODB_PASSWORD")
    auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
    return f"mongodb://{auth}{host}"


def sink_defaults(env: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The default sinks Kraken's variables in ``env`` (default: the process's) ask for,
    of the types that are installed now."""
    env = os.environ if env is None else env
    out: dict[str, dict[str, Any]] = {}
    slack = _get(env, "KRAKENB_SLACK_URL")
    if slack:
        out["slack"] = {"type": "slack", "url": slack}
    redis = redis_url(env)
    if redis:
        out["redis"] = {"type": "redis", "url": redis, "tables": [OUTBOX.name]}
    mongodb = mongodb_url(env)
    if mongodb:
        out["mongodb"] = {
            "type": "mongodb",
            "url": mongodb,
            "database": _get(env, "KRAKENB_MONGODB_DATABASE") or "kraken",
            "tables": [OUTBOX.name],
        }
    return out


def pending(env: Mapping[str, str] | None = None) -> list[str]:
    """Kraken's variables set whose sink type (InfluxDB, WebSocket) is not installed."""
    env = os.environ if env is None else env
    names = ("KRAKENB_INFLUXDB_HOST", "KRAKENB_WEBSOCKET_URL")
    return [name for name in names if _get(env, name)]
