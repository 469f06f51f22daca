"""``python -m bench``: run the benchmarks, print the tables, update docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import (
    cli_startup,
    dashboard_queries,
    grpc_ingest,
    http_ingest,
    ingest_under_queries,
    lake_catalog,
    mqtt_ingest,
    scaling,
    sinks,
    sora_import,
)


@dataclass(frozen=True)
class Plan:
    """What to run, with which options."""

    only: str | None  # None: every benchmark
    http: http_ingest.Options
    queries: ingest_under_queries.Options
    sora_lines: int
    sora_rounds: int
    cli_rounds: int
    cli_baseline: str | None
    dashboard: dashboard_queries.Options
    mqtt: mqtt_ingest.Options
    grpc: grpc_ingest.Options
    sinks: sinks.Options


def parse(argv: Sequence[str]) -> Plan:
    d = http_ingest.Options()
    dq = ingest_under_queries.Options()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--duration",
        type=float,
        help=f"measured seconds per phase (default: {d.duration:g}; {dq.duration:g} for queries)",
    )
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up seconds per phase")
    p.add_argument(
        "--phase",
        action="append",
        choices=("batch", "paced", "single"),
        help="run only this phase of the http benchmark (repeatable; default: all)",
    )
    p.add_argument("--batch-connections", type=int, default=d.batch_connections)
    p.add_argument("--paced-connections", type=int, default=d.paced_connections)
    p.add_argument(
        "--paced-rate",
        type=float,
        default=d.paced_records_per_s,
        help="records/s offered in the paced phase",
    )
    p.add_argument("--single-connections", type=int, default=d.single_connections)
    p.add_argument(
        "--queries-rate",
        type=float,
        default=dq.rate,
        help="single-record requests/s offered while queries run",
    )
    p.add_argument(
        "--queries-connections",
        type=int,
        default=dq.connections,
        help="ingest connections while queries run",
    )
    p.add_argument(
        "--query-clients",
        type=int,
        default=dq.query_clients,
        help="query clients (default 0: the server's query.max_concurrent + 1)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the phase without queries that the ingest-under-queries run starts with",
    )
    p.add_argument(
        "--client-workers", type=int, default=d.client_workers, help="load generator processes"
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=d.flush_interval,
        help="RTCLAKE_SPOOL__FLUSH_INTERVAL of the server (seconds)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server, e.g. RTCLAKE_SPOOL__SEGMENT_MAX_BYTES=8388608",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the data dirs in bench/out")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/BENCHMARKS.md")
    p.add_argument("--out-dir", type=Path, default=d.out_dir)
    p.add_argument(
        "--only",
        choices=(
            "http",
            "queries",
            "sora",
            "cli",
            "dashboard",
            "mqtt",
            "grpc",
            "sinks",
            "catalog",
            "scaling",
        ),
        help="run one benchmark (default: all)",
    )
    p.add_argument("--cli-rounds", type=int, default=cli_startup.ROUNDS)
    p.add_argument(
        "--cli-baseline",
        metavar="REV",
        help="also time the commands of this git revision, alternating (cli benchmark)",
    )
    p.add_argument("--sora-lines", type=int, default=sora_import.LINES)
    p.add_argument(
        "--sora-rounds", type=int, default=sora_import.ROUNDS, help="alternating runs per side"
    )
    p.add_argument(
        "--dashboard-connections",
        type=int,
        default=dashboard_queries.CONNECTIONS,
        help="connections in the dashboard benchmark's corpus",
    )
    p.add_argument(
        "--dashboard-hours",
        type=int,
        default=dashboard_queries.HOURS,
        help="hours of reports (one a minute) in the dashboard benchmark's corpus",
    )
    p.add_argument(
        "--dashboard-room",
        type=int,
        default=dashboard_queries.ROOM,
        help="connections per room (session) in the dashboard benchmark's corpus",
    )
    p.add_argument(
        "--dashboard-rounds",
        type=int,
        default=dashboard_queries.ROUNDS,
        help="measured rounds of the dashboard benchmark, after its warm-up",
    )
    p.add_argument("--dashboard-warmup", type=int, default=dashboard_queries.WARMUP)
    p.add_argument(
        "--dashboard-maintained",
        action="store_true",
        help="time the dashboard on the lake after one maintenance run (else as imported)",
    )
    p.add_argument(
        "--dashboard-rebuild",
        action="store_true",
        help="generate and load the dashboard benchmark's corpus again (else cached)",
    )
    dm = mqtt_ingest.Options()
    p.add_argument(
        "--mqtt-messages", type=int, default=dm.messages, help="QoS 1 messages published"
    )
    p.add_argument(
        "--mqtt-publishers", type=int, default=dm.publishers, help="MQTT publisher processes"
    )
    dg = grpc_ingest.Options()
    p.add_argument(
        "--grpc-rounds", type=int, default=dg.rounds, help="alternating rounds per way (grpc)"
    )
    p.add_argument(
        "--grpc-seconds", type=float, default=dg.seconds, help="measured seconds per round (grpc)"
    )
    p.add_argument(
        "--grpc-concurrency",
        type=int,
        default=dg.concurrency,
        help="calls in flight per client process (grpc)",
    )
    ds = sinks.Options()
    p.add_argument("--sink-batches", type=int, default=ds.batches, help="batches (sinks)")
    p.add_argument("--sink-records", type=int, default=ds.records, help="records per batch (sinks)")
    p.add_argument("--sink-rounds", type=int, default=ds.rounds, help="rounds (sinks)")
    a = p.parse_args(argv)
    if min(a.sink_batches, a.sink_records, a.sink_rounds) < 1:
        p.error("--sink-batches, --sink-records and --sink-rounds must be >= 1")
    if min(a.grpc_rounds, a.grpc_concurrency) < 1 or a.grpc_seconds <= 0:
        p.error("--grpc-rounds and --grpc-concurrency must be >= 1, --grpc-seconds > 0")
    if min(a.mqtt_messages, a.mqtt_publishers) < 1:
        p.error("--mqtt-messages and --mqtt-publishers must be >= 1")
    if min(a.dashboard_connections, a.dashboard_hours, a.dashboard_room, a.dashboard_rounds) < 1:
        p.error("--dashboard-connections, -hours, -room and -rounds must be >= 1")
    if (a.duration is not None and a.duration <= 0) or a.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    if a.queries_rate <= 0 or a.queries_connections <= 0 or a.query_clients < 0:
        p.error("--queries-rate and --queries-connections must be > 0, --query-clients >= 0")
    if any("=" not in item for item in a.server_env):
        p.error("--server-env takes NAME=VALUE")
    server_env = tuple((k, v) for k, _, v in (item.partition("=") for item in a.server_env))
    http = http_ingest.Options(
        duration=a.duration or d.duration,
        warmup=a.warmup,
        flush_interval=a.flush_interval,
        batch_connections=a.batch_connections,
        paced_connections=a.paced_connections,
        paced_records_per_s=a.paced_rate,
        single_connections=a.single_connections,
        client_workers=a.client_workers,
        phases=tuple(a.phase or d.phases),
        server_env=server_env,
        keep_data=a.keep_data,
        write_docs=not a.no_docs,
        out_dir=a.out_dir.resolve(),
    )
    queries = ingest_under_queries.Options(
        duration=a.duration or dq.duration,
        warmup=a.warmup,
        flush_interval=a.flush_interval,
        rate=a.queries_rate,
        connections=a.queries_connections,
        client_workers=a.client_workers,
        query_clients=a.query_clients,
        baseline=not a.no_baseline,
        server_env=server_env,
        keep_data=a.keep_data,
        write_docs=not a.no_docs,
        out_dir=a.out_dir.resolve(),
    )
    dashboard = dashboard_queries.Options(
        out_dir=a.out_dir.resolve(),
        connections=a.dashboard_connections,
        hours=a.dashboard_hours,
        room=a.dashboard_room,
        rounds=a.dashboard_rounds,
        warmup=max(0, a.dashboard_warmup),
        rebuild=a.dashboard_rebuild,
        maintained=a.dashboard_maintained,
        write_docs=not a.no_docs,
    )
    mqtt = mqtt_ingest.Options(
        messages=a.mqtt_messages,
        publishers=a.mqtt_publishers,
        flush_interval=a.flush_interval,
        keep_data=a.keep_data,
        write_docs=not a.no_docs,
        out_dir=a.out_dir.resolve(),
    )
    return Plan(
        a.only,
        http,
        queries,
        a.sora_lines,
        a.sora_rounds,
        a.cli_rounds,
        a.cli_baseline,
        dashboard,
        mqtt,
        grpc_ingest.Options(
            rounds=a.grpc_rounds,
            seconds=a.grpc_seconds,
            concurrency=a.grpc_concurrency,
            workers=a.client_workers,
            flush_interval=a.flush_interval,
            server_env=server_env,
            keep_data=a.keep_data,
            write_docs=not a.no_docs,
            out_dir=a.out_dir.resolve(),
        ),
        sinks.Options(
            batches=a.sink_batches,
            records=a.sink_records,
            rounds=a.sink_rounds,
            write_docs=not a.no_docs,
            out_dir=a.out_dir.resolve(),
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    plan = parse(args)
    code = 0
    if plan.only in (None, "http"):
        code = http_ingest.run(plan.http, args)
    if plan.only in (None, "queries"):
        code = ingest_under_queries.run(plan.queries, args) or code
    if plan.only in (None, "sora"):
        verdicts = sora_import.run(
            plan.http.out_dir, plan.http.write_docs, plan.sora_lines, plan.sora_rounds
        )
        code = code or int(not all(v.passed for v in verdicts))
    if plan.only in (None, "cli"):
        cli_startup.run(plan.http.out_dir, plan.http.write_docs, plan.cli_rounds, plan.cli_baseline)
    if plan.only in (None, "dashboard"):
        code = dashboard_queries.run(plan.dashboard, args) or code
    if plan.only in (None, "mqtt"):
        code = mqtt_ingest.run(plan.mqtt, args) or code
    if plan.only in (None, "grpc"):
        code = grpc_ingest.run(plan.grpc, args) or code
    if plan.only in (None, "sinks"):
        code = sinks.run(plan.sinks, args) or code
    if plan.only in (None, "scaling"):
        scaling.run(plan.http.out_dir, plan.http.write_docs)
    if plan.only in (None, "catalog"):
        verdicts = lake_catalog.run(
            plan.http.out_dir, plan.http.write_docs, plan.sora_rounds, plan.sora_lines
        )
        code = code or int(not all(v.passed for v in verdicts))
    return code


if __name__ == "__main__":
    sys.exit(main())
