"""A threshold alarm: a sensor reading above its threshold becomes a Slack message.

Configuration (README.md's "IoT" section has it whole, with the MQTT source)::

    processors:
      alarm:
        type: broker
        handler: "threshold_alarm:ThresholdAlarm"
        path: examples/brokers
        match: {source: sensors, topic: "sensors/+/temp"}
        options: {field: temp, threshold: 30, sinks: [slack]}
    sinks:
      slack: {type: slack, url: "https://hooks.slack.com/services/..."}

The broker never calls Slack itself: it emits a record addressed to the ``slack`` sink
(the ``outbox`` table), which the writer delivers with retries, once stored. It replies
to the sender (gRPC, WebSocket or HTTP) with what it decided.
"""

from __future__ import annotations

from typing import Any

from rtclake.brokers import BrokerContext, Message


class ThresholdAlarm:
    def __init__(
        self, field: str = "temp", threshold: float = 30.0, sinks: list[str] | None = None
    ):
        self.field = field
        self.threshold = float(threshold)
        self.sinks = sinks or ["slack"]

    def handle(self, message: Message, ctx: BrokerContext) -> dict[str, Any] | None:
        try:
            data = message.json()
        except ValueError:  # not JSON (a binary or text payload): not a reading
            return None
        value = data.get(self.field) if isinstance(data, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None  # not a reading of ours: no reply, another broker may answer
        if value <= self.threshold:
            return {"alarm": False}
        device = data.get("device_id") or message.topic or message.stream
        ctx.emit(
            {
                "text": f"{device}: {self.field} {value:g} is above {self.threshold:g}",
                "device_id": data.get("device_id"),
                "value": value,
                "threshold": self.threshold,
                "topic": message.topic,
                "reading": message.record_id,
            },
            sinks=self.sinks,
        )
        return {"alarm": True, "value": value, "threshold": self.threshold}
