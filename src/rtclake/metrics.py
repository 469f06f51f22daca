"""The Prometheus metrics rtclake reports, each documented where it is declared."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """One set of metrics in its own registry (so several services can live in a test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "rtclake_records_received",
            "Records accepted and made durable in the spool.",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "rtclake_records_rejected",
            "Requests or lines refused, by reason (bad_json, too_large, unauthorized, ...).",
            ["source", "reason"],
            registry=r,
        )
        self.stored = Counter(
            "rtclake_records_stored",
            "Rows written by a sink, by table.",
            ["sink", "table"],
            registry=r,
        )
        self.sink_errors = Counter(
            "rtclake_sink_errors",
            "Failed batch writes (the batch stays spooled and is retried).",
            ["sink"],
            registry=r,
        )
        self.lake_repeats = Counter(
            "rtclake_lake_repeats",
            "Rows the lake left out because it, or their batch, held them already (a"
            " client's retry, a line uploaded twice, a report by webhook and by log).",
            ["table"],
            registry=r,
        )
        self.sink_up = Gauge(
            "rtclake_sink_up",
            "1 while a sink starts and takes batches, 0 since its last start or write failed"
            " (its batches stay spooled, or go to dead_letters once it gave up on its"
            " destination; /healthz says why).",
            ["sink"],
            registry=r,
        )
        self.writer_errors = Counter(
            "rtclake_writer_errors",
            "Segments the writer could not take on yet, by stage (spool: reading the segment"
            " or recording a confirmation on the spool's disk; convert: its lines, or the"
            " store-stage processors); the segment is kept and tried again.",
            ["stage"],
            registry=r,
        )
        for stage in ("spool", "convert"):  # at 0 from the start, so rate() sees the first
            self.writer_errors.labels(stage)
        self.source_errors = Counter(
            "rtclake_source_errors",
            "Rounds of a background source that failed and are tried again, by source.",
            ["source"],
            registry=r,
        )
        self.source_connected = Gauge(
            "rtclake_source_connected",
            "1 while a source that keeps a connection (mqtt) is connected to its server, else 0.",
            ["source"],
            registry=r,
        )
        self.source_connections = Counter(
            "rtclake_source_connections",
            "Connections a source (mqtt) made to its server; more than one means reconnects.",
            ["source"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rtclake_batch_write_seconds",
            "Time for a sink to write one batch.",
            ["sink"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.fsync_seconds = Histogram(
            "rtclake_spool_fsync_seconds",
            "Time of one group-commit fsync of the spool.",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.quarantined = Counter(
            "rtclake_spool_quarantined_segments",
            "Segments that could not be converted after retries, moved to spool/quarantine.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "rtclake_spool_bytes",
            "Bytes in the spool not yet confirmed by every sink.",
            registry=r,
        )
        self.spool_segments = Gauge(
            "rtclake_spool_segments",
            "Spool segments on disk (the open one included).",
            registry=r,
        )

        self.disk_free = Gauge(
            "rtclake_spool_disk_free_bytes",
            "Bytes free on the spool's file system (ingest answers 507 when a write finds none).",
            registry=r,
        )
        self.spool_writable = Gauge(
            "rtclake_spool_writable",
            "1 while the spool's disk accepts writes, 0 while it refuses them (full, failing).",
            registry=r,
        )
        self.alerts_firing = Gauge(
            "rtclake_alerts_firing",
            "Alerts firing now, by rule (rtclake.alerts).",
            ["rule"],
            registry=r,
        )
        self.alert_evaluations = Counter(
            "rtclake_alert_evaluations",
            "Alert rules evaluated (one per rule per round).",
            registry=r,
        )
        self.alert_errors = Counter(
            "rtclake_alert_errors",
            "Alert rule evaluations that failed (the query), by rule; tried again next round.",
            ["rule"],
            registry=r,
        )
        # The lake's maintenance (rtclake.lake.maintenance). Labelled by node: one node of
        # several leads, so these show which one ran and that the others stood aside.
        self.maintenance_runs = Counter(
            "rtclake_maintenance_runs",
            "Maintenance runs by outcome: done, not_leader (another node held the lock),"
            " skipped (a scheduled run when a node ran less than lake.maintenance.interval"
            " ago) or failed (a step or the catalog failed; tried again at the next"
            " interval).",
            ["node", "outcome"],
            registry=r,
        )
        self.maintenance_step_seconds = Histogram(
            "rtclake_maintenance_step_seconds",
            "Time of one maintenance step (retention, merge, expire, cleanup).",
            ["node", "step"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self.maintenance_files_removed = Counter(
            "rtclake_maintenance_files_removed",
            "Files a maintenance step took away: retention and merge from the lake's live"
            " files (merge: net, the files it replaced less those it wrote), cleanup from"
            " the storage (replaced files and orphans).",
            ["node", "step"],
            registry=r,
        )
        self.maintenance_rows_deleted = Counter(
            "rtclake_maintenance_rows_deleted",
            "Rows retention deleted, by table (whole date partitions past the table's TTL).",
            ["node", "table"],
            registry=r,
        )
        self.maintenance_snapshots_expired = Counter(
            "rtclake_maintenance_snapshots_expired",
            "Catalog snapshots maintenance expired (older than lake.maintenance.expire_after).",
            ["node"],
            registry=r,
        )
        self.maintenance_last_run = Gauge(
            "rtclake_maintenance_last_run_timestamp_seconds",
            "When this node last finished a maintenance run with every step done (Unix time).",
            ["node"],
            registry=r,
        )

    def watch_spool(
        self,
        used_bytes: Callable[[], float],
        segments: Callable[[], float],
        disk_free: Callable[[], float],
        writable: Callable[[], float],
    ) -> None:
        self.spool_bytes.set_function(used_bytes)
        self.spool_segments.set_function(segments)
        self.disk_free.set_function(disk_free)
        self.spool_writable.set_function(writable)
