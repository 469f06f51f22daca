"""rtclake: a self-hosted telemetry lake for real-time media and IoT."""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from rtclake.errors import ConfigError, QueryError, SinkError
from rtclake.memory import map_large_allocations
from rtclake.redact import redact

if TYPE_CHECKING:
    from rtclake.config import Settings
    from rtclake.registry import Registry

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _version(value: bool) -> None:
    if value:
        from rtclake import __version__

        typer.echo(f"rtclake {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """rtclake: a self-hosted telemetry lake for real-time media and IoT."""
    map_large_allocations()


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML or TOML file (default: $RTCLAKE_CONFIG)."),
]


def _unusable(exc: OSError, what: str, path: Path) -> None:
    """Exit 1 with one line naming the folder a command cannot write and why (a read-only
    file system, a file in its place, no permission), instead of a traceback."""
    where = f" ({exc.filename})" if exc.filename else ""
    typer.echo(
        f"error: cannot write {what} {path.absolute()}{where}: {exc.strerror or exc}", err=True
    )
    raise typer.Exit(1) from exc


def _check_listen(host: str, port: int) -> None:
    """Exit 3 with one line when the server's address cannot be bound (another program
    holds the port; not an address of this host): uvicorn would say so only after
    rtclake had logged that it started."""
    import socket

    if port == 0:
        return
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in found:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn
                probe.bind(address)
    except OSError as exc:
        why = exc.strerror or str(exc)
        typer.echo(
            f"error: cannot listen on {host}:{port} ({why}); set server.port (--port) or"
            " server.host (--host), or stop what holds it",
            err=True,
        )
        raise typer.Exit(3) from exc


def _settings(config: Path | None) -> tuple[Settings, Registry]:
    """The settings, checked against the registry of installed components (loaded once:
    the entry-point scan is a good part of a short command's start-up)."""
    from rtclake.config import load_settings
    from rtclake.registry import load_registry

    try:
        registry = load_registry()
        return load_settings(config, registry=registry), registry
    except ConfigError as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (server.host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Listen port (server.port).")
    ] = None,
) -> None:
    """Start rtclake: HTTP ingest, spool, writer, lake and SQL API in one process."""
    import uvicorn

    from rtclake.logs import configure
    from rtclake.service import Service
    from rtclake.web.app import create_app

    settings, registry = _settings(config)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    configure(settings.log_level, settings.log_format)
    try:
        service = Service(settings, registry=registry)
        app = create_app(service)
        service.claim()
    except ConfigError as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # a data directory read-only, a file, not ours
        _unusable(exc, "the data directory", settings.data_dir)
    _check_listen(settings.server.host, settings.server.port)
    from rtclake.sources.websocket import server_frame_limit

    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        ws_max_size=server_frame_limit(service.sources),  # sources.*.max_frame_bytes
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        log_config=None,  # uvicorn's lines go through rtclake's renderer (logs.configure)
        access_log=settings.server.access_log,
        timeout_graceful_shutdown=30,
        limit_concurrency=settings.server.max_connections,
    )


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration, secrets masked.

    The file, the RTCLAKE_* variables, and the components on by default, each with its
    type's defaults; folders as they resolve.
    """
    import yaml

    from rtclake.config import masked_dump
    from rtclake.registry import effective_components

    settings, registry = _settings(config)
    shown = masked_dump(settings)
    components = effective_components(settings, registry)
    shown.update(components)
    from rtclake.lake.maintenance import check_retention

    try:  # as rtclake run checks it
        check_retention(settings.lake.maintenance.retention, registry.tables)
    except ConfigError as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from exc
    if any(rule.enabled for rule in settings.alerts.rules.values()):
        # the rules as `rtclake run` checks them: tables, views, columns and sinks named
        from rtclake.alerts import check_rules

        sinks = [*(["lake"] if settings.lake.enabled else []), *components.get("sinks", {})]
        try:
            check_rules(settings.alerts, registry.tables, sinks)
        except ConfigError as exc:
            typer.echo(redact(f"error: {exc}"), err=True)
            raise typer.Exit(2) from exc
    typer.echo(yaml.safe_dump(shown, sort_keys=False), nl=False)


@app.command("import")
def import_(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Files or folders (plain or .gz), spool segments (.wal), or s3://BUCKET/PREFIX."
        ),
    ],
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3 endpoint (MinIO, RustFS, R2, ...).")
    ] = None,
    access_key_id: Annotated[str | None, typer.Option(envvar="AWS_ACCESS_KEY_ID")] = None,
    secret_access_key: Annotated[
        str | None, typer.Option(envvar="AWS_SECRET_ACCESS_KEY", show_default=False)
    ] = None,
    region: Annotated[str | None, typer.Option(envvar="AWS_REGION")] = None,
    path_style: Annotated[bool, typer.Option(help="Path-style S3 addressing.")] = False,
    table: Annotated[
        str | None,
        typer.Option(
            help="Store every file in this table (default: by the file's name; a spool"
            " segment's records go to the tables they were spooled for)."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option(help="On an error, print the traceback too.")] = False,
    config: ConfigOption = None,
) -> None:
    """Import Sora log files, or Kohaku's S3 layout, into the lake.

    Incremental: run it again and only what is new is read (per file and table:
    a file imported before with another --table is read whole). Rotated copies
    (rtc_stats.jsonl.1, .2.gz, -20250725) are recognised by their names and
    read oldest first, S3 objects in the order they were written.
    A spool segment the writer set aside (DATA_DIR/spool/quarantine/*.wal)
    is stored with the record ids the writer gives, in the sinks that do
    not hold it yet: import it once its cause is fixed.
    """
    from rtclake.logs import configure

    settings, registry = _settings(config)
    configure(settings.log_level, settings.log_format)
    if table is not None and table not in registry.tables:
        known = ", ".join(registry.tables.names())
        typer.echo(f"error: --table {table}: no such table (known: {known})", err=True)
        raise typer.Exit(2)
    s3 = {
        "endpoint_url": endpoint_url, "access_key_id": access_key_id,
        "secret_access_key": secret_access_key, "region": region, "path_style": path_style,
    }  # fmt: skip
    _import(settings, registry, paths, table=table, debug=debug, s3=s3)


def _import(
    settings: Settings,
    registry: Registry,
    paths: list[str],
    *,
    table: str | None = None,
    debug: bool = False,
    s3: dict[str, Any] | None = None,
) -> None:
    """Import files, folders or ``SCHEME://`` URLs into the lake (``rtclake import``), with
    a progress bar and a summary line; on an error, one line (the traceback with
    ``debug``) and exit 1. Takes no lock: it works beside ``rtclake run``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from rtclake.delivery import Delivery
    from rtclake.importer import Importer, ImportStats
    from rtclake.metrics import Metrics
    from rtclake.service import build_sinks

    for target in paths:
        if "://" not in target and not Path(target).exists():
            typer.echo(f"error: {target}: no such file or folder", err=True)
            raise typer.Exit(1)
    metrics = Metrics()
    delivery = Delivery(build_sinks(settings, registry, metrics), metrics, registry.tables)
    importer = Importer(
        registry.tables,
        delivery,
        settings.data_dir / "import-state.json",
        node=settings.node,
        table_for=(lambda _name: table) if table else registry.table_for_file,
    )
    stats = ImportStats()
    columns = (
        TextColumn("[bold]importing"),
        BarColumn(bar_width=None),
        TextColumn("{task.fields[rows]:,} rows  {task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("import", total=None, rows=0, rate=0.0)

        def show(rows: int, _bytes: int) -> None:
            rate = rows / max(time.perf_counter() - started, 1e-9)
            progress.update(task, rows=rows, rate=rate)

        stats.on_progress = show
        try:
            remote = []
            for target in paths:
                if "://" in target:
                    scheme = target.partition("://")[0]
                    run_import = registry.importers.get(scheme)
                    if run_import is None:
                        known = ", ".join(f"{s}://" for s in sorted(registry.importers))
                        raise ValueError(f"{target}: no importer for {scheme}:// (known: {known})")
                    remote.append((target, run_import))
            # the files and folders named are read together, so each log's files are read
            # oldest first whatever order they were named in (a shell's rtc_stats.jsonl*
            # names rtc_stats.jsonl first)
            local = [Path(target) for target in paths if "://" not in target]
            if local:
                importer.import_paths(local, stats)
            for target, run_import in remote:
                run_import(target, importer, stats, **(s3 or {}))
        except Exception as exc:  # one line with the cause; the traceback with --debug
            if debug:
                raise
            text = (
                str(exc)
                if isinstance(exc, OSError | ValueError | SinkError)
                else redact(f"{type(exc).__name__}: {exc}")
            )
            typer.echo(f"error: {text.splitlines()[0] if text else type(exc).__name__}",
                       err=True)  # fmt: skip
            raise typer.Exit(1) from exc
        finally:
            importer.close()
            delivery.close()
    stats.seconds = time.perf_counter() - started
    typer.echo(
        f"imported {stats.rows:,} rows from {stats.files} files in {stats.seconds:.1f} s"
        f" ({stats.rows_per_second:,.0f} rows/s); {stats.bad_lines} bad lines skipped,"
        f" {stats.skipped_files} files not recognised"
        + (f", {len(stats.unreadable)} files unreadable" if stats.unreadable else "")
    )
    if stats.unreadable:  # the others were imported; a script must still hear of these
        for why in stats.unreadable:
            typer.echo(f"error: {why}", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    folder: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to write (default: DATA_DIR/demo), a folder per demo."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated ids and values.")] = 1,
    minutes: Annotated[
        int, typer.Option(min=5, max=120, help="Minutes of data (about 4 MB each), up to --now.")
    ] = 30,
    now: Annotated[
        str | None,
        typer.Option(help="End of the data, RFC 3339 (default: the current time, UTC)."),
    ] = None,
    no_import: Annotated[bool, typer.Option("--no-import", help="Write the files only.")] = False,
    config: ConfigOption = None,
) -> None:
    """Write realistic generated logs and import them: every page gets data.

    Sora: rtc_stats.jsonl (a getStats report every 5 s per connection),
    session_webhook.jsonl and connection.jsonl of four channels, with clean
    and troubled connections (loss, RTT, jitter, bandwidth and CPU limits,
    freezes, low fps, a TURN relay, a stalled stream, an ICE restart, a
    failure, a reconnect). manifest.json beside them names each connection
    and what it shows.

    The data covers the --minutes up to --now (default: the current time).
    The same --seed and --now write the same files, which the import then
    skips: nothing is stored twice. A later run (another now) writes a new
    set of calls with new ids, and the import adds them beside the earlier
    ones. It works while `rtclake run` serves the same data directory (the
    import takes no lock).
    """
    from datetime import UTC, datetime

    from rtclake.logs import configure

    settings, registry = _settings(config)
    configure(settings.log_level, settings.log_format)
    if not registry.demos:
        typer.echo("error: no installed integration has a demo", err=True)
        raise typer.Exit(2)
    try:
        end = datetime.fromisoformat(now) if now else datetime.now(UTC).replace(microsecond=0)
    except ValueError as exc:
        typer.echo(f"error: --now {now}: not an RFC 3339 time ({exc})", err=True)
        raise typer.Exit(2) from exc
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    root = folder if folder is not None else settings.data_dir / "demo"
    written: list[str] = []
    for name, write in registry.demos.items():
        target = root / name
        try:
            manifest = write(target, now=end, seed=seed, minutes=minutes)
            manifest_json = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            (target / "manifest.json").write_bytes(manifest_json)
        except OSError as exc:
            _unusable(exc, "the demo's folder", target)
        files: dict[str, int] = manifest["files"]
        written += [str(target / file) for file in files]
        listed = ", ".join(f"{file} ({lines:,} lines)" for file, lines in files.items())
        typer.echo(f"{name}: wrote {listed} and manifest.json to {target}")
    stamp = end.astimezone(UTC).isoformat().replace("+00:00", "Z")
    typer.echo(f"(--seed {seed} --now {stamp} writes the same files again)")
    if no_import:
        typer.echo(f"not imported (--no-import); import with: rtclake import {root}")
        return
    _import(settings, registry, written)
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    typer.echo(
        f"open http://{host}:{settings.server.port}/ while `rtclake run` serves this data"
        f" directory ({settings.data_dir.absolute()}), and look at the last {minutes}"
        " minutes; or try:\n"
        '  rtclake query "SELECT channel_id, count(DISTINCT connection_id) AS connections'
        ' FROM rtc_stats GROUP BY 1"'
    )


def _require_lake(settings: Settings) -> None:
    """Exit with an error naming where the lake was looked for, when a local lake has no
    folder: nothing was stored there (a command run from another folder, most often)."""
    root = settings.lake_root
    if "://" in root or Path(root).is_dir():
        return
    typer.echo(
        f"error: no lake at {Path(root).absolute()}: nothing was stored there (the data"
        f" directory is {settings.data_dir.absolute()}, relative to the current folder"
        " unless absolute); run from the folder of `rtclake run`, or set"
        " RTCLAKE_DATA_DIR, lake.root or --config",
        err=True,
    )
    raise typer.Exit(1)


@app.command()
def files(
    table: Annotated[str, typer.Argument(help="a lake table, e.g. rtc_stats")],
    config: ConfigOption = None,
) -> None:
    """Print the live data files of TABLE in the lake's current snapshot, one per line:
    what Spark, Trino or ClickHouse read (never a glob: merges leave replaced files behind
    until they are cleaned up)."""
    from rtclake.lake.query import QueryEngine

    settings, registry = _settings(config)
    if table not in registry.tables:
        tables = ", ".join(registry.tables.names())
        if table in registry.tables.views:  # a view reads tables: it has no files
            typer.echo(f"{table!r} is a view, with no files of its own; tables: {tables}",
                       err=True)  # fmt: skip
        else:
            typer.echo(f"no table {table!r}; tables: {tables}", err=True)
        raise typer.Exit(2)
    _require_lake(settings)  # else an empty list, as if the table had no files
    engine = QueryEngine.for_settings(settings, registry.tables)
    try:
        for path in engine.lake_files(registry.tables[table]):
            typer.echo(path)
    finally:
        engine.close()


@app.command()
def tables(config: ConfigOption = None) -> None:
    """List the lake's tables: rows stored, columns and their types."""
    import textwrap

    from rtclake.lake.query import QueryEngine

    settings, registry = _settings(config)
    root = settings.lake_root
    engine = None
    if "://" in root or Path(root).is_dir():
        engine = QueryEngine.for_settings(settings, registry.tables)
    typer.echo(f"lake: {root}" + ("" if engine else " (nothing stored yet)"))
    try:
        for table in registry.tables:
            rows = "0 rows"
            if engine is not None:
                try:
                    result = engine.run(f'SELECT count(*) FROM "{table.name}"')
                    rows = f"{result.rows()[0][0]:,} rows"
                except QueryError as exc:
                    rows = f"rows unknown ({exc.reason})"
            columns = ", ".join(f"{f.name} {f.type}" for f in table.schema)
            typer.echo(f"\n{table.name}: {rows}")
            typer.echo(textwrap.fill(columns, 96, initial_indent="  ", subsequent_indent="  "))
    finally:
        if engine is not None:
            engine.close()


@app.command()
def maintain(config: ConfigOption = None) -> None:
    """Maintain the lake now: retention, merging, expiring snapshots, cleanup.

    What `rtclake run` does every lake.maintenance.interval. One node at a
    time: while another node (or `rtclake run` here) maintains the lake,
    nothing is done and the exit status is 3. A failed step: status 1.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rtclake.lake.catalog import Catalog
    from rtclake.lake.maintenance import MAINTENANCE_TMP, Maintenance
    from rtclake.lake.storage import lake_storage
    from rtclake.lake.urls import parse_url
    from rtclake.logs import configure

    settings, registry = _settings(config)
    configure(settings.log_level, settings.log_format)
    root = settings.lake_root
    if "://" not in root and not Path(root).is_dir():
        typer.echo(f"error: no lake at {Path(root).absolute()}: nothing to maintain", err=True)
        raise typer.Exit(1)
    if parse_url(settings.lake_catalog).kind == "hive":
        from rtclake.service import HIVE_NO_MAINTENANCE

        typer.echo(f"error: {HIVE_NO_MAINTENANCE}", err=True)
        raise typer.Exit(2)
    options = settings.lake.maintenance
    try:
        catalog = Catalog(settings.lake_catalog, lake_storage(settings), registry.tables)
        maintenance = Maintenance(
            catalog, options, node=settings.node, threads=None,
            temp_directory=settings.data_dir / MAINTENANCE_TMP,
        )  # fmt: skip
        report = maintenance.run()
    except ConfigError as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:  # the catalog or its lock unreachable: one line
        text = str(exc).strip().splitlines()
        typer.echo(redact(f"error: {type(exc).__name__}: {text[0] if text else ''}"), err=True)
        raise typer.Exit(1) from exc
    if report is None:
        holder = f" ({maintenance.holder})" if maintenance.holder else ""
        typer.echo(
            f"another node holds the maintenance lock{holder}: it is maintaining the lake;"
            " nothing done",
            err=True,
        )
        raise typer.Exit(3)
    # a PostgreSQL URL may hold a password: not printed
    where = str(catalog.url) if catalog.url.kind == "sqlite" else "the PostgreSQL catalog"
    table = Table(title=f"maintenance of {where} by {report.node}")
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("changes")
    for step in report.steps:
        table.add_row(step.step, f"{step.seconds:.2f}", Text(redact(step.summary())))
    Console().print(table)
    if not report.ok:
        raise typer.Exit(1)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over the lake's tables.")],
    output: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    max_rows: Annotated[
        int | None, typer.Option(min=1, help="Row limit (default: query.max_rows).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run SQL over the lake, locally, and print the result."""
    from rtclake.lake.query import QueryEngine
    from rtclake.lake.urls import parse_url
    from rtclake.results import JSON_OPTIONS, json_rows, text_rows, write_csv

    settings, registry = _settings(config)
    _require_lake(settings)
    url = parse_url(settings.lake_catalog)
    engine = QueryEngine.for_settings(
        settings, registry.tables, max_rows=max(max_rows or 0, settings.query.max_rows)
    )
    try:
        result = engine.run(sql, max_rows=max_rows)
    except QueryError as exc:
        typer.echo(f"error ({exc.reason}): {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.close()
    if url.kind == "sqlite" and not Path(url.target).exists():
        typer.echo(
            f"note: the lake's catalog {url} does not exist: nothing was stored through it,"
            " so every table is empty. A lake written by other hosts: set lake.catalog to"
            " theirs (`rtclake config` shows the one in use); one written before the"
            " catalog: lake.catalog: hive, or `rtclake migrate`",
            err=True,
        )
    if output is Format.csv:
        write_csv(result.table, result.types, sys.stdout)
    elif output is Format.json:
        rows = json_rows(result.table, result.types)
        objects = [dict(zip(result.columns, row, strict=True)) for row in rows]
        sys.stdout.write(orjson.dumps(objects, option=JSON_OPTIONS | orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        _print_table(result.columns, text_rows(result.table, result.types))
    if result.truncated:
        typer.echo(f"(truncated to {result.table.num_rows} rows)", err=True)


def _print_table(columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: "[x]" is a value, not markup
    Console().print(table)


@app.command()
def migrate(
    source: Annotated[
        str | None,
        typer.Option("--from", help="Root of the lake of the old layout (default: lake.root)."),
    ] = None,
    delete: Annotated[
        bool, typer.Option("--delete", help="Remove the old files once they are committed.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Move a lake of the old layout (TABLE/date=D/*.parquet) into the catalog.

    Each date of each table is copied in one transaction with its ledger row: run
    it again after a stop and it goes on where it stopped, storing nothing twice.
    Repeated records are stored once, and records the catalog already holds are
    not stored again. The old files stay until --delete removes them, once every
    date is committed.
    """
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from rtclake.lake.catalog import Catalog, parse_url
    from rtclake.lake.maintenance import MAINTENANCE_TMP
    from rtclake.lake.migrate import (
        MigrationError,
        PartitionResult,
        print_report,
        source_storage,
        threads_within,
    )
    from rtclake.lake.migrate import migrate as run_migration
    from rtclake.lake.storage import lake_storage

    settings, registry = _settings(config)
    try:
        if parse_url(settings.lake_catalog).kind == "hive":
            raise ConfigError(
                "lake.catalog is hive, which has no catalog to migrate into: set it to"
                " sqlite:PATH or postgres://USER@HOST/DB, or leave it unset (the default)"
            )
        catalog = Catalog(settings.lake_catalog, lake_storage(settings), registry.tables)
        old = source_storage(settings, source)
        if not old.exists():
            typer.echo(f"error: no lake at {old.root}", err=True)
            raise typer.Exit(1)
        with Progress(
            TextColumn("[bold]migrating[/] {task.fields[done]}"), TimeElapsedColumn()
        ) as progress:
            task = progress.add_task("migrate", total=None, done="")

            def show(result: PartitionResult) -> None:
                done = f"{result.table} {result.day}: {result.rows:,} rows"
                progress.update(task, done=done if result.migrated else f"{done} (skipped)")

            limit = int(settings.lake.maintenance.memory_limit)
            report = run_migration(
                old, catalog, node=settings.node, delete=delete, progress=show,
                memory_limit=limit, threads=threads_within(limit),
                temp_directory=settings.data_dir / MAINTENANCE_TMP,
            )  # fmt: skip
    except ConfigError as exc:
        typer.echo(redact(f"error: {exc}"), err=True)
        raise typer.Exit(2) from exc
    except MigrationError as exc:
        typer.echo(
            redact(f"error: {exc}; the dates before it are committed: run rtclake migrate"
                   " again to go on from there"),
            err=True,
        )  # fmt: skip
        raise typer.Exit(1) from exc
    except OSError as exc:  # a data directory read-only or a file; a folder not readable
        data = settings.data_dir.absolute()
        if exc.filename is None or Path(exc.filename).absolute().is_relative_to(data):
            _unusable(exc, "the data directory", settings.data_dir)
        typer.echo(redact(f"error: {exc.filename}: {exc.strerror or exc}"), err=True)
        raise typer.Exit(1) from exc
    print_report(report)


def main() -> None:
    app()
