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
- ``KRAKENB_INFLUXDB_HOST``, ``_API_TOKEN``, ``_ORG``, ``_BUCKET``: the sink
  ``influxdb`` (InfluxDB 2's API, as Kraken's influxdb-client; ``tables: [outbox]``);
- ``KRAKENB_WEBSOCKET_URL``: the sink ``websocket`` (``tables: [outbox]``).

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
    influx = _get(env, "KRAKENB_INFLUXDB_HOST")
    if influx:  # Kraken writes with influxdb-client: InfluxDB 2's API
        out["influxdb"] = {
            "type": "influxdb",
            "version": 2,
            "url": influx if "://" in influx else f"http://{influx}",
            "token": _get(env, "KRAKENB_INFLUXDB_API_TOKEN"),
            "org": _get(env, "KRAKENB_INFLUXDB_ORG"),
            "bucket": _get(env, "KRAKENB_INFLUXDB_BUCKET"),
            "tables": [OUTBOX.name],
        }
    websocket = _get(env, "KRAKENB_WEBSOCKET_URL")
    if websocket:
        out["websocket"] = {"type": "websocket", "url": websocket, "tables": [OUTBOX.name]}
    mongodb = mongodb_url(env)
    if mongodb:
        out["mongodb"] = {
            "type": "mongodb",
            "url": mongodb,
            "database": _get(env, "KRAKENB_MONGODB_DATABASE") or "kraken",
            "tables": [OUTBOX.name],
        }
    return out
