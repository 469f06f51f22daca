"""The influxdb sink: records as InfluxDB points, in line protocol over HTTP.

What it accepts: the rows of the tables listed in ``tables`` (default ``telemetry``,
``rtc_stats`` and ``outbox``). A row of a table becomes one point, mapped by ``points``
(per table; the defaults below): its measurement (text, where ``{column}`` stands for the
row's value), its tags (columns, or keys of ``extra``), its fields (columns, or keys of
``extra``) and its time, the record's ``time`` in nanoseconds. Defaults:

- ``telemetry``: measurement ``telemetry``; tags ``device_id``, ``stream``, ``source``,
  ``topic``; fields: every number in ``extra`` (nested keys joined by ``_``, as
  Telegraf's JSON parser does), written as floats so that ``21`` and ``21.5`` from the
  same device never conflict.
- ``rtc_stats``: measurement ``rtc_stats``; tags ``channel_id``, ``session_id``,
  ``connection_id``, ``client_id``, ``role``, ``node_name``, ``stats_type``,
  ``stats_id``, ``media_kind``, ``rid``; fields: every integer column (``i``) and float
  column of the row that has a value (``bytes_sent``, ``packets_lost``, ``jitter``, ...).
- any other table: measurement the table's name; tags ``source``, ``stream``; fields:
  its integer and float columns and the numbers in ``extra``.

A row without any field is not a point and is skipped. Of ``outbox``, the rows a broker
addressed to this sink (``ctx.emit(point, sinks=["influxdb"])``) are points already:
``measurement``, ``tags``, ``fields`` and ``time`` as the broker gave them (text is a
string field, a boolean a boolean, a number a float). ``json_integers: integer`` writes a
whole number of ``extra`` or of a point as an integer (``21i``), as influxdb-client
writes a Python ``int``; InfluxDB then refuses a later ``21.5`` for that field (a field
type conflict, dead-lettered).

Two APIs (``version``): 1, ``POST /write?db=&rp=&precision=ns`` (InfluxDB 1.x, with
``username``/``password`` as basic auth; the database is created first unless
``create_database`` is off); 2, ``POST /api/v2/write?org=&bucket=&precision=ns`` with
``Authorization: Token ...`` (InfluxDB 2.x and 3.x, and 1.8+'s compatibility API). One
request carries at most ``max_lines`` lines.

What it guarantees: at least once, and no point twice. A point is identified by its
measurement, tag set and time, and InfluxDB keeps one value per field for them: a
replayed batch writes the same points again and changes nothing. (Two records with the
same tags and the same time are one point too: the later one's fields win.) No answer
(connection refused, a timeout), a 5xx, 408 or 429, and 401, 403 or 404 (a wrong token,
a missing database or bucket: the data waits until that is fixed) are an outage:
:class:`~rtclake.errors.SinkError`, the batch stays in the spool and is retried with
backoff. A 400, 413 or 422 (a line InfluxDB refuses: a field type conflict, a value out
of range) does not block the batch: the request is split in halves, again and again,
until each refused line is alone; its row goes to ``dead_letters`` with InfluxDB's
answer, and every other line is written. Lines InfluxDB 1.x wrote beside a refused one
(a ``partial write``) are written again, which changes nothing. A row that line protocol
cannot carry (a tag value with a line break, or a backslash before a space, comma or
equals sign or at its end; an outbox point without a measurement or fields) goes to
``dead_letters`` without a request. Once InfluxDB has been out for ``give_up_after``
seconds (0, the default: never), the rows of the batch at hand go to ``dead_letters``,
and so do those of each later batch whose first request fails, until it answers again.

What it reports: the delivery's metrics under the sink's name
(``rtclake_batch_write_seconds{sink}``, ``rtclake_sink_errors_total{sink}``,
``rtclake_records_stored_total{sink,table}``, ``rtclake_dead_letters_total{sink,table}``).
"""

from __future__ import annotations

import base64
import functools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from rtclake.config import Duration
from rtclake.errors import ConfigError, SinkError
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink, addressed, gave_up, json_value, rows_taken
from rtclake.tables import OUTBOX, Table, TableRegistry

if TYPE_CHECKING:
    import httpx

# Answers that refuse lines of the request (split to find them); the rest are outages.
_REFUSING = {400, 413, 422}
_LINE_PROTOCOL = {"content-type": "text/plain; charset=utf-8"}


class PointMapping(BaseModel):
    """How the rows of one table become points; a key left out takes the table's default."""

    model_config = ConfigDict(extra="forbid")

    measurement: str | None = Field(
        default=None,
        description="the measurement; `{column}` is replaced by the row's value (e.g."
        " `{stream}`); default the table's name",
    )
    tags: list[str] | None = Field(
        default=None,
        description="columns (or keys of extra, nested with `.`) written as tags",
    )
    fields: list[str] | None = Field(
        default=None,
        description="columns (or keys of extra, nested with `.`) written as fields, by"
        " their type (int columns as integers, numbers of extra as floats); default every"
        " int and float column",
    )
    extra_fields: bool | None = Field(
        default=None,
        description="also every number in extra as a float field (nested keys joined by `_`)",
    )


RTC_STATS_TAGS = [
    "channel_id", "session_id", "connection_id", "client_id", "role", "node_name",
    "stats_type", "stats_id", "media_kind", "rid",
]  # fmt: skip
DEFAULT_POINTS: dict[str, PointMapping] = {
    "telemetry": PointMapping(
        measurement="telemetry",
        tags=["device_id", "stream", "source", "topic"],
        fields=[],
        extra_fields=True,
    ),
    "rtc_stats": PointMapping(
        measurement="rtc_stats", tags=RTC_STATS_TAGS, fields=None, extra_fields=False
    ),
}
GENERIC_POINTS = PointMapping(measurement=None, tags=["source", "stream"], extra_fields=True)


class InfluxDBConfig(SinkConfig):
    """``type: influxdb``: records as points, in line protocol over InfluxDB's HTTP API."""

    url: str = Field(
        default="http://127.0.0.1:8086",
        description="InfluxDB's base URL (http:// is assumed when no scheme is given)",
    )
    version: Literal[1, 2] | None = Field(
        default=None,
        description="1: POST /write (database, retention_policy, username, password);"
        " 2: POST /api/v2/write (org, bucket, token); default 2 when bucket is set, else 1",
    )
    database: str = Field(default="rtclake", description="version 1: the database")
    retention_policy: str | None = Field(
        default=None, description="version 1: the retention policy (default: the database's)"
    )
    username: str | None = Field(default=None, description="version 1: basic auth user")
    password: SecretStr | None = Field(default=None, description="version 1: its password")
    create_database: bool = Field(
        default=True,
        description="version 1: CREATE DATABASE before the first write (a no-op when it"
        " exists; a refusal of it is ignored)",
    )
    org: str | None = Field(default=None, description="version 2: the organization")
    bucket: str | None = Field(default=None, description="version 2: the bucket")
    token: SecretStr | None = Field(
        default=None, description="version 2: the API token (`Authorization: Token ...`)"
    )
    tables: list[str] = Field(
        default=["telemetry", "rtc_stats", OUTBOX.name],
        description="the tables whose rows are written; of outbox, the points a broker"
        " addressed to this sink",
    )
    points: dict[str, PointMapping] = Field(
        default_factory=dict,
        description="per table, its measurement, tags and fields (over the defaults for"
        " telemetry, rtc_stats and other tables; see docs/SINKS.md)",
    )
    json_integers: Literal["float", "integer"] = Field(
        default="float",
        description="numbers of extra and of outbox points: float, every one a float field"
        " (21 and 21.5 never conflict, as Telegraf's JSON parser); integer, a whole number"
        " an integer field (21i), as influxdb-client writes a Python int",
    )
    max_lines: int = Field(default=5000, gt=0, description="lines per request at most")
    timeout: float = Field(default=10.0, gt=0, description="seconds one request may take")
    give_up_after: Duration = Field(
        default=0.0,
        ge=0,
        description="seconds InfluxDB may be out before unwritten rows go to dead_letters"
        " (until it answers again), so the spool flows; 0: retry for ever",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        return value if "://" in value else f"http://{value}"

    @property
    def api(self) -> int:
        if self.version is not None:
            return self.version
        return 2 if self.bucket else 1


class Unwritable(ValueError):
    """A value line protocol cannot carry."""


# A backslash before a space, comma, equals sign or double quote, or at the end, reads as
# an escape (InfluxDB 1.x keeps other backslashes as they are).
_BAD_BACKSLASH = re.compile(r'\\(?:[ ,="]|$)')
_INT64 = range(-(2**63), 2**63)
_TEMPLATE = re.compile(r"\{([^{}]+)\}")  # {column} in a measurement


@functools.lru_cache(maxsize=1 << 16)  # keys and tag values repeat: escaped once each
def _escape(text: str, what: str, chars: str = ",= ") -> str:
    """``text`` as a measurement (``chars`` ", "), tag key, tag value or field key."""
    if not text:
        raise Unwritable(f"empty {what}")
    if "\n" in text or "\r" in text:
        raise Unwritable(f"{what} {text[:80]!r} holds a line break")
    if _BAD_BACKSLASH.search(text):
        raise Unwritable(
            f"{what} {text[:80]!r} has a backslash before a space, comma, equals sign or"
            " double quote, or at its end"
        )
    for char in chars:
        if char in text:
            text = text.replace(char, "\\" + char)
    return text


@functools.lru_cache(maxsize=1 << 12)
def measurement_text(name: str) -> str:
    if name.startswith("#"):
        raise Unwritable(f"measurement {name[:80]!r} starts with '#' (a comment)")
    return _escape(name, "measurement", ", ")


def tag_text(key: str, value: str) -> str:
    return f"{_escape(key, 'tag key')}={_escape(value, 'tag value')}"


def field_value(value: object, *, floats: bool = False) -> str | None:
    """A field's value in line protocol; None for one that is not written (null, NaN,
    infinite, a JSON number beyond a float's range: a
    :class:`~rtclake.sinks.base.BigNumber`, a list or object). ``floats``: a number is a
    float (JSON numbers); an integer beyond 64 bits is one anyway."""
    if type(value) is float:
        return repr(value) if math.isfinite(value) else None
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not floats and value in _INT64:
        return f"{value}i"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return None
        return repr(number) if math.isfinite(number) else None
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return None


def line(measurement: str, tags: dict[str, str], fields: dict[str, str], ns: int) -> str:
    """One point: ``fields`` maps a field key to its value already in line protocol."""
    head = measurement_text(measurement)
    tag_part = "".join("," + tag_text(k, tags[k]) for k in sorted(tags) if tags[k] != "")
    field_part = ",".join(f"{_escape(k, 'field key')}={v}" for k, v in fields.items())
    return f"{head}{tag_part} {field_part} {ns}"


def _flatten(value: dict[str, Any], prefix: str, out: dict[str, float]) -> None:
    for key, inner in value.items():
        if type(inner) is float or type(inner) is int:
            out[prefix + key] = inner
        elif isinstance(inner, dict):
            _flatten(inner, f"{prefix}{key}_", out)


def _dig(extra: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(extra, dict):
            return None
        extra = extra.get(part)
    return extra


def _tag_value(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


@dataclass(frozen=True)
class Mapping:
    """A table's :class:`PointMapping` with its defaults filled in."""

    measurement: str
    tags: list[str]
    fields: list[str]
    extra_fields: bool

    @classmethod
    def of(cls, table: Table, given: PointMapping | None) -> Mapping:
        default = DEFAULT_POINTS.get(table.name, GENERIC_POINTS)

        def pick(name: str) -> Any:
            if given is not None and getattr(given, name) is not None:
                return getattr(given, name)
            return getattr(default, name)

        tags = list(pick("tags") or [])
        fields = pick("fields")
        if fields is None:
            numeric = [c.name for c in table.columns if c.kind in ("int", "float")]
            fields = [name for name in numeric if name not in tags]
        measurement = pick("measurement") or table.name
        if not _TEMPLATE.findall(measurement):
            measurement_text(measurement)  # raises Unwritable: a configuration error
        for key in tags:
            _escape(key, "tag key")
        for key in fields:
            _escape(key, "field key")
        return cls(measurement, tags, list(fields),
                   bool(pick("extra_fields")))  # fmt: skip

    def template(self) -> list[str]:
        """The columns the measurement names (``{column}``)."""
        return _TEMPLATE.findall(self.measurement)


Lines = list[tuple[int, str]]  # (row index, line)
Refusals = dict[str, list[tuple[int, str]]]


def table_lines(
    table: Table, mapping: Mapping, rows: pa.Table, json_floats: bool = True
) -> tuple[Lines, list[tuple[int, str]]]:
    """The lines of one table's rows, and the rows that cannot be written (index, reason);
    ``json_floats``: a number of ``extra`` is a float field, also a whole one."""
    names = set(rows.column_names) - {"extra"}
    kinds = {c.name: c.kind for c in table.columns}
    template = mapping.template()
    wanted = set(mapping.tags) | set(mapping.fields) | set(template)
    extras: list[Any] = [None] * rows.num_rows
    if (mapping.extra_fields or wanted - names) and "extra" in rows.column_names:
        extras = [json_value(e) if e else None for e in rows["extra"].to_pylist()]
    columns = {n: rows[n].to_pylist() for n in wanted & names}
    # (escaped key, the column's values or None: a key of extra, numbers as floats)
    fields = [
        (
            _escape(n, "field key"),
            columns.get(n),
            kinds.get(n) == "float" or (n not in columns and json_floats),
            n,
        )
        for n in mapping.fields
    ]
    tags = [(n, _escape(n, "tag key"), columns.get(n)) for n in sorted(mapping.tags)]
    listed = set(mapping.fields)
    fixed = None if template else measurement_text(mapping.measurement)
    times = _nanoseconds(rows)
    lines: Lines = []
    refused: list[tuple[int, str]] = []
    for index in range(rows.num_rows):
        extra = extras[index]
        parts = []
        for key, values, floats, name in fields:
            got = values[index] if values is not None else _dig(extra, name)
            encoded = field_value(got, floats=floats)
            if encoded is not None:
                parts.append(f"{key}={encoded}")
        try:
            if mapping.extra_fields and isinstance(extra, dict):
                numbers: dict[str, float] = {}
                _flatten(extra, "", numbers)
                for name, number in numbers.items():
                    encoded = field_value(number, floats=json_floats)
                    if encoded is not None and name not in listed:
                        parts.append(f"{_escape(name, 'field key')}={encoded}")
            if not parts:
                continue  # nothing to chart: not a point
            head = fixed
            if head is None:
                head = mapping.measurement
                for name in template:
                    got = columns[name][index] if name in columns else _dig(extra, name)
                    head = head.replace("{" + name + "}", _tag_value(got) or "")
                head = measurement_text(head)
            for name, key, values in tags:
                text = _tag_value(values[index] if values is not None else _dig(extra, name))
                if text:
                    head += f",{key}={_escape(text, 'tag value')}"
            lines.append((index, f"{head} {','.join(parts)} {times[index]}"))
        except Unwritable as exc:
            refused.append((index, f"influxdb: not written: {exc}"))
    return lines, refused


def outbox_lines(
    rows: pa.Table, sink: str, json_floats: bool = True
) -> tuple[Lines, list[tuple[int, str]]]:
    """The points of the ``outbox`` rows addressed to ``sink``, and those that are not
    points (index, reason)."""
    names = rows["sinks"].to_pylist()
    extras = rows["extra"].to_pylist()
    times = _nanoseconds(rows)
    lines: Lines = []
    refused: list[tuple[int, str]] = []
    for index, sinks in enumerate(names):
        if not addressed(sinks, sink):
            continue
        extra = json_value(extras[index]) if extras[index] else {}
        try:
            lines.append((index, outbox_point(extra, times[index], json_floats)))
        except Unwritable as exc:
            refused.append((index, f"influxdb: not written: {exc}"))
    return lines, refused


def outbox_point(extra: Any, ns: int, json_floats: bool = True) -> str:
    """The line of a point a broker emitted: ``{measurement, tags, fields}`` at ``ns``."""
    if not isinstance(extra, dict):
        raise Unwritable("an outbox point is an object")
    measurement = extra.get("measurement")
    if not isinstance(measurement, str) or not measurement:
        raise Unwritable("an outbox point needs a measurement (text)")
    given = extra.get("fields")
    fields = {}
    if isinstance(given, dict):
        for key, raw in given.items():
            encoded = field_value(raw, floats=json_floats)
            if encoded is not None:
                fields[str(key)] = encoded
    if not fields:
        raise Unwritable("an outbox point needs fields (numbers, text or booleans)")
    tags_given = extra.get("tags")
    tags: dict[str, str] = {}
    if isinstance(tags_given, dict):
        for key, raw in tags_given.items():
            text = _tag_value(raw)
            if text:
                tags[str(key)] = text
    return line(measurement, tags, fields, ns)


def _nanoseconds(rows: pa.Table) -> list[int]:
    micros = rows["time"].cast(pa.int64()).to_pylist()
    return [us * 1000 for us in micros]


class InfluxDBSink(Sink):
    """Writes rows of some tables to InfluxDB as points (see the module doc)."""

    needs_record_id = False  # a point is keyed by its tags and time, not the record id

    def __init__(
        self,
        config: InfluxDBConfig,
        tables: TableRegistry,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.clock = clock
        self.mappings = {
            table: Mapping.of(tables[table], config.points.get(table))
            for table in config.tables
            if table != OUTBOX.name
        }
        self._client: httpx.Client | None = None
        self._database_ready = config.api != 1 or not config.create_database
        self._outage_since: float | None = None

    # -- HTTP

    def _endpoint(self) -> tuple[str, dict[str, str]]:
        config = self.config
        if config.api == 1:
            params = {"db": config.database, "precision": "ns"}
            if config.retention_policy:
                params["rp"] = config.retention_policy
            return f"{config.url}/write", params
        params = {"bucket": config.bucket or "", "precision": "ns"}
        if config.org:
            params["org"] = config.org
        return f"{config.url}/api/v2/write", params

    def start(self) -> None:
        import httpx  # here, not at import: `rtclake import` and `query` load the registry

        config = self.config
        headers = {}
        auth: httpx.BasicAuth | None = None
        if config.api == 2 and config.token is not None:
            headers["authorization"] = f"Token {config.token.get_secret_value()}"
        if config.api == 1 and config.username:
            password = config.password.get_secret_value() if config.password else ""
            auth = httpx.BasicAuth(config.username, password)
        self._client = httpx.Client(
            timeout=config.timeout, headers=headers, auth=auth, follow_redirects=False
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _post(self, url: str, **kwargs: Any) -> httpx.Response:
        import httpx

        if self._client is None:
            self.start()
        assert self._client is not None
        try:
            return self._client.post(url, **kwargs)
        except httpx.HTTPError as exc:  # no answer: connection refused, reset, timeout
            raise SinkError(f"influxdb: {type(exc).__name__}: {exc}") from exc

    def _create_database(self) -> None:
        statement = f'CREATE DATABASE "{_influxql(self.config.database)}"'
        answer = self._post(f"{self.config.url}/query", data={"q": statement})
        if answer.status_code >= 500 or answer.status_code in (408, 429):
            raise SinkError(f"influxdb: CREATE DATABASE answered {answer.status_code}")
        self._database_ready = True  # created, or refused (no privilege): the write will tell

    def _send(self, lines: Lines) -> list[tuple[int, str]]:
        """Write ``lines``; return the refused ones (row index, InfluxDB's answer), found
        by splitting a refused request in halves. Raises :class:`SinkError` for an outage."""
        url, params = self._endpoint()
        body = "\n".join(text for _, text in lines).encode()
        answer = self._post(url, params=params, content=body, headers=_LINE_PROTOCOL)
        status = answer.status_code
        if 200 <= status < 300:
            return []
        text = answer.text[:500].strip()
        if status not in _REFUSING:
            if status == 404 and self.config.api == 1 and self.config.create_database:
                self._database_ready = False  # dropped since? created again before the retry
            raise SinkError(f"influxdb: write answered {status}: {text}")
        if len(lines) == 1:
            return [(lines[0][0], f"influxdb answered {status}: {text}")]
        half = len(lines) // 2
        return self._send(lines[:half]) + self._send(lines[half:])

    # -- the sink

    def lines(self, batch: Batch) -> tuple[dict[str, Lines], Refusals]:
        """The lines of ``batch`` by table, and the rows that cannot be written."""
        out: dict[str, Lines] = {}
        refused: Refusals = {}
        floats = self.config.json_integers == "float"
        for name in self.config.tables:
            rows = batch.tables.get(name)
            if rows is None or rows.num_rows == 0:
                continue
            if name == OUTBOX.name:
                made, bad = outbox_lines(rows, self.name, floats)
            else:
                made, bad = table_lines(self.tables[name], self.mappings[name], rows, floats)
            if made:
                out[name] = made
            if bad:
                refused[name] = bad
        return out, refused

    def taken(self, batch: Batch) -> dict[str, int]:
        return rows_taken(batch, self.config.tables, self.name)

    def write(self, batch: Batch) -> None:
        lines, refused = self.lines(batch)
        size = self.config.max_lines
        pending: dict[str, Lines] = {}  # not sent: InfluxDB is out
        outage: SinkError | None = None
        given_up: str | None = None
        if lines and not self._database_ready:
            try:
                self._create_database()
            except SinkError as exc:
                outage, pending = exc, dict(lines)
        for name, made in lines.items() if outage is None else ():
            for start in range(0, len(made), size):
                part = made[start : start + size]
                if outage is not None:
                    pending.setdefault(name, []).extend(part)
                    continue
                try:
                    bad = self._send(part)
                except SinkError as exc:
                    outage = exc
                    pending.setdefault(name, []).extend(part)
                    continue
                if bad:
                    refused.setdefault(name, []).extend(bad)
        if outage is not None:
            now = self.clock()
            if self._outage_since is None:
                self._outage_since = now
            given_up = gave_up(outage, self._outage_since, now, self.config.give_up_after)
            if given_up is None:
                raise outage
            for name, part in pending.items():
                refused.setdefault(name, []).extend((index, given_up) for index, _ in part)
        elif lines:
            self._outage_since = None  # it answered
        if refused:
            raise Rejected(refused, outage=given_up)


def _influxql(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


def build(config: InfluxDBConfig, ctx: BuildContext) -> InfluxDBSink:
    where = f"sinks.{ctx.name}"
    unknown = [name for name in [*config.tables, *config.points] if name not in ctx.tables]
    if unknown:
        known = ", ".join(ctx.tables.names())
        raise ConfigError(f"{where}.tables: unknown tables {unknown} (known: {known})")
    if config.api == 2 and not config.bucket:
        raise ConfigError(f"{where}: version 2 needs bucket (and org, token)")
    try:
        return InfluxDBSink(config, ctx.tables, ctx.name)
    except Unwritable as exc:
        raise ConfigError(f"{where}.points: {exc}") from exc


INFLUXDB = ComponentType(
    "sink", "influxdb", InfluxDBConfig, build,
    "Records as InfluxDB points (line protocol, v1 /write or v2 /api/v2/write).",
)  # fmt: skip
