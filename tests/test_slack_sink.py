"""The Slack sink (``rtclake.sinks.slack``) against a local HTTP receiver standing in for
an incoming webhook, in a running service: one message per alert naming it, a 5xx retried
until delivered, a 4xx kept in ``dead_letters``."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from rtclake.config import Settings
from rtclake.service import Service
from rtclake.sinks.slack import slack_text
from rtclake.tables import ALERTS
from rtclake.testing import HttpReceiver

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def alert(n: int, notify: list[str], state: str = "firing") -> dict[str, Any]:
    """An ``alerts`` record as the alert engine hands it to the intake."""
    return {"time": NOW.isoformat(), "id": f"a{n}-{state}", "alert_id": f"a{n}",
            "rule": "lossy", "state": state, "connection_id": f"C{n}", "notify": notify,
            "message": f"{state.upper()} lossy: loss_pct > 5 for 2m on connection C{n}: 9 &"
                       f" more. http://dash.example/connections/C{n}"}  # fmt: skip


def deliver(tmp_path: Path, url: str, alerts: list[dict[str, Any]], *sql: str) -> list[Any]:
    """Start a service whose sink ``ops`` is Slack at ``url``, hand it ``alerts``, wait
    until every sink has them, run ``sql``."""
    settings = Settings(data_dir=tmp_path / "data", node="t", spool={"flush_interval": 0.05},
                        writer={"retry_initial": 0.05, "retry_max": 0.1},
                        sinks={"ops": {"type": "slack", "url": url}})  # fmt: skip

    async def main() -> list[Any]:
        service = Service(settings)
        await service.start()
        try:
            table = service.tables[ALERTS.name]
            body = b"\n".join(orjson.dumps(a) for a in alerts)
            await service.intake.take("alerts", "alerts", table, service.intake.validate(
                body, table))  # fmt: skip
            assert await service.writer.drain(20)
            return [service.query.run(q).rows() for q in sql]
        finally:
            await service.stop()

    return asyncio.run(main())


def test_each_alert_naming_the_sink_is_one_message_with_its_link(tmp_path: Path) -> None:
    with HttpReceiver() as slack:
        alerts = [alert(1, ["ops"]), alert(2, ["other"]), alert(3, ["ops"], "resolved")]
        deliver(tmp_path, slack.url + "/services/T/B/x", alerts)
        texts = [r.json() for r in slack.received("/services/T/B/x")]
        assert texts == [
            {"text": ":rotating_light: FIRING lossy: loss_pct &gt; 5 for 2m on connection C1:"
                     " 9 &amp; more. http://dash.example/connections/C1"},
            {"text": ":white_check_mark: RESOLVED lossy: loss_pct &gt; 5 for 2m on connection"
                     " C3: 9 &amp; more. http://dash.example/connections/C3"},
        ]  # fmt: skip


def test_a_5xx_is_retried_until_slack_takes_the_alert_once(tmp_path: Path) -> None:
    with HttpReceiver() as slack:
        slack.answer("/hook", 503, 500, 429)
        [letters] = deliver(tmp_path, slack.url + "/hook", [alert(1, ["ops"])],
                            "SELECT count(*) FROM dead_letters")  # fmt: skip
        assert [r.status for r in slack.received("/hook")] == [503, 500, 429, 200]
        assert letters == [[0]]


def test_a_4xx_is_kept_in_dead_letters_and_the_other_alerts_are_sent(tmp_path: Path) -> None:
    with HttpReceiver() as slack:
        slack.answer("/hook", 400)
        [letters] = deliver(
            tmp_path, slack.url + "/hook", [alert(1, ["ops"]), alert(2, ["ops"])],
            "SELECT sink, table_name, reason, record->>'id' FROM dead_letters",
        )  # fmt: skip
        assert letters == [["ops", "alerts", "POST answered 400: invalid_payload", "a1-firing"]]
        assert [r.status for r in slack.received("/hook")] == [400, 200]
        assert "C2" in slack.received("/hook")[1].json()["text"]


def test_the_text_escapes_what_slack_reads_as_markup() -> None:
    text = slack_text({"state": "firing", "message": "a < b & c > d"})
    assert text == ":rotating_light: a &lt; b &amp; c &gt; d"
