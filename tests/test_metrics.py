"""The metrics: one registry per service, the spool gauges read when scraped."""

from __future__ import annotations

from prometheus_client import generate_latest

from rtclake.metrics import Metrics


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    one.received.labels("http").inc(3)
    assert one.registry.get_sample_value("rtclake_records_received_total", {"source": "http"}) == 3
    assert (
        two.registry.get_sample_value("rtclake_records_received_total", {"source": "http"}) is None
    )


def test_spool_gauges_are_read_when_scraped() -> None:
    metrics = Metrics()
    state = {"bytes": 10.0}
    metrics.watch_spool(lambda: state["bytes"], lambda: 2, lambda: 123.0, lambda: 1.0)
    state["bytes"] = 42.0
    get = metrics.registry.get_sample_value
    assert get("rtclake_spool_bytes") == 42.0
    assert get("rtclake_spool_segments") == 2
    assert get("rtclake_spool_disk_free_bytes") == 123.0
    assert get("rtclake_spool_writable") == 1.0


def test_every_metric_is_exposed_with_help_text() -> None:
    text = generate_latest(Metrics().registry).decode()
    for name in (
        "rtclake_records_received", "rtclake_records_rejected", "rtclake_records_stored",
        "rtclake_sink_errors", "rtclake_batch_write_seconds", "rtclake_spool_fsync_seconds",
        "rtclake_spool_quarantined_segments", "rtclake_writer_errors", "rtclake_source_errors",
    ):  # fmt: skip
        assert f"# HELP {name}" in text and f"# TYPE {name}" in text
