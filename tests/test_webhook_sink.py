"""The webhook sink (``rtclake.sinks.webhook``) against a local HTTP receiver: JSON records
with their ids, what is an outage (retried) and what a refusal (dead letters), and giving
up on a long outage."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from rtclake.config import Settings
from rtclake.errors import ConfigError, SinkError
from rtclake.registry import load_registry
from rtclake.service import Service
from rtclake.sinks.base import Batch, Rejected
from rtclake.sinks.webhook import Webhook, WebhookConfig
from rtclake.tables import ALERTS, TELEMETRY
from rtclake.testing import HttpReceiver, free_port, wait_for
from tests.test_influxdb_sink import EXAMPLES
from tests.test_sora_webhooks import App

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def row(table: pa.Schema, **values: Any) -> dict[str, Any]:
    envelope = {"time": NOW, "received_at": NOW, "source": "alerts", "stream": "alerts",
                "kind": "alert"}  # fmt: skip
    return {name: None for name in table.names} | envelope | values


def alert(n: int, notify: list[str]) -> dict[str, Any]:
    return row(ALERTS.schema, record_id=f"r{n}", id=f"a{n}-firing", alert_id=f"a{n}",
               rule="lossy", state="firing", message=f"FIRING lossy: alert {n} > 5",
               notify=orjson.dumps(notify).decode())  # fmt: skip


def batch(**tables: list[dict[str, Any]]) -> Batch:
    schemas = {"alerts": ALERTS.schema, "telemetry": TELEMETRY.schema}
    return Batch("t", "run", 1, {
        name: pa.Table.from_pylist(rows, schema=schemas[name]) for name, rows in tables.items()
    })  # fmt: skip


def webhook(url: str, **settings: Any) -> Webhook:
    sink = Webhook(WebhookConfig(type="webhook", url=url, **settings), load_registry().tables,
                   "hook")  # fmt: skip
    sink.start()
    return sink


def test_posts_the_alerts_naming_it_as_json_with_their_ids_and_headers() -> None:
    with HttpReceiver() as receiver:
        sink = webhook(receiver.url + "/hook", headers={"Authorization": "Bearer t0ken"})
        sink.write(batch(alerts=[alert(1, ["hook"]), alert(2, ["ops_slack"])]))
        [got] = receiver.received("/hook")
        assert got.headers["authorization"] == "Bearer t0ken"
        assert got.headers["content-type"] == "application/json"
        body = got.json()
        assert (body["table"], body["batch"]) == ("alerts", "t-run-000000000001")
        [record] = body["records"]
        assert (record["record_id"], record["id"], record["alert_id"]) == ("r1", "a1-firing", "a1")
        assert record["notify"] == ["hook"] and record["time"] == "2026-11-20T12:00:00Z"


def test_rows_of_the_tables_listed_are_sent_in_parts_of_max_records() -> None:
    readings = [row(TELEMETRY.schema, record_id=f"t{n}", device_id="d1",
                    extra=orjson.dumps({"temp": n}).decode()) for n in range(5)]  # fmt: skip
    with HttpReceiver() as receiver:
        sink = webhook(receiver.url + "/hook", tables=["telemetry"], max_records=2)
        sink.write(batch(telemetry=readings, alerts=[alert(1, ["hook"])]))
        bodies = [r.json() for r in receiver.received("/hook")]
        assert [[r["extra"]["temp"] for r in b["records"]] for b in bodies] == [[0, 1], [2, 3], [4]]
        assert {b["table"] for b in bodies} == {"telemetry"}  # alerts were not listed


def test_numbers_beyond_a_float_are_posted_as_written() -> None:
    readings = [row(TELEMETRY.schema, record_id="t1", device_id="d1",
                    extra='{"big":1e400,"low":-1e400,"digits":' + "9" * 400 + "}")]  # fmt: skip
    with HttpReceiver() as receiver:
        sink = webhook(receiver.url + "/hook", tables=["telemetry"])
        sink.write(batch(telemetry=readings))
        [got] = receiver.received("/hook")
        assert b'"extra":{"big":1e400,"low":-1e400,"digits":' + b"9" * 400 + b"}" in got.body


def test_a_5xx_is_an_outage_and_the_retry_sends_only_what_was_not_answered() -> None:
    with HttpReceiver() as receiver:
        receiver.answer("/hook", 200, 503)
        sink = webhook(receiver.url + "/hook", max_records=1)
        alerts = batch(alerts=[alert(n, ["hook"]) for n in range(3)])
        with pytest.raises(SinkError, match="POST answered 503"):
            sink.write(alerts)
        sink.write(alerts)  # the delivery's retry
        ids = [r.json()["records"][0]["id"] for r in receiver.received("/hook")]
        assert ids == ["a0-firing", "a1-firing", "a1-firing", "a2-firing"]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_answers_that_say_not_now_are_outages(status: int) -> None:
    with HttpReceiver() as receiver:
        receiver.answer("/hook", status)
        sink = webhook(receiver.url + "/hook")
        with pytest.raises(SinkError, match=str(status)):
            sink.write(batch(alerts=[alert(1, ["hook"])]))


def test_no_answer_is_an_outage() -> None:
    sink = webhook(f"http://127.0.0.1:{free_port()}/hook", timeout=2)
    with pytest.raises(SinkError, match="ConnectError"):
        sink.write(batch(alerts=[alert(1, ["hook"])]))


def test_a_4xx_refuses_its_records_for_good_and_the_rest_is_sent() -> None:
    with HttpReceiver() as receiver:
        receiver.answer("/hook", 200, 404)
        sink = webhook(receiver.url + "/hook", max_records=1)
        with pytest.raises(Rejected) as refused:
            sink.write(batch(alerts=[alert(n, ["hook"]) for n in range(3)]))
        assert refused.value.rows == {"alerts": [(1, "POST answered 404: invalid_payload")]}
        assert [r.status for r in receiver.received("/hook")] == [200, 404, 200]


def test_an_outage_longer_than_give_up_after_sends_the_batch_to_dead_letters() -> None:
    with HttpReceiver() as receiver:
        receiver.answer("/hook", *[503] * 4)
        sink = webhook(receiver.url + "/hook", give_up_after=60)
        clock = [100.0]
        sink.poster.clock = lambda: clock[0]
        alerts = batch(alerts=[alert(1, ["hook"])])
        for later in (0, 59):
            clock[0] += later
            with pytest.raises(SinkError):
                sink.write(alerts)
        clock[0] += 1
        with pytest.raises(Rejected) as refused:
            sink.write(alerts)
        [(index, reason)] = refused.value.rows["alerts"]
        assert index == 0 and reason.startswith("gave up after 60 s of outage: POST answered 503")
        assert refused.value.outage == reason  # the receiver is out: the sink counts as down
        # the outage goes on: the next batch is given up at its first try
        later = Batch("t", "run", 2, alerts.tables)
        with pytest.raises(Rejected) as refused:
            sink.write(later)
        assert refused.value.outage is not None
        sink.write(Batch("t", "run", 3, alerts.tables))  # the receiver is back (200)
        clock[0] += 600
        receiver.answer("/hook", 503)
        with pytest.raises(SinkError):  # a new outage starts its own clock
            sink.write(Batch("t", "run", 4, alerts.tables))


def test_a_table_it_does_not_know_is_refused_at_start(tmp_path: Path) -> None:
    hook = {"type": "webhook", "url": "http://127.0.0.1:9/", "tables": ["telemetri"]}
    settings = Settings(data_dir=tmp_path, node="t", sinks={"hook": hook})
    with pytest.raises(ConfigError, match=r"sinks.hook.tables: unknown tables \['telemetri'\]"):
        Service(settings)


def test_record_ids_of_tables_with_an_identity_are_asked_for_only_when_sent() -> None:
    assert webhook("http://127.0.0.1:9/").needs_record_id is False  # alerts have their own
    assert webhook("http://127.0.0.1:9/", tables=["alerts", "rtc_stats"]).needs_record_id


def test_behind_the_writer_the_outbox_rows_addressed_to_it_are_posted_whatever_its_tables(
    tmp_path: Path,
) -> None:
    alarm = {"type": "broker", "handler": "threshold_alarm:ThresholdAlarm",
             "path": str(EXAMPLES), "match": {"stream": "sensors*"},
             "options": {"field": "temp", "threshold": 30, "sinks": ["hook", "slk"]}}  # fmt: skip
    with HttpReceiver() as receiver:
        sinks = {
            "hook": {"type": "webhook", "url": receiver.url + "/hook"},  # tables: [alerts]
            "slk": {"type": "slack", "url": receiver.url + "/slack"},
            "other": {"type": "webhook", "url": receiver.url + "/other"},  # not addressed
        }
        app = App(tmp_path, sinks=sinks, processors={"alarm": alarm}).start()
        try:
            for temp in (31, 20, 32, 33):
                reading = orjson.dumps({"device_id": "s1", "temp": temp})
                assert app.post("/ingest/sensors-a", reading).status_code == 200

            def posted() -> list[dict[str, Any]]:
                bodies = [got.json() for got in receiver.received("/hook")]
                assert {body["table"] for body in bodies} <= {"outbox"}
                return [record for body in bodies for record in body["records"]]

            assert wait_for(lambda: len(posted()) == 3) is True
            assert sorted(record["text"] for record in posted()) == [
                "s1: temp 31 is above 30", "s1: temp 32 is above 30", "s1: temp 33 is above 30",
            ]  # fmt: skip
            assert all(record["sinks"] == ["hook", "slk"] for record in posted())
            assert wait_for(lambda: len(receiver.received("/slack")) == 3) is True
            assert receiver.received("/other") == []
            assert app.wait_rows("SELECT count(*) FROM outbox", 3) == 3

            def stored(sink: str, table: str) -> float:
                labels = {"sink": sink, "table": table}
                value = app.service.metrics.registry.get_sample_value(
                    "rtclake_records_stored_total", labels
                )
                return value or 0.0

            # (counted once each write returns, just after its POSTs were answered)
            assert wait_for(lambda: stored("slk", "outbox") == 3) is True
            assert stored("hook", "outbox") == 3 and stored("lake", "telemetry") == 4
            assert stored("other", "outbox") == 0  # only what it posted counts
            assert stored("hook", "telemetry") == 0
        finally:
            app.stop()
