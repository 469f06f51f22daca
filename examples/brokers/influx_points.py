"""Sensor JSON reshaped for InfluxDB: one point per reading, addressed to the influxdb sink.

A reading ``{"device_id": "s1", "temp": 21.5, "humidity": 40, "unit": "C"}`` on the MQTT
topic ``sensors/s1/env`` becomes a point of measurement ``env`` (the topic's last level),
tagged with the device and the topic, with every numeric key as a field and the reading's
own time (or its arrival time), so a replay writes the same point again.

Configuration::

    processors:
      to_influx:
        type: broker
        handler: "influx_points:handle"
        path: examples/brokers
        match: {source: sensors, topic: "sensors/#"}

(Not ``content_type: application/json``: most MQTT publishers send no content type, and
a broker that matches one never sees their messages.)
"""

from __future__ import annotations

from rtclake.brokers import BrokerContext, Message

SINKS = ["influxdb"]


def point(message: Message) -> dict[str, object] | None:
    """The point of one reading, or None when it carries no number."""
    try:
        data = message.json()
    except ValueError:  # not JSON (a binary or text payload): not a reading
        return None
    if not isinstance(data, dict):
        return None
    fields = {
        key: value
        for key, value in data.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if not fields:
        return None
    tags = {key: value for key, value in data.items() if isinstance(value, str) and key != "time"}
    if message.topic:
        tags["topic"] = message.topic
    return {
        "measurement": (message.topic or message.stream).rsplit("/", 1)[-1],
        "tags": tags,
        "fields": fields,
        "time": data.get("time") or message.received_at.isoformat(),
    }


def handle(message: Message, ctx: BrokerContext) -> None:
    found = point(message)
    if found is not None:
        ctx.emit(found, sinks=SINKS)
