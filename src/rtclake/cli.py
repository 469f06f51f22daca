"""The ``rtclake`` command."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from rtclake.config import Settings, load_settings, masked_dump
from rtclake.errors import ConfigError, QueryError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML or TOML file (default: $RTCLAKE_CONFIG)."),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOption = None) -> None:
    """Start rtclake: HTTP ingest, spool, writer, lake and SQL API in one process."""
    import uvicorn

    from rtclake.logs import configure
    from rtclake.server import create_app
    from rtclake.service import Service

    settings = _settings(config)
    configure(settings.log_level, settings.log_format)
    try:
        service = Service(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(
        create_app(service),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + RTCLAKE_* variables), secrets masked."""
    settings = _settings(config)
    typer.echo(yaml.safe_dump(masked_dump(settings), sort_keys=False), nl=False)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over the lake's tables.")],
    output: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    max_rows: Annotated[
        int | None, typer.Option(help="Row limit (default: query.max_rows).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run SQL over the lake, locally, and print the result."""
    from rtclake.catalog import default_registry
    from rtclake.query import JSON_OPTIONS, QueryEngine, json_default

    settings = _settings(config)
    q = settings.query
    engine = QueryEngine(
        settings.lake_root,
        default_registry(),
        dedup=q.dedup,
        max_rows=max(max_rows or 0, q.max_rows),
        timeout=q.timeout,
        threads=q.threads,
    )
    try:
        result = engine.run(sql, max_rows=max_rows)
    except QueryError as exc:
        typer.echo(f"error ({exc.reason}): {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if output is Format.csv:
        import pyarrow.csv as pacsv

        table = result.table
        pacsv.write_csv(table, sys.stdout.buffer)
    elif output is Format.json:
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows()]
        sys.stdout.buffer.write(
            orjson.dumps(rows, default=json_default, option=JSON_OPTIONS | orjson.OPT_INDENT_2)
            + b"\n"
        )
    else:
        _print_table(result.columns, result.rows())
    if result.truncated:
        typer.echo(f"(truncated to {result.table.num_rows} rows)", err=True)


def _print_table(columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)


def main() -> None:
    app()
