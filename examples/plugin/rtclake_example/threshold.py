"""A processor: raises an alarm when a reading crosses a threshold.

Records in, records out: each record gets ``level`` ("ok" or "alarm"); for each alarm the
processor emits an ``events`` record, and at the intake stage it replies to the sender
with how many alarms its request raised (HTTP ingest answers ``{"accepted": N, "reply":
{"alarms": K}}``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rtclake.processors.base import Context, Processor, Record
from rtclake.registry import BuildContext, ComponentType, ProcessorConfig


class ThresholdConfig(ProcessorConfig):
    """``type: threshold``."""

    field: str = Field(default="value", description="the reading's key")
    above: float = Field(description="readings above this raise an alarm")
    stage: Literal["intake", "store"] = Field(
        default="intake", description="intake: the sender gets the alarm count as a reply"
    )


class Threshold(Processor):
    def __init__(self, config: ThresholdConfig) -> None:
        self.config = config
        self.stage = config.stage

    def process(self, records: list[Record], ctx: Context) -> list[Record]:
        alarms = 0
        for record in records:
            value: Any = record.get(self.config.field)
            high = isinstance(value, int | float) and value > self.config.above
            record["level"] = "alarm" if high else "ok"
            if high:
                alarms += 1
                ctx.emit(
                    {
                        "type": "threshold_alarm",
                        "id": f"{record.get('device_id')}:{record.get('time')}",
                        "device_id": record.get("device_id"),
                        "value": value,
                        "above": self.config.above,
                    },
                    table="events",
                )
        if ctx.stage == "intake":
            ctx.reply({"alarms": alarms})
        return records


def build(config: ThresholdConfig, ctx: BuildContext) -> Threshold:
    return Threshold(config)


THRESHOLD = ComponentType("processor", "threshold", ThresholdConfig, build, "Alarms above a level.")
