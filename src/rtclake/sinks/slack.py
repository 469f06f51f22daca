"""The Slack sink: alerts to a Slack incoming webhook.

What it accepts: the rows of the ``alerts`` table whose ``notify`` names this sink; each
becomes one POST of ``{"text": ...}``: the alert's message (which names the connection or
session and carries the link to its page), marked firing or resolved. And the rows of the
``outbox`` table whose ``sinks`` names it (what a broker emitted with
``ctx.emit(record, sinks=["slack"])``): its ``text``, and its ``blocks`` when it has them
(Slack's layout blocks), as they are. Other tables are not sent.

What it guarantees: as the webhook sink (:mod:`rtclake.sinks.webhook`): at least once; no
answer, a 5xx or a 429 (Slack's rate limit) is retried; another refusal (400
``invalid_payload``, 403, 404 ``no_service``, 410 ``channel_is_archived``) sends the
alert to ``dead_letters``; so does an outage longer than ``give_up_after``.

What it reports: the delivery's metrics under the sink's name.
"""

from __future__ import annotations

from rtclake.errors import SinkError
from rtclake.registry import BuildContext, ComponentType
from rtclake.sinks.base import Batch, Sink, rows_taken
from rtclake.sinks.webhook import HttpSinkConfig, Poster, alerts_for, alerts_naming, outbox_for
from rtclake.tables import ALERTS, OUTBOX, TableRegistry

ICONS = {"firing": ":rotating_light:", "resolved": ":white_check_mark:"}


class SlackConfig(HttpSinkConfig):
    """``type: slack``: ``url`` is the incoming webhook's
    (https://hooks.slack.com/services/...)."""


def slack_text(alert: dict[str, object]) -> str:
    """The message of an alert row as Slack text (``&``, ``<``, ``>`` escaped, as Slack
    asks; a URL in it stays a link)."""
    message = str(alert.get("message") or "")
    escaped = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    icon = ICONS.get(str(alert.get("state")), "")
    return f"{icon} {escaped}".strip()


class Slack(Sink):
    """Posts each alert that names it to a Slack incoming webhook."""

    needs_record_id = False  # alerts carry theirs; outbox (no identity) always has one

    def __init__(self, config: SlackConfig, tables: TableRegistry, name: str) -> None:
        self.name = name
        self.tables = tables
        self.poster = Poster(config)

    def start(self) -> None:
        self.poster.start()

    def close(self) -> None:
        self.poster.close()

    def taken(self, batch: Batch) -> dict[str, int]:
        counts = rows_taken(batch, [OUTBOX.name], self.name)
        if ALERTS.name in batch.tables:
            counts[ALERTS.name] = len(alerts_naming(batch, self.name))
        return counts

    def write(self, batch: Batch) -> None:
        self.poster.begin(batch)
        pending: list[int] = []
        outage: SinkError | None = None
        for index, alert in alerts_for(batch, self.tables, self.name):
            if outage is not None:  # Slack is down: the rest waits for the retry
                pending.append(index)
                continue
            body = {"text": slack_text(alert)}
            try:
                self.poster.send(str(alert["id"]), body, ALERTS.name, [index])
            except SinkError as exc:
                outage = exc
                pending.append(index)
        waiting = {ALERTS.name: pending} if pending else {}
        for index, row in outbox_for(batch, self.tables, self.name):
            if outage is not None:
                waiting.setdefault(OUTBOX.name, []).append(index)
                continue
            extra = row.get("extra") or {}
            post: dict[str, object] = {"text": str(row.get("text") or "")}
            if isinstance(extra, dict) and isinstance(extra.get("blocks"), list):
                post["blocks"] = extra["blocks"]
            try:
                self.poster.send(f"outbox:{row['record_id']}", post, OUTBOX.name, [index])
            except SinkError as exc:
                outage = exc
                waiting.setdefault(OUTBOX.name, []).append(index)
        self.poster.finish(waiting, outage)


def build(config: SlackConfig, ctx: BuildContext) -> Slack:
    return Slack(config, ctx.tables, ctx.name)


SLACK = ComponentType("sink", "slack", SlackConfig, build, "Alerts to a Slack incoming webhook.")
