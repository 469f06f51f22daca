"""``python -m bench``: run the benchmarks, print the tables, update docs/BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import http_ingest, sora_import


def parse(argv: Sequence[str]) -> tuple[http_ingest.Options, str | None, int, int]:
    d = http_ingest.Options()
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--duration", type=float, default=d.duration, help="measured seconds/phase")
    p.add_argument("--warmup", type=float, default=d.warmup, help="warm-up seconds per phase")
    p.add_argument(
        "--phase",
        action="append",
        choices=("batch", "paced", "single"),
        help="run only this phase (repeatable; default: all)",
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
    p.add_argument("--only", choices=("http", "sora"), help="run one benchmark (default: all)")
    p.add_argument("--sora-lines", type=int, default=sora_import.LINES)
    p.add_argument(
        "--sora-rounds", type=int, default=sora_import.ROUNDS, help="alternating runs per side"
    )
    a = p.parse_args(argv)
    if a.duration <= 0 or a.warmup < 0:
        p.error("--duration must be > 0 and --warmup >= 0")
    if any("=" not in item for item in a.server_env):
        p.error("--server-env takes NAME=VALUE")
    opts = http_ingest.Options(
        duration=a.duration,
        warmup=a.warmup,
        flush_interval=a.flush_interval,
        batch_connections=a.batch_connections,
        paced_connections=a.paced_connections,
        paced_records_per_s=a.paced_rate,
        single_connections=a.single_connections,
        client_workers=a.client_workers,
        phases=tuple(a.phase or d.phases),
        server_env=tuple((k, v) for k, _, v in (item.partition("=") for item in a.server_env)),
        keep_data=a.keep_data,
        write_docs=not a.no_docs,
        out_dir=a.out_dir.resolve(),
    )
    return opts, a.only, a.sora_lines, a.sora_rounds


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts, only, sora_lines, sora_rounds = parse(args)
    code = 0
    if only in (None, "http"):
        code = http_ingest.run(opts, args)
    if only in (None, "sora"):
        verdicts = sora_import.run(opts.out_dir, opts.write_docs, sora_lines, sora_rounds)
        code = code or int(not all(v.passed for v in verdicts))
    return code


if __name__ == "__main__":
    sys.exit(main())
