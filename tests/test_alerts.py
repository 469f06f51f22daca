"""Alerts (``rtclake.alerts``): rules over the lake's tables and views fire once and
resolve once, survive a restart, and reach Slack and a webhook through the spool.

In process, the evaluation time is given to ``AlertEngine.evaluate`` (the schedule's
``interval`` is an hour, so only the test evaluates); against a real ``rtclake run`` the
samples carry times in the recent past and the server evaluates on its clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from structlog.testing import capture_logs

from rtclake.config import Settings, load_settings
from rtclake.errors import ConfigError, SpoolFull
from rtclake.service import Service
from rtclake.testing import HttpReceiver, RunningServer, wait_for

T0 = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
CONN, SESSION, CHANNEL = "C0NNECTI0N0000000000000001", "SESSI0N1", "room-1"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def stat(
    when: dt.datetime,
    conn: str = CONN,
    *,
    node: str = "sora-1",
    stats_id: str = "IA",
    kind: str = "audio",
    **data: Any,
) -> dict[str, Any]:
    """One rtc_stats line as Sora logs it (an inbound-rtp stat)."""
    ms = when.timestamp() * 1000
    return {
        "connection_id": conn, "id": f"R-{conn}-{ms}", "timestamp": when.isoformat(),
        "type": "connection.rtc", "channel_id": CHANNEL, "session_id": SESSION,
        "node_name": node, "rtc_id": stats_id, "rtc_timestamp": ms, "rtc_type": "inbound-rtp",
        "rtc_data": {"id": stats_id, "type": "inbound-rtp", "timestamp": ms, "kind": kind, **data},
    }  # fmt: skip


def settings_for(tmp_path: Path, rules: dict[str, Any], **values: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        node="t",
        spool={"flush_interval": 0.05},
        writer={"retry_initial": 0.05, "retry_max": 0.2},
        server={"public_url": "http://dash.example/"},
        alerts={"interval": 3600, "rules": rules},
        **values,
    )


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    service = Service(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def store(service: Service, table: str, records: list[dict[str, Any]]) -> None:
    """Hand ``records`` to the intake and wait until the lake has them."""
    target = service.tables[table]
    await service.intake.take("test", "test", target, service.intake.validate(
        orjson.dumps(records), target))  # fmt: skip
    assert await service.writer.drain(20)


def rows(service: Service, sql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = service.query.run(sql).table.to_pylist()
    return result


JITTER = {
    "source": "rtc_stats",
    "metric": "jitter",
    "condition": "> 0.05",
    "for": "2m",
    "scope": "connection_id",
    "where": "media_kind = 'audio'",
}


def test_a_threshold_alert_fires_once_after_the_window_and_resolves_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(settings_for(tmp_path, {"jitter": JITTER})) as service:
            engine = service.alerts
            assert engine is not None
            # bad for two minutes on CONN, in video only on another connection
            await store(service, "rtc_stats", [
                *(stat(at(s), jitter=0.08) for s in (0, 60, 120)),
                *(stat(at(s), "OTHER", kind="video", jitter=0.09) for s in (0, 60, 120)),
            ])  # fmt: skip
            with capture_logs() as logged:
                assert await engine.evaluate(at(60)) == []  # bad for 60 s only
                [fired] = await engine.evaluate(at(120))
                assert await engine.evaluate(at(121)) == []  # no repeat
                assert await engine.evaluate(at(150)) == []
                await store(service, "rtc_stats", [stat(at(180), jitter=0.01)])
                [resolved] = await engine.evaluate(at(180))
                assert await engine.evaluate(at(200)) == []
            said = [(e["event"], e["alert"]) for e in logged if e["event"].startswith("alert ")]
            assert said == [
                ("alert firing", fired["alert_id"]),
                ("alert resolved", fired["alert_id"]),
            ]

            assert (fired["state"], resolved["state"]) == ("firing", "resolved")
            assert fired["alert_id"] == resolved["alert_id"] and fired["id"] != resolved["id"]
            assert fired["connection_id"] == CONN and fired["session_id"] == SESSION
            assert fired["url"] == f"http://dash.example/connections/{CONN}"
            assert fired["value"] == 0.08 and resolved["value"] == 0.01
            assert fired["message"] == (
                f"FIRING jitter: jitter > 0.05 for 2m on connection {CONN} (session"
                f" {SESSION}, channel {CHANNEL}): 0.08 (since 2026-11-20 12:00:00Z)."
                f" http://dash.example/connections/{CONN}"
            )
            assert resolved["message"].startswith(
                f"RESOLVED jitter: jitter > 0.05 for 2m no longer holds on connection {CONN}"
            )
            assert await service.writer.drain(20)
            stored = rows(service, "SELECT id, state, rule, notify, url FROM alerts ORDER BY time")
            assert [(r["id"], r["state"]) for r in stored] == [
                (fired["id"], "firing"), (resolved["id"], "resolved"),
            ]  # fmt: skip
            assert json.loads(stored[0]["notify"]) == []  # notify: [log], the default
            metrics = service.metrics.registry
            assert metrics.get_sample_value("rtclake_alerts_firing", {"rule": "jitter"}) == 0
            assert metrics.get_sample_value("rtclake_alert_evaluations_total") == 6

    asyncio.run(main())


def test_an_alert_whose_scope_stops_reporting_resolves_as_no_data(tmp_path: Path) -> None:
    rule = {**JITTER, "stale_after": "1m"}

    async def main() -> None:
        async with running(settings_for(tmp_path, {"jitter": rule})) as service:
            engine = service.alerts
            assert engine is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.08) for s in (0, 60, 120)])
            assert [e["state"] for e in await engine.evaluate(at(130))] == ["firing"]
            assert await engine.evaluate(at(180)) == []  # the newest sample is a minute old
            [resolved] = await engine.evaluate(at(181))
            assert resolved["state"] == "resolved" and resolved["value"] is None
            assert ": no data (firing since 2026-11-20 12:02:10Z)." in resolved["message"]
            assert await engine.evaluate(at(240)) == []

    asyncio.run(main())


def test_an_absence_rule_fires_when_a_named_scope_has_no_rows_for_the_window(
    tmp_path: Path,
) -> None:
    rule = {"source": "rtc_stats", "metric": "count", "condition": "< 1", "for": "5m",
            "scope": {"node_name": "sora-1"}}  # fmt: skip

    async def main() -> None:
        async with running(settings_for(tmp_path, {"node_quiet": rule})) as service:
            engine = service.alerts
            assert engine is not None
            await store(service, "rtc_stats", [stat(at(0)), stat(at(0), "OTHER", node="sora-2")])
            assert await engine.evaluate(at(299)) == []
            [fired] = await engine.evaluate(at(301))
            assert fired["scope_value"] == "node_name=sora-1" and fired["value"] == 0
            assert fired["message"].startswith(
                "FIRING node_quiet: count of rtc_stats rows < 1 in 5m on node_name=sora-1: 0"
            )
            assert fired["url"] is None  # a node has no page
            assert await engine.evaluate(at(400)) == []
            await store(service, "rtc_stats", [stat(at(410))])
            [resolved] = await engine.evaluate(at(420))
            assert resolved["state"] == "resolved" and resolved["value"] == 1

    asyncio.run(main())


def test_a_session_alert_names_the_session_and_links_to_its_page(tmp_path: Path) -> None:
    rule = {**JITTER, "scope": "session_id", "notify": ["log"]}

    async def main() -> None:
        async with running(settings_for(tmp_path, {"jitter": rule})) as service:
            assert service.alerts is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.08) for s in (0, 60, 120)])
            [fired] = await service.alerts.evaluate(at(130))
            assert (fired["session_id"], fired["channel_id"]) == (SESSION, CHANNEL)
            assert fired["connection_id"] is None  # a session has many
            assert fired["url"] == f"http://dash.example/sessions/{SESSION}"
            assert f"on session {SESSION} (channel {CHANNEL}): 0.08" in fired["message"]

    asyncio.run(main())


def test_rules_on_the_sora_views_evaluate(tmp_path: Path) -> None:
    rules = {
        "lossy": {"source": "rtc_rates", "metric": "loss_pct", "condition": "> 5",
                  "for": "2m", "scope": "connection_id", "where": "media_kind = 'audio'"},
        "slow": {"source": "rtc_rates", "metric": "rtt_ms", "condition": ">= 300",
                 "for": "1m", "scope": "session_id"},
        "poor": {"source": "connection_quality", "metric": "mos_audio", "condition": "< 3.5",
                 "for": "2m", "scope": "connection_id"},
    }  # fmt: skip

    async def main() -> None:
        async with running(settings_for(tmp_path, rules)) as service:
            assert service.alerts is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.01) for s in (0, 60)])
            assert await service.alerts.evaluate(at(90)) == []
            errors = service.metrics.registry.get_sample_value
            assert [errors("rtclake_alert_errors_total", {"rule": r}) for r in rules] == [None] * 3

    asyncio.run(main())


def test_the_state_survives_a_restart_so_nothing_fires_or_resolves_twice(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"jitter": JITTER})

    async def main() -> None:
        async with running(settings) as service:
            assert service.alerts is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.08) for s in (0, 60, 120)])
            assert len(await service.alerts.evaluate(at(130))) == 1
        async with running(settings) as service:  # the same data folder: a restart
            assert service.alerts is not None
            assert await service.alerts.evaluate(at(140)) == []
            gauge = service.metrics.registry.get_sample_value
            assert gauge("rtclake_alerts_firing", {"rule": "jitter"}) == 1
            await store(service, "rtc_stats", [stat(at(150), jitter=0.0)])
            assert [e["state"] for e in await service.alerts.evaluate(at(160))] == ["resolved"]
        async with running(settings) as service:
            assert service.alerts is not None
            assert await service.alerts.evaluate(at(170)) == []
            stored = rows(service, "SELECT state FROM alerts ORDER BY time")
            assert [r["state"] for r in stored] == ["firing", "resolved"]

    asyncio.run(main())


def test_an_alert_the_spool_cannot_take_waits_in_the_outbox_with_its_id(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"jitter": JITTER})

    async def main() -> None:
        async with running(settings) as service:
            engine = service.alerts
            assert engine is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.08) for s in (0, 60, 120)])
            take = service.intake.take

            async def full(*args: Any, **kw: Any) -> Any:
                raise SpoolFull(1, 1, 1)

            service.intake.take = full  # type: ignore[method-assign]
            [fired] = await engine.evaluate(at(130))
            assert [r["id"] for r in engine.outbox] == [fired["id"]]
            service.intake.take = take  # type: ignore[method-assign]
        async with running(settings) as service:  # handed over after a restart too
            assert service.alerts is not None
            assert await service.alerts.evaluate(at(140)) == []
            assert service.alerts.outbox == []
            assert await service.writer.drain(20)
            assert [r["id"] for r in rows(service, "SELECT id FROM alerts")] == [fired["id"]]

    asyncio.run(main())


def test_where_runs_in_the_query_sandbox(tmp_path: Path) -> None:
    rule = {**JITTER, "where": "connection_id IN (SELECT * FROM read_csv('/etc/hostname'))"}

    async def main() -> None:
        async with running(settings_for(tmp_path, {"sneaky": rule})) as service:
            assert service.alerts is not None
            await store(service, "rtc_stats", [stat(at(s), jitter=0.08) for s in (0, 60, 120)])
            with capture_logs() as logged:
                assert await service.alerts.evaluate(at(130)) == []
            errors = service.metrics.registry.get_sample_value
            assert errors("rtclake_alert_errors_total", {"rule": "sneaky"}) == 1
            [error] = [e["error"] for e in logged if e["event"].startswith("alerts: rule not")]
            assert 'Cannot access file "/etc/hostname"' in error

    asyncio.run(main())


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"notify": ["ops_slak"]}, "alerts.rules.r.notify: no sink named 'ops_slak'"),
        ({"source": "rtc_ratez"}, "alerts.rules.r.source: no table or view 'rtc_ratez'"),
        ({"metric": "los_pct"}, "alerts.rules.r.metric: rtc_rates has no column 'los_pct'"),
        ({"scope": "conection_id"}, "alerts.rules.r.scope: rtc_rates has no column"),
        ({"where": "1=1) OR (1=1"}, "alerts.rules.r.where: not one SQL expression"),
        ({"source": "rtc_stats", "metric": "stats_type"}, "rtc_stats.stats_type is not a number"),
    ],
)
def test_a_rule_the_registry_refutes_is_refused_at_start_naming_its_key(
    tmp_path: Path, rule: dict[str, Any], expected: str
) -> None:
    base = {"source": "rtc_rates", "metric": "loss_pct", "condition": "> 5", "for": "2m",
            "scope": "connection_id", "notify": ["log"]}  # fmt: skip
    settings = settings_for(tmp_path, {"r": {**base, **rule}})
    with pytest.raises(ConfigError) as caught:
        Service(settings)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"condition": "above 5"}, "alerts.rules.r.condition: Value error, 'above 5' is not a"),
        ({"for": "2 weeks"}, "r.for' in a config file, or RTCLAKE_ALERTS__RULES__R__FOR]"),
        ({"metric": "count", "condition": "< 1", "for": "5m"}, "a scope by column knows only"),
        ({"metric": "loss_pct; DROP"}, "alerts.rules.r.metric: Value error, give a column name"),
        ({"nottify": ["log"]}, "alerts.rules.r.nottify: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_malformed_rule_is_refused_by_the_settings_naming_its_key(
    tmp_path: Path, rule: dict[str, Any], expected: str
) -> None:
    base = {"source": "rtc_rates", "metric": "loss_pct", "condition": "> 5", "for": "2m",
            "scope": "connection_id"}  # fmt: skip
    path = tmp_path / "rtclake.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"rules": {"r": {**base, **rule}}}}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_a_damaged_state_file_is_refused_at_start_naming_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"jitter": JITTER})
    settings.data_dir.mkdir()
    (settings.data_dir / "alerts-state.json").write_text('{"firing": ')
    with pytest.raises(ConfigError, match=r"alerts-state\.json cannot be read"):
        Service(settings)


def test_rules_come_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {"SOURCE": "telemetry", "METRIC": "extra.temp", "CONDITION": ">30", "FOR": "90s",
             "SCOPE": '{"device_id": "d1"}', "NOTIFY": '["log"]'}  # fmt: skip
    for key, value in given.items():
        monkeypatch.setenv(f"RTCLAKE_ALERTS__RULES__HOT__{key}", value)
    rule = load_settings().alerts.rules["hot"]
    assert (rule.condition, rule.for_, rule.scope) == ("> 30", 90.0, {"device_id": "d1"})


# -- end to end: rtc_rates through Sora's stats webhook, Slack and a webhook ------------

STATS_WEBHOOK = {"sora-stats-webhook-type": "connection.rtc"}


def report(conn: str, when: dt.datetime, received: int, lost: int) -> dict[str, Any]:
    """A Sora statistics webhook body: one getStats report with one inbound audio stat."""
    ms = when.timestamp() * 1000
    return {
        "type": "connection.rtc", "id": f"R-{conn}-{ms}", "timestamp": when.isoformat(),
        "connection_id": conn, "session_id": SESSION, "channel_id": CHANNEL,
        "node_name": "sora-1", "label": "WebRTC SFU Sora", "version": "2025.1.0",
        "role": "sendrecv", "stats": [{
            "id": "IA", "type": "inbound-rtp", "kind": "audio", "timestamp": ms,
            "packetsReceived": received, "packetsLost": lost, "jitter": 0.01,
        }],
    }  # fmt: skip


def send_reports(server: RunningServer, conn: str, start: int, per_minute_lost: int) -> None:
    """Reports of ``conn`` every minute from ``start`` minutes ago (negative: ago) until
    now, 1,000 packets received per minute and ``per_minute_lost`` lost."""
    now = dt.datetime.now(dt.UTC)
    for n, minutes in enumerate(range(start, 1)):
        when = now + dt.timedelta(minutes=minutes)
        body = report(conn, when, 1_000 * (n + 1), per_minute_lost * (n + 1))
        answer = httpx.post(server.url + "/sora/webhooks/stats", json=body,
                            headers=STATS_WEBHOOK)  # fmt: skip
        assert answer.status_code == 200, answer.text


def test_a_loss_alert_on_rtc_rates_reaches_slack_and_a_webhook_once_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    with HttpReceiver() as receiver:
        config = tmp_path / "rtclake.yaml"
        config.write_text(yaml.safe_dump({
            "server": {"public_url": "http://dash.example"},
            "writer": {"retry_initial": 0.1, "retry_max": 0.5},
            "sinks": {
                "ops_slack": {"type": "slack", "url": receiver.url + "/slack"},
                "hook": {"type": "webhook", "url": receiver.url + "/hook",
                         "headers": {"Authorization": "Bearer s3cret"}},
            },
            "alerts": {"interval": 0.3, "rules": {"lossy": {
                "source": "rtc_rates", "metric": "loss_pct", "condition": "> 5", "for": "2m",
                "scope": "connection_id", "where": "media_kind = 'audio'",
                "notify": ["ops_slack", "hook", "log"],
            }}},
        }))  # fmt: skip
        data = tmp_path / "data"
        data.mkdir()
        server = RunningServer(data, env={"RTCLAKE_CONFIG": str(config)}).start()
        try:
            # 10 % loss for four minutes on one connection, none on another
            send_reports(server, CONN, -4, per_minute_lost=111)
            send_reports(server, "FINE", -4, per_minute_lost=0)
            slack = wait_for(lambda: receiver.received("/slack"))
            [hook] = wait_for(lambda: receiver.received("/hook"))
            [text] = [r.json()["text"] for r in slack]
            assert text.startswith(
                f":rotating_light: FIRING lossy: loss_pct &gt; 5 for 2m on"
                f" connection {CONN} (session {SESSION}, channel {CHANNEL})"
            )
            assert text.endswith(f" http://dash.example/connections/{CONN}")  # fmt: skip
            assert hook.headers["authorization"] == "Bearer s3cret"
            body = hook.json()
            assert (body["table"], len(body["records"])) == ("alerts", 1)
            alert = body["records"][0]
            assert alert["state"] == "firing" and alert["connection_id"] == CONN
            assert alert["notify"] == ["ops_slack", "hook"] and alert["record_id"]

            # a restart, while the loss goes on: no second firing
            evaluations = server.metric("rtclake_alert_evaluations_total")
            assert evaluations >= 1
            assert server.stop() in (0, -15), server.log()
            server.start()
            assert wait_for(lambda: server.metric("rtclake_alert_evaluations_total") >= 3)
            assert server.metric("rtclake_alerts_firing", rule="lossy") == 1

            # the loss stops: one resolved notification, then nothing more
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
            body = report(CONN, later, 6_000, 555)  # no packet lost since the last report
            answer = httpx.post(server.url + "/sora/webhooks/stats", json=body,
                                headers=STATS_WEBHOOK)  # fmt: skip
            assert answer.status_code == 200
            assert wait_for(lambda: len(receiver.received("/slack")) == 2), receiver.requests
            assert wait_for(lambda: len(receiver.received("/hook")) == 2)
            evaluations = server.metric("rtclake_alert_evaluations_total")
            assert wait_for(
                lambda: server.metric("rtclake_alert_evaluations_total") >= evaluations + 3
            )
            texts = [r.json()["text"] for r in receiver.received("/slack")]
            assert texts[1].startswith(":white_check_mark: RESOLVED lossy: loss_pct &gt; 5")
            resolved = receiver.received("/hook")[1].json()["records"][0]
            assert (resolved["state"], resolved["alert_id"]) == ("resolved", alert["alert_id"])
            assert len(receiver.received("/slack")) == 2 and len(receiver.received("/hook")) == 2
            stored = server.query("SELECT state FROM alerts ORDER BY time")["rows"]
            assert stored == [["firing"], ["resolved"]]
            assert "Traceback" not in server.log()
        finally:
            if server.proc is not None:
                server.stop()
