"""Sora's built-in processors (store stage, on by default, for the API poller's tables):

- ``sora_counter_names``: the per-connection counters renamed in Sora 18.10 under their
  current names, so old and new nodes fill the same columns;
- ``sorabeat_fields``: Sorabeat's derived fields (``<list>_min`` ... ``_imbalance`` of
  the Erlang VM lists) and ``channel_client_id``.

Turn one off with ``processors: {sorabeat_fields: {type: sorabeat_fields, enabled: false}}``.
"""

from __future__ import annotations

from collections.abc import Callable

from rtclake.integrations.sora import api
from rtclake.processors.base import Context, Processor, Record

Step = Callable[[Record], Record]


class RecordSteps(Processor):
    """Applies one function per table to each record."""

    def __init__(self, steps: dict[str, list[Step]]) -> None:
        self.steps = steps
        self.tables = frozenset(steps)

    def process(self, records: list[Record], ctx: Context) -> list[Record]:
        steps = self.steps.get(ctx.table, [])
        out = []
        for record in records:
            for step in steps:
                record = step(record)
            out.append(record)
        return out


def counter_names() -> Processor:
    return RecordSteps({api.SORA_CONNECTION_COUNTERS.name: [api.with_current_counter_names]})


def sorabeat_fields() -> Processor:
    return RecordSteps(
        {
            api.SORA_STATS_REPORT.name: [api.with_derived_fields],
            api.SORA_CONNECTION_COUNTERS.name: [api.with_channel_client_id],
        }
    )


__all__ = ["counter_names", "sorabeat_fields"]
