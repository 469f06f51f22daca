"""Kraken's KRAKENB_* adapter variables as rtclake's default sinks."""

from __future__ import annotations

from rtclake.integrations.kraken.environment import sink_defaults
from rtclake.registry import Registry, load_registry


def test_each_adapters_variables_make_its_sink_taking_the_outbox_rows_addressed_to_it() -> None:
    env = {
        "KRAKENB_SLACK_URL": "https://hooks.slack.com/services/T/B/x",
        "KRAKENB_REDIS_HOST": "redis.local",
        "KRAKENB_REDIS_PORT": "6380",
        "KRAKENB_REDIS_DB": "2",
        "KRAKENB_REIDS_USER": "kraken",  # Kraken's own spelling
        "KRAKENB_REDIS_PASSWORD": "p@ss:word",
        "KRAKENB_MONGODB_HOST": "mongo.local:27017",
        "KRAKENB_MONGODB_USER": "m",
        "KRAKENB_MONGODB_PASSWORD": "pw",
        "KRAKENB_INFLUXDB_HOST": "influx.local:8086",
        "KRAKENB_INFLUXDB_API_TOKEN": "tok",
        "KRAKENB_INFLUXDB_ORG": "org",
        "KRAKENB_INFLUXDB_BUCKET": "sensors",
    }
    sinks = sink_defaults(env)
    assert sinks["slack"] == {"type": "slack", "url": env["KRAKENB_SLACK_URL"]}
    assert sinks["redis"] == {"type": "redis", "url": "redis://kraken:p%40ss%3Aword@redis.local:6380/2",
                              "tables": ["outbox"]}  # fmt: skip
    assert sinks["mongodb"]["url"] == "mongodb://m:pw@mongo.local:27017"
    assert sinks["mongodb"]["database"] == "kraken"
    assert sinks["influxdb"] == {
        "type": "influxdb", "version": 2, "url": "http://influx.local:8086", "token": "tok",
        "org": "org", "bucket": "sensors", "tables": ["outbox"],
    }  # fmt: skip
    assert (
        sink_defaults({"KRAKENB_MONGODB_HOST": "mongodb://a/b"})["mongodb"]["url"]
        == "mongodb://a/b"
    )
    assert sink_defaults({}) == {}
    assert sink_defaults({"KRAKENB_WEBSOCKET_URL": "ws://x/y"})["websocket"] == {
        "type": "websocket", "url": "ws://x/y", "tables": ["outbox"]
    }  # fmt: skip


def test_every_default_sink_is_valid_for_its_type() -> None:
    registry: Registry = load_registry()
    env = {"KRAKENB_SLACK_URL": "https://h/x", "KRAKENB_REDIS_HOST": "r",
           "KRAKENB_MONGODB_HOST": "m", "KRAKENB_INFLUXDB_HOST": "i",
           "KRAKENB_INFLUXDB_BUCKET": "b", "KRAKENB_INFLUXDB_ORG": "o",
           "KRAKENB_WEBSOCKET_URL": "ws://w/k"}  # fmt: skip
    for name, raw in sink_defaults(env).items():
        config = registry.parse("sink", name, raw)
        assert config.type == raw["type"]
