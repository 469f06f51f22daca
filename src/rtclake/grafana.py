"""Grafana over the lake: the provisioning in ``deploy/grafana/``, generated from rtclake's
own definitions by ``python -m rtclake.grafana [DIRECTORY]``.

- ``provisioning/datasources/rtclake.yaml``: a data source of MotherDuck's DuckDB plugin
  (``motherduck-duckdb-datasource``, what Kohaku uses) with an in-memory database whose
  init SQL (:func:`init_sql`) creates the views every rtclake query connection has: one
  per table, made by :meth:`rtclake.lake.query.QueryEngine.view_sql` itself, then the
  registry's views (``rtc_rates``, ``connection_quality``, ...) in their order. So the
  views cannot diverge from rtclake's; tests/test_grafana.py fails when the committed file
  is stale.
- ``provisioning/dashboards/rtclake.yaml``: Grafana's provider of the dashboards below.
- ``dashboards/UID.json``: the dashboards integrations register
  (:meth:`rtclake.registry.Registry.add_dashboard`), built with the helpers below.
- ``empty-lake/main/TABLE/date=1970-01-01/empty.parquet``: one file without rows per
  table, with the table's columns.

Why the empty files. The Grafana container mounts rtclake's data volume read-only at
``/var/lib/rtclake`` (the lake at ``/var/lib/rtclake/lake``) and ``empty-lake/`` at
``/var/lib/rtclake-empty/lake``. DuckDB refuses a glob that matches no file (when a view
is created and whenever it is read), and the plugin runs the init SQL once, when it
first connects: a table without files yet would break the init SQL, and a view made
empty instead would stay empty after rtclake writes the table's first file. Each view
reads ``/var/lib/rtclake*/lake/main/TABLE/date=*/*.parquet`` (the catalog's layout),
which always matches the empty file, so every view exists, has every declared column, and
sees new files at each query.

The plugin's DuckDB cannot read the lake's catalog (that needs the DuckLake and SQLite
extensions, which it would download), so it reads the folders. A merge, a day's sort and
retention leave the files they replaced there until the snapshots that knew them expire
and cleanup deletes them (``lake.maintenance.expire_after`` and ``cleanup_after``: a day
or two by default); maintenance lists them after each of its steps
(``ROOT/rtclake_replaced.parquet``, :data:`layout.REPLACED`), and the derived tables'
views, whose rows are unique, leave the listed files out (they had counted such rows
twice). The other views hide repeated rows by record id, a replaced file's among them,
as rtclake's views did before the catalog (:meth:`QueryEngine.view_sql` of a ``hive``
engine); a partition that retention deleted shows in those until its files are cleaned
up. Between a merge's commit and its list being written (moments), the derived tables'
replaced rows show twice.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from rtclake.lake import layout
from rtclake.lake.query import QueryEngine
from rtclake.registry import Registry, load_registry
from rtclake.tables import Table, TableRegistry

PLUGIN = "motherduck-duckdb-datasource"
DATASOURCE_UID = "rtclake"
DATASOURCE = {"type": PLUGIN, "uid": DATASOURCE_UID}
DATA_DIR = "/var/lib/rtclake"  # rtclake's data volume in the Grafana container (read-only)
EMPTY_LAKE = "empty-lake"  # under deploy/grafana/, mounted at DATA_DIR + "-empty/lake"
EMPTY_DATE = "1970-01-01"
DATASOURCE_FILE = "provisioning/datasources/rtclake.yaml"
PROVIDER_FILE = "provisioning/dashboards/rtclake.yaml"
DASHBOARDS = "dashboards"


# -- the data source ------------------------------------------------------------------------


#: The files a merge, a sort or retention replaced, still in the folders until cleanup
#: (written by maintenance; the empty lake's list is empty): the views leave them out.
REPLACED_FILES = (
    f"SELECT '{DATA_DIR}/lake/' || path FROM read_parquet('{DATA_DIR}*/lake/{layout.REPLACED}')"
)


def table_glob(table: Table) -> str:
    """The files of ``table`` in the lake and in the empty lake (see the module's doc)."""
    return f"{DATA_DIR}*/lake/main/{layout.partition(table.name, '*')}/*{layout.SUFFIX}"


def init_sql(tables: TableRegistry) -> str:
    """The statements that give the plugin's DuckDB rtclake's views over the lake."""
    engine = QueryEngine(f"{DATA_DIR}/lake", tables, catalog="hive")
    statements = [
        "-- times in UTC, as in rtclake's own queries\nSET GLOBAL TimeZone = 'UTC'",
        "-- lake files never change once written: keep their footers between panels\n"
        "SET GLOBAL parquet_metadata_cache = true",
    ]
    for table in tables:
        # view_sql reads a list of paths; a glob in it is expanded at each query. The
        # columns are named: the empty lake's file holds each one (write_empty_lake).
        columns = [*table.stored_schema.names, "date"]
        # the derived tables' rows are unique, so a replaced file's rows would count twice:
        # their views leave the listed files out (the others hide repeated record ids,
        # the replaced files' too; leaving those out as well cost every panel ~1 ms)
        replaced = REPLACED_FILES if table.unique_rows else None
        sql = engine.view_sql(table, [table_glob(table)], columns, left_out=replaced)
        statements.append(f"-- {table.name}\n{sql}")
    for view in tables.views.values():
        statements.append(f'-- {view.name}\nCREATE OR REPLACE VIEW "{view.name}" AS {view.sql}')
    text = ";\n\n".join(s.strip() for s in statements) + ";\n"
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def datasource_yaml(tables: TableRegistry) -> str:
    """``provisioning/datasources/rtclake.yaml``."""
    sql = "".join(f"        {line}\n" if line else "\n" for line in init_sql(tables).splitlines())
    return (
        "# Generated by `python -m rtclake.grafana` from rtclake's tables and views: do not\n"
        "# edit (tests/test_grafana.py fails when it is stale). The in-memory DuckDB of\n"
        f"# MotherDuck's plugin gets a view per lake table over {DATA_DIR}*/lake (rtclake's\n"
        "# data volume and deploy/grafana/empty-lake, both mounted read-only), then the\n"
        "# derived views, as every rtclake query connection has them.\n"
        "apiVersion: 1\n"
        "datasources:\n"
        "  - name: rtclake\n"
        f"    uid: {DATASOURCE_UID}\n"
        f"    type: {PLUGIN}\n"
        "    access: proxy\n"
        "    isDefault: true\n"
        "    editable: false\n"
        "    jsonData:\n"
        '      path: ""\n'
        "      initSql: |\n"
        f"{sql}"
    )


# -- the empty lake -------------------------------------------------------------------------


def empty_file(root: Path, table: Table) -> Path:
    return root / "main" / layout.partition(table.name, EMPTY_DATE) / layout.file_name("empty")


def _is_current(path: Path, table: Table) -> bool:
    return path.is_file() and pq.read_schema(path).remove_metadata().equals(table.stored_schema)


def stale_empty_files(root: Path, tables: TableRegistry) -> list[str]:
    """What differs between ``root`` and an empty lake of ``tables`` (nothing: [])."""
    problems = [
        f"{empty_file(root, table)} is missing or lacks the columns of table {table.name}"
        for table in tables
        if not _is_current(empty_file(root, table), table)
    ]
    if not (root / layout.REPLACED).is_file():
        problems.append(f"{root / layout.REPLACED} is missing")
    if root.is_dir():
        problems += [
            f"{p} is not main/" for p in root.iterdir() if p.name not in ("main", layout.REPLACED)
        ]
    if (root / "main").is_dir():
        problems += [
            f"{p} is no table's" for p in (root / "main").iterdir() if p.name not in tables
        ]
    return problems


def write_empty_lake(root: Path, tables: TableRegistry) -> None:
    """An empty Parquet file per table under ``root``; files still current are kept as
    they are (their bytes name the writer's version), folders of unknown tables removed."""
    for table in tables:
        path = empty_file(root, table)
        if not _is_current(path, table):
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.stored_schema.empty_table(), path)
    replaced = root / layout.REPLACED
    if not replaced.is_file():
        pq.write_table(pa.table({"path": pa.array([], pa.string())}), replaced)
    for folder in root.iterdir():
        if folder.name not in ("main", layout.REPLACED):
            shutil.rmtree(folder)
    for folder in (root / "main").iterdir():
        if folder.name not in tables:
            shutil.rmtree(folder)


# -- dashboards -----------------------------------------------------------------------------
# Panels are dicts of Grafana's dashboard JSON model; ``dashboard`` lays them out in rows
# of Grafana's 24 columns. Queries use the plugin's macros ($__timeFilter(column),
# $__timeFrom(), $__timeTo()), ${__interval_ms:raw} and variables as ${name:sqlstring}
# (a quoted SQL literal, in panels and variable queries alike).

Panel = dict[str, Any]

SCORE_THRESHOLDS = {
    "mode": "absolute",
    "steps": [
        {"color": "red", "value": None},
        {"color": "orange", "value": 3},
        {"color": "green", "value": 4},
    ],
}


def target(sql: str, fmt: str) -> dict[str, Any]:
    """A query of the DuckDB data source (``fmt``: ``time_series`` or ``table``)."""
    return {
        "refId": "A",
        "datasource": DATASOURCE,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": sql.strip(),
    }


def _panel(
    kind: str,
    title: str,
    sql: str,
    fmt: str,
    *,
    description: str,
    width: int,
    height: int,
    defaults: dict[str, Any],
    options: dict[str, Any],
    overrides: Sequence[dict[str, Any]] = (),
    interval: str | None = None,
) -> Panel:
    panel: Panel = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "targets": [target(sql, fmt)],
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options,
    }
    if interval:
        panel["interval"] = interval  # the smallest $__interval_ms Grafana passes
    return panel


def timeseries(
    title: str,
    sql: str,
    *,
    unit: str = "short",
    legend: str | None = None,
    description: str = "",
    stack: str | None = None,
    thresholds: dict[str, Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    interval: str | None = None,
    width: int = 12,
    height: int = 8,
) -> Panel:
    """A time series panel. ``sql`` returns ``time`` first, then numbers; text columns
    label the series (the data source turns long rows into one series per label).
    ``legend`` is a display name such as ``${__field.labels.stream}``; ``stack``
    ``normal`` or ``percent``."""
    custom: dict[str, Any] = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "auto",
        "spanNulls": 180_000,  # a line crosses up to three missed reports
    }
    if stack:
        custom["stacking"] = {"mode": stack, "group": "A"}
        custom["fillOpacity"] = 60
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if legend:
        defaults["displayName"] = legend
    if thresholds:
        defaults["thresholds"] = thresholds
        custom["thresholdsStyle"] = {"mode": "line"}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(
        "timeseries", title, sql, "time_series", description=description, width=width,
        height=height, defaults=defaults, options=options, interval=interval,
    )  # fmt: skip


def stat(
    title: str,
    sql: str,
    *,
    fmt: str = "table",
    unit: str = "short",
    calc: str = "lastNotNull",
    text: bool = False,
    decimals: int | None = None,
    thresholds: dict[str, Any] | None = None,
    description: str = "",
    interval: str | None = None,
    width: int = 4,
    height: int = 4,
) -> Panel:
    """A single value: ``calc`` over the rows (a sparkline when ``fmt`` is
    ``time_series``); ``text`` shows text columns too."""
    defaults: dict[str, Any] = {"unit": unit}
    if decimals is not None:
        defaults["decimals"] = decimals
    if thresholds:
        defaults["thresholds"] = thresholds
        defaults["color"] = {"mode": "thresholds"}
    options = {
        "reduceOptions": {"calcs": [calc], "fields": "/.*/" if text else "", "values": False},
        "colorMode": "value" if thresholds else "none",
        "graphMode": "area" if fmt == "time_series" else "none",
        "textMode": "value_and_name" if text else "auto",
        "justifyMode": "auto",
        "orientation": "auto",
    }
    return _panel(
        "stat", title, sql, fmt, description=description, width=width, height=height,
        defaults=defaults, options=options, interval=interval,
    )  # fmt: skip


def table(
    title: str,
    sql: str,
    *,
    links: dict[str, str] | None = None,
    units: dict[str, str] | None = None,
    description: str = "",
    width: int = 24,
    height: int = 8,
) -> Panel:
    """A table; ``links`` maps a column to the URL its cells link to, ``units`` a column
    to its unit."""
    overrides = [
        {
            "matcher": {"id": "byName", "options": column},
            "properties": [{"id": "links", "value": [{"title": title, "url": url}]}],
        }
        for column, url in (links or {}).items()
    ]
    overrides += [
        {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "unit", "value": u}]}
        for column, u in (units or {}).items()
    ]
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    return _panel(
        "table", title, sql, "table", description=description, width=width, height=height,
        defaults={}, options=options, overrides=overrides,
    )  # fmt: skip


def state_timeline(
    title: str, sql: str, *, description: str = "", width: int = 24, height: int = 6
) -> Panel:
    """States over time: ``sql`` returns ``time`` first, then one text column per row of
    the timeline."""
    options = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left"}
    return _panel(
        "state-timeline", title, sql, "table", description=description, width=width,
        height=height, defaults={"color": {"mode": "palette-classic"}}, options=options,
    )  # fmt: skip


def row(title: str) -> Panel:
    """A row heading the panels after it."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24}}


def variable(name: str, label: str, sql: str) -> dict[str, Any]:
    """A variable whose options ``sql`` selects (one column, or ``__value`` and
    ``__text``), refreshed when the time range changes."""
    sql = sql.strip()
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "sort": 0,
        "multi": False,
        "includeAll": False,
        "current": {},
        "options": [],
        "regex": "",
    }


def dashboard(
    uid: str,
    title: str,
    panels: Iterable[Panel],
    *,
    description: str,
    variables: Sequence[dict[str, Any]] = (),
    tags: Sequence[str] = ("rtclake",),
) -> dict[str, Any]:
    """A dashboard; panels are placed left to right, a new line when one does not fit."""
    placed: list[Panel] = []
    x = y = line_height = 0
    for number, panel in enumerate(panels, 1):
        width, height = panel["gridPos"]["w"], panel["gridPos"].get("h", 1)
        if x + width > 24 or panel["type"] == "row":
            x, y, line_height = 0, y + line_height, 0
        placed.append({**panel, "id": number, "gridPos": {"x": x, "y": y, "w": width, "h": height}})
        x, line_height = x + width, max(line_height, height)
        if panel["type"] == "row":
            x, y, line_height = 0, y + height, 0
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": list(tags),
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "timezone": "browser",
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "links": [
            {
                "type": "dashboards",
                "title": "rtclake",
                "tags": ["rtclake"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {"list": []},
        "templating": {"list": list(variables)},
        "panels": placed,
    }


def dashboard_json(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


# -- running the dashboards' queries (tests, benchmarks) ------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+):(\w+)\}")
_TIME_FILTER = re.compile(r"\$__timeFilter\(([^()]*)\)")


def interpolate(
    sql: str, variables: Mapping[str, str], *, time_from: str, time_to: str, interval_ms: int
) -> str:
    """``sql`` as DuckDB gets it, for the time range ``time_from`` to ``time_to`` (RFC 3339,
    as the plugin formats them) and Grafana's ``interval_ms``.

    Grafana's front end replaces variables (the dashboards name a format, so panels and
    variable queries get the same text: ``sqlstring`` quotes a value as an SQL literal,
    ``raw`` leaves it); the plugin's back end then replaces its macros
    ($__timeFilter(column), $__timeFrom(), $__timeTo(); grafana-plugin-sdk-go's sqlutil and
    the plugin's own). Raises ValueError for a variable or macro this does not know."""
    known = {**variables, "__interval_ms": str(interval_ms)}

    def value(match: re.Match[str]) -> str:
        name, fmt = match[1], match[2]
        if name not in known:
            raise ValueError(f"unknown variable {name}")
        if fmt == "sqlstring":
            return "'" + known[name].replace("'", "''") + "'"
        if fmt != "raw" or name != "__interval_ms":
            raise ValueError(f"${{{name}:{fmt}}}: use :sqlstring")
        return known[name]

    sql = _VARIABLE.sub(value, sql)
    sql = _TIME_FILTER.sub(lambda m: f"{m[1]} >= '{time_from}' AND {m[1]} <= '{time_to}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{time_from}'").replace("$__timeTo()", f"'{time_to}'")
    if "$" in sql:
        raise ValueError(f"a variable or macro this (and maybe the plugin) lacks:\n{sql}")
    return sql


def panels(board: Mapping[str, Any]) -> Iterator[Panel]:
    """Every panel of a dashboard, those inside collapsed rows too; rows themselves are not
    panels."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


class Query(NamedTuple):
    """One query of a dashboard: a variable's (``kind`` "variable") or a panel's."""

    what: str  # "variable NAME", or the panel's title
    kind: str  # "variable", or the panel's type
    fmt: str  # "table" or "time_series"
    sql: str
    interval: str | None  # the panel's smallest $__interval_ms ("2m"), if it sets one


def queries(board: Mapping[str, Any]) -> list[Query]:
    """Every query of a dashboard: its variables' in order, then its panels'."""
    found = [
        Query(f"variable {var['name']}", "variable", "table", var["query"], None)
        for var in board["templating"]["list"]
    ]
    for panel in panels(board):
        for query in panel["targets"]:
            found.append(Query(panel["title"], panel["type"], query["format"], query["rawSql"],
                               panel.get("interval")))  # fmt: skip
    return found


def plugin_duckdb(init: str, var_lib: Path) -> duckdb.DuckDBPyConnection:
    """What the plugin makes of a data source with ``init`` as its init SQL (in-memory),
    with ``var_lib`` as the Grafana container's /var/lib: rtclake's data volume at
    ``var_lib/rtclake`` (the lake in its ``lake``), the empty lake at
    ``var_lib/rtclake-empty/lake`` (:func:`write_empty_lake`)."""
    con = duckdb.connect()
    try:
        con.execute(init.replace(DATA_DIR, str(var_lib / "rtclake")))
    except BaseException:
        con.close()
        raise
    return con


# -- writing --------------------------------------------------------------------------------


def provider_yaml() -> str:
    """``provisioning/dashboards/rtclake.yaml``: Grafana's file provider of the
    dashboards below, where ``deploy/compose.yaml`` mounts them."""
    return (
        "# Generated by `python -m rtclake.grafana`: do not edit. The dashboards it writes to\n"
        f"# deploy/grafana/{DASHBOARDS}/, which deploy/compose.yaml mounts at\n"
        "# /etc/grafana/dashboards/rtclake (in the folder rtclake). Regenerated files are\n"
        "# picked up within a minute.\n"
        "apiVersion: 1\n"
        "providers:\n"
        "  - name: rtclake\n"
        "    folder: rtclake\n"
        "    type: file\n"
        "    disableDeletion: true\n"
        "    allowUiUpdates: false\n"
        "    updateIntervalSeconds: 60\n"
        "    options:\n"
        "      path: /etc/grafana/dashboards/rtclake\n"
    )


def render(registry: Registry) -> dict[str, str]:
    """Every generated text file, by its path under ``deploy/grafana/``."""
    files = {DATASOURCE_FILE: datasource_yaml(registry.tables), PROVIDER_FILE: provider_yaml()}
    for uid, build in registry.dashboards.items():
        files[f"{DASHBOARDS}/{uid}.json"] = dashboard_json(build())
    return files


def write(directory: Path, registry: Registry) -> None:
    """Write the provisioning into ``directory`` (``deploy/grafana``); dashboards no
    integration registers any more are removed."""
    files = render(registry)
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path in (directory / DASHBOARDS).glob("*.json"):
        if f"{DASHBOARDS}/{path.name}" not in files:
            path.unlink()
    write_empty_lake(directory / EMPTY_LAKE, registry.tables)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rtclake.grafana",
        description="Write Grafana's provisioning (data source, dashboards, empty lake).",
    )
    parser.add_argument("directory", nargs="?", default="deploy/grafana", type=Path)
    directory: Path = parser.parse_args(argv).directory
    write(directory, load_registry())
    sys.stdout.write(f"wrote {directory}\n")


if __name__ == "__main__":
    main()
