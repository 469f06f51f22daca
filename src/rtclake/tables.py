"""The table registry: every lake table declares its Arrow schema and where each column
comes from.

A table row is a record's envelope (record id, time, source, stream, kind, type, the
identifiers of its source) plus its payload. Payload keys that a table maps to a typed
column become that column; every other key goes into the JSON ``extra`` column, so nothing
a source sends is dropped (a column reading one of several keys takes the first present;
another of them holding another value goes into ``extra`` too). The same declaration
drives four things, so they cannot disagree: the validator that rejects a wrongly typed
record before it is acknowledged (:meth:`Table.validator`), the parser that turns JSON
lines into Arrow columns (:meth:`Table.native_spec`), the record id rule
(:meth:`Table.record_id_sql`), and the per-record envelope of :mod:`rtclake.records`.
"""

from __future__ import annotations

import binascii
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import pyarrow as pa

from rtclake import _jsoncols

FieldKind = Literal["string", "id", "time", "float", "int", "bool", "json", "binary"]

UTC_US = pa.timestamp("us", tz="UTC")

# The python types a payload value may have for each kind of column; anything else is
# rejected at the edge with the key's name in the message.
# Numeric times are seconds, milliseconds, microseconds or nanoseconds since the epoch,
# told apart by magnitude (see rtclake/_jsoncols.cpp); any number in [0, 2**63) is a date that
# Parquet, DuckDB and Python represent. Negative and larger numbers are refused.
_EPOCH_MAX = 2**63 - 1
TIME_RULE = (
    "an RFC 3339 time with its offset (2026-11-20T12:00:00.123456Z, 'T' or a space,"
    " 'Z' or +hh:mm), or a number since the epoch"
)


class Time:
    """The validator's type of a time value: :func:`check_time` decides, by the rule of the
    parser (``_jsoncols.parse_time``), so the edge, the writer and imports agree."""


_A_TIME = Time()


def check_time(value: object) -> Time:
    """Accept a time value (text by the one rule, or an epoch number), or raise the
    ``ValueError``/``TypeError`` msgspec reports with the key's path."""
    if isinstance(value, str):
        if _jsoncols.parse_time(value) is None:
            raise ValueError(f"Invalid time {value[:64]!r}: expected {TIME_RULE}")
        return _A_TIME
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Expected a time, got `{_json_type(value)}`: expected {TIME_RULE}")
    if not 0 <= value <= _EPOCH_MAX or (isinstance(value, float) and value >= _EPOCH_MAX):
        raise ValueError("Expected a time in [0, 2**63)")
    return _A_TIME


def _json_type(value: object) -> str:
    names = {bool: "bool", dict: "object", list: "array", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class Base64:
    """The validator's type of a ``binary`` column's value: standard base64 text."""


_A_BASE64 = Base64()


def check_base64(value: object) -> Base64:
    """Accept base64 text (RFC 4648, with padding), which the converter stores as bytes."""
    if not isinstance(value, str):
        raise TypeError(f"Expected base64 text, got `{_json_type(value)}`")
    try:
        binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"Invalid base64: {exc}") from exc
    return _A_BASE64


def _dec_hook(kind: type, value: object) -> object:
    if kind is Time:
        return check_time(value)
    if kind is Base64:
        return check_base64(value)
    raise NotImplementedError(kind)


_VALIDATOR_TYPES: dict[str, Any] = {
    "bool": bool | None,
    "json": Any,
    "string": str | None,
    "id": str | int | None,
    "time": Time | None,
    "float": float | int | None,
    "int": int | None,
    "binary": Base64 | None,
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "json": pa.string(),
    "string": pa.string(),
    "id": pa.string(),
    "time": UTC_US,
    "float": pa.float64(),
    "int": pa.int64(),
    "binary": pa.binary(),  # base64 text in the spool, bytes in the lake
}

# Columns every table starts with, filled from the spool entry and the record id rule.
ENVELOPE: tuple[pa.Field, ...] = (
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("time", UTC_US, nullable=False),
    pa.field("received_at", UTC_US, nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("stream", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("type", pa.string()),
)

# Keys the envelope reads from a payload (besides each table's own columns).
TIME_KEYS = ("time", "timestamp", "ts")
TYPE_KEYS = ("type",)


@dataclass(frozen=True)
class Column:
    """A typed column read from the first present of ``keys`` in the payload (a key
    holding null is not present). Another of them a record carries stays in ``extra``, as
    sent, unless it holds the value the column took: Sora repeats ``rtc_data.id`` as
    ``rtc_id``, LiveKit ``room.sid`` as ``roomId``, and such copies would double every row's
    ``extra``; ``deviceId`` beside a different ``device_id`` is kept.

    A key may be a path into nested objects, its parts joined by ``.``
    (``rtc_data.bytesSent``).
    """

    name: str
    kind: FieldKind
    keys: tuple[str, ...]

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.kind]


def columns(kind: FieldKind, prefix: str, names: str, *, named: str = "") -> tuple[Column, ...]:
    """Columns of one kind, one per space-separated NAME, read from ``prefix + NAME`` and
    called ``named + NAME`` in snake_case (``rtc_data.bytesSent`` -> ``bytes_sent``)."""
    return tuple(Column(named + snake_case(n), kind, (prefix + n,)) for n in names.split())


def snake_case(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@dataclass(frozen=True)
class Rollup:
    """A day of a table written again by maintenance as fewer rows (today's too: such a
    table is small): ``sql`` selects the table's stored columns from ``{rows}``, the
    day's rows; the sum of the column ``keeps`` must not change (else the day stays as it
    was). ``fold``: the same in Arrow, for the rows of consecutive batches stored together
    (an import's group, a writer's group). ``continues``: an import's rows as they
    continue the lake's, before the lake sink stores them; it is given a reader of the
    table's rows in the lake (:data:`LakeRows`) and the rows, and returns them (an
    import's derivation state is its run's own, and cannot tell that another run stored
    what comes before; a writer's is kept on disk)."""

    sql: str
    keeps: str
    fold: Callable[[pa.Table], pa.Table] | None = None
    continues: Callable[[LakeRows, pa.Table], pa.Table] | None = None


#: Reads a table's rows in the lake: ``(columns, where, params)``, the lake's rows as
#: ``x`` (``x.date``, the partition, prunes files).
LakeRows = Callable[[str, str, list[Any]], pa.Table]


@dataclass(frozen=True)
class Table:
    """A lake table: its name, the kind it stamps on records, and its typed columns.

    ``identity`` names the columns that identify a record of this table whatever source
    delivered it (for example a Sora stats line read from a log file and the same line
    imported from S3); without it, the generic record id rule applies. The record id of
    such a table is derived from those columns, so the lake does not store it.
    """

    name: str
    kind: str
    columns: tuple[Column, ...] = ()
    identity: tuple[str, ...] = ()
    #: Whether a record needs a value in each of its ``identity`` columns (see
    #: :attr:`required_identity`); off where a null belongs to the identity (a LiveKit
    #: room's analytics event names no participant and no track).
    identity_required: bool = True
    sparse_extra: bool = False
    description: str = ""
    #: Rows never repeat (a derived table, written once per batch): queries need not hide
    #: repeated record ids, which costs a window over the whole table.
    unique_rows: bool = False
    #: With ``unique_rows``: a row can be derived again, with the same record id, from
    #: lines that come again (a re-upload, a second import); the lake's repeat check,
    #: which passes the other ``unique_rows`` tables over, keeps it once.
    derived_again: bool = False
    #: Columns besides the envelope, ids and times that get min/max statistics.
    statistics: tuple[str, ...] = ()
    #: The order of the rows within each lake file, and the rows of its row groups: a
    #: table read one connection at a time is sorted by connection in small row groups,
    #: so a query for one connection reads the few groups holding it (their min/max
    #: statistics name the others out) rather than every group of every file.
    cluster_by: tuple[str, ...] = ()
    row_group_rows: int | None = None
    #: How maintenance folds a day into fewer rows (a derived table written a few rows
    #: per batch, read by time): see :class:`Rollup`.
    rollup: Rollup | None = None
    _validator: Any = field(default=None, init=False, repr=False, compare=False)
    _checker: Any = field(default=None, init=False, repr=False, compare=False)
    _spec: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.schema]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"table {self.name!r}: column names used twice: {repeated}")
        unknown = sorted(
            (set(self.identity) | set(self.statistics) | set(self.cluster_by)) - set(names)
            | ({self.rollup.keeps} - set(names) if self.rollup else set())
        )
        if unknown:
            raise ValueError(f"table {self.name!r}: names unknown columns {unknown}")

    @property
    def stored_schema(self) -> pa.Schema:
        """The columns a lake file holds (the record id is derived when it can be)."""
        schema = self.schema
        return schema.remove(schema.get_field_index("record_id")) if self.identity else schema

    @property
    def required_identity(self) -> tuple[str, ...]:
        """The identity columns a record must have a value in: a line without one (an
        rtc_stats line without ``connection_id``) is a bad line wherever it arrives, at
        an edge (:meth:`checker`), in the writer and in imports
        (:meth:`rtclake.convert.Converter.parse`): its row could not be told from
        another's, and derivations (rtc_rates) would read a sample of no stream."""
        if not self.identity_required:
            return ()
        names = {c.name for c in self.columns}
        return tuple(name for name in self.identity if name in names)

    @property
    def checks_repeats(self) -> bool:
        """Whether the lake's repeat check (:mod:`rtclake.lake.repeats`) runs on its rows."""
        return not self.unique_rows or self.derived_again

    @property
    def record_key(self) -> tuple[str, ...]:
        """The columns that make two rows one record: ``record_id``, or the identity plus
        channel and session when the table has them (constant per identity: the same
        records, and an identity repeated in two channels stays two records)."""
        if not self.identity:
            return ("record_id",)
        names = {c.name for c in self.columns}
        also = [c for c in ("channel_id", "session_id") if c in names and c not in self.identity]
        return (*self.identity, *also)

    def identity_sql(self) -> str:
        """The record id of a table with an identity, from its columns (writer and views).

        Times enter as microseconds since the epoch: cheaper than their text, as exact."""
        times = {c.name for c in self.columns if c.kind == "time"} | {"time", "received_at"}
        parts = ", ".join(
            f"coalesce({f'epoch_us({_ident(c)})' if c in times else _ident(c)}::VARCHAR, '')"
            for c in self.identity
        )
        return f"md5(concat_ws(chr(31), {_lit(self.name)}, {parts}))"

    @property
    def schema(self) -> pa.Schema:
        fields = list(ENVELOPE)
        fields += [pa.field(c.name, c.arrow_type) for c in self.columns]
        fields.append(pa.field("extra", pa.string()))
        return pa.schema(fields)

    def _kinds(self) -> dict[str, str]:
        """Every mapped key path and the kind of value it must hold."""
        kinds: dict[str, str] = dict.fromkeys(TIME_KEYS, "time")
        kinds.update(dict.fromkeys(TYPE_KEYS, "string"))
        for column in self.columns:
            for key in column.keys:
                kinds.setdefault(key, column.kind)
        return kinds

    @property
    def readers(self) -> tuple[tuple[str, ...], ...]:
        """The key paths of each value read from a payload, in order of preference: the
        envelope's time and type, then each column. Each takes the first of its keys that
        has a value; a key that none takes (``ts`` beside ``time``) stays in ``extra``
        unless it holds the value taken (see :class:`Column`). The parser and the
        converter both follow this order, so they agree on which key was taken."""
        return (TIME_KEYS, TYPE_KEYS, *(column.keys for column in self.columns))

    @property
    def mapped_keys(self) -> tuple[str, ...]:
        """Key paths stored in typed columns (so not repeated in ``extra``)."""
        return tuple(self._kinds())

    def validator(self) -> msgspec.json.Decoder[Any]:
        """A decoder that checks a JSON object's mapped keys have usable types (not
        that its identity is there: :meth:`checker` checks both).

        Unknown keys are skipped without being built into Python objects, which is what
        makes validation of large batches cheap.
        """
        if self._validator is None:
            struct = _validator_struct(self.name, _tree(self._kinds()))
            decoder = msgspec.json.Decoder(struct, dec_hook=_dec_hook)
            object.__setattr__(self, "_validator", decoder)
        return self._validator  # type: ignore[no-any-return]

    def checker(self) -> Callable[[bytes], bool]:
        """A function validating one JSON object; it returns whether the object has keys
        the table does not map (and so needs an ``extra``; a key a column passed over,
        ``deviceId`` beside ``device_id``, is mapped: the parser decides on those).

        Tables with ``sparse_extra`` (most records have only mapped keys) first try a
        decoder that forbids unknown keys, so the common case costs one decode and the
        writer builds ``extra`` only for the lines that need it.

        An object without a value in one of the :attr:`required_identity` columns is
        refused (``msgspec.ValidationError``) as the writer and imports refuse it.
        """
        if self._checker is None:
            tree = _tree(self._kinds())
            decode = self._requiring_identity(self.validator().decode, tree)
            if not self.sparse_extra:

                def check(line: bytes) -> bool:
                    decode(line)
                    return True

            else:
                closed = msgspec.json.Decoder(
                    _validator_struct(self.name, tree, closed=True), dec_hook=_dec_hook
                )
                decode_closed = self._requiring_identity(closed.decode, tree)

                def check(line: bytes) -> bool:
                    try:
                        decode_closed(line)
                    except msgspec.ValidationError as exc:
                        if "unknown field" not in str(exc):
                            raise
                        decode(line)
                        return True
                    return False

            object.__setattr__(self, "_checker", check)
        return self._checker  # type: ignore[no-any-return]

    def _requiring_identity(
        self, decode: Callable[[bytes], Any], tree: Tree
    ) -> Callable[[bytes], Any]:
        """``decode`` (a decoder of the validator's structs, built from ``tree``) refusing
        an object that has no value for a :attr:`required_identity` column: each column
        has one if any of its keys holds one, as the parser takes the first present."""
        columns = [c for c in self.columns if c.name in self.required_identity]
        if not columns:
            return decode
        needs = [
            (c.name, tuple(operator.attrgetter(_attribute(tree, key)) for key in c.keys))
            for c in columns
        ]
        # the common case in one call: the first key of each column holds its value
        firsts = _values([_attribute(tree, c.keys[0]) for c in columns])

        def decode_whole(line: bytes) -> Any:
            record = decode(line)
            try:
                if None not in firsts(record):
                    return record
            except AttributeError:  # an object on the way is absent (None)
                pass
            missing = [name for name, getters in needs if not _present(record, getters)]
            if missing:
                raise msgspec.ValidationError(identity_gap(missing))
            return record

        return decode_whole

    def native_spec(self) -> _jsoncols.Spec:
        """The parser of this table's lines (see :mod:`rtclake._jsoncols`): every mapped
        key path with the kind of value it takes; the rest of a line becomes ``extra``."""
        if self._spec is None:
            codes = {kind: i for i, kind in enumerate(NATIVE_KINDS)}
            codes["binary"] = codes["string"]  # parsed as text, decoded by the converter

            def convert(tree: Tree) -> dict[str, Any]:
                return {k: convert(v) if isinstance(v, dict) else codes[v] for k, v in tree.items()}

            spec = convert(_tree(self._kinds()))
            # The envelope's own time: a line whose time breaks the rule is a bad line
            # (logged with its place), never stored under its arrival time instead.
            for key in TIME_KEYS:
                spec[key] |= NATIVE_STRICT
            object.__setattr__(self, "_spec", _jsoncols.Spec(spec, self.readers))
        return self._spec  # type: ignore[no-any-return]

    def record_id_sql(self, relation: str) -> str:
        """DuckDB SQL computing the record id of each row of ``relation``, the rule
        mirrored by :func:`rtclake.records.record_id`:

        - a table with an ``identity``: the table name and those columns' values
          (``relation`` has them, typed);
        - with an idempotency key (a source's message id): source, stream, key, line number;
        - else, if the record carries its own time: source, stream and its JSON text;
        - else (nothing tells a retry from a new reading): source, stream and its position
          in the spool, which a replay after a crash reproduces.

        Without an identity, ``relation`` holds ``INPUT_SCHEMA`` (``line`` without the
        spaces around it) and ``own_time`` (whether the line had a usable time of its own).
        """
        if self.identity:
            return f"SELECT {self.identity_sql()} AS record_id FROM {relation}"
        key = (
            "CASE WHEN idem IS NOT NULL THEN idem || ':' || line_no::VARCHAR"
            " WHEN own_time THEN line"
            " ELSE entry || ':' || line_no::VARCHAR END"
        )
        return f"SELECT md5(concat_ws(chr(31), source, stream, {key})) AS record_id FROM {relation}"


# One row per spooled JSON line with its entry's header (what the record id rule reads).
INPUT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("stream", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("hdr_type", pa.string()),
        pa.field("received_at", UTC_US),
        pa.field("idem", pa.string()),
        pa.field("entry", pa.string()),
        pa.field("line_no", pa.int32()),
        pa.field("line", pa.string()),
    ]
)

# The kinds in the order rtclake._jsoncols numbers them.
NATIVE_KINDS: tuple[FieldKind, ...] = ("string", "id", "time", "float", "int", "bool", "json")
NATIVE_STRICT = 256  # added to a kind's number: a value the column cannot take is a bad line

Tree = dict[str, Any]  # key -> kind (a leaf) or a nested Tree


def _tree(kinds: dict[str, str]) -> Tree:
    tree: Tree = {}
    for path, kind in kinds.items():
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {path!r} runs through the leaf {part!r}")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"key {path!r} is both a value and an object")
        node.setdefault(leaf, kind)
    return tree


def identity_gap(names: Iterable[str]) -> str:
    """Why a record without a value in the identity columns ``names`` is a bad line."""
    return f"no {', '.join(names)}: the table's identity needs it"


def _attribute(tree: Tree, path: str) -> str:
    """The attribute path of key ``path`` in a struct :func:`_validator_struct` built
    from ``tree`` (its fields are ``f0``, ``f1``, ... in the tree's order)."""
    node, names = tree, []
    for part in path.split("."):
        names.append(f"f{list(node).index(part)}")
        node = node[part]
    return ".".join(names)


def _values(paths: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A getter of the attributes at ``paths``, as a tuple (attrgetter's of one is not)."""
    get = operator.attrgetter(*paths)
    return get if len(paths) > 1 else lambda record: (get(record),)


def _present(record: Any, getters: tuple[Callable[[Any], Any], ...]) -> bool:
    """True if one of ``getters`` finds a value (not null) in ``record``."""
    for get in getters:
        try:
            if get(record) is not None:
                return True
        except AttributeError:  # an object on the way is absent (None)
            continue
    return False


def _validator_struct(name: str, tree: Tree, *, closed: bool = False) -> Any:
    fields = []
    for i, (key, kind) in enumerate(tree.items()):
        if isinstance(kind, dict):
            kind_type: Any = _validator_struct(f"{name}_{i}", kind, closed=closed) | None
        else:
            kind_type = _VALIDATOR_TYPES[kind]
        fields.append((f"f{i}", kind_type, msgspec.field(default=None, name=key)))
    return msgspec.defstruct(name, fields, forbid_unknown_fields=closed)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


TELEMETRY = Table(
    name="telemetry",
    kind="telemetry",
    description="Generic device and application JSON (HTTP, MQTT, WebSocket, gRPC).",
    columns=(
        Column("device_id", "id", ("device_id", "deviceId", "device")),
        # What a message source (MQTT, WebSocket, Kraken's gRPC) knows of a message
        # besides its payload: rtclake.messages puts it under these reserved keys.
        Column("topic", "string", ("_topic", "topic")),
        Column("content_type", "string", ("_content_type",)),
        Column("collector", "string", ("_collector",)),
        Column("metadata", "json", ("_metadata",)),
        # A payload that is not a JSON object (binary, text, an array), as sent.
        Column("payload", "binary", ("_payload_base64",)),
    ),
)

OUTBOX = Table(
    name="outbox",
    kind="message",
    description="Records addressed to named sinks (a broker's ``ctx.emit(record,"
    " sinks=[...])``): ``sinks`` lists them, ``text`` is what a chat sink (Slack) posts;"
    " the rest of the record stays in ``extra``.",
    columns=(
        Column("sinks", "json", ("_sinks",)),
        Column("text", "string", ("text",)),
        Column("device_id", "id", ("device_id", "deviceId", "device")),
    ),
)

DEAD_LETTERS = Table(
    name="dead_letters",
    kind="dead_letter",
    description="Records a sink refused for good (see the sink contract), with the sink,"
    " the reason and the time of the refusal; the record as JSON in ``record``.",
    columns=(
        Column("sink", "string", ("sink",)),
        Column("table_name", "string", ("table_name",)),
        Column("reason", "string", ("reason",)),
        Column("batch", "string", ("batch",)),
        Column("row_record_id", "id", ("row_record_id",)),
        Column("record", "json", ("record",)),
    ),
)

ALERTS = Table(
    name="alerts",
    kind="alert",
    description="Alerts firing and resolved (rtclake.alerts), one row per notification:"
    " ``id`` is unique per notification (a receiver drops a replay by it), ``alert_id``"
    " shared by an alert's firing and resolved rows; ``notify`` the sinks that deliver it.",
    columns=(
        Column("id", "id", ("id",)),
        Column("alert_id", "id", ("alert_id",)),
        Column("rule", "string", ("rule",)),
        Column("state", "string", ("state",)),
        Column("source_table", "string", ("source_table",)),
        Column("metric", "string", ("metric",)),
        Column("condition", "string", ("condition",)),
        Column("scope", "string", ("scope",)),
        Column("scope_value", "string", ("scope_value",)),
        Column("channel_id", "id", ("channel_id",)),
        Column("session_id", "id", ("session_id",)),
        Column("connection_id", "id", ("connection_id",)),
        Column("value", "float", ("value",)),
        Column("threshold", "float", ("threshold",)),
        Column("since", "time", ("since",)),
        Column("message", "string", ("message",)),
        Column("url", "string", ("url",)),
        Column("notify", "json", ("notify",)),
    ),
)

EVENTS = Table(
    name="events",
    kind="event",
    description="Events and webhooks of every source.",
    columns=(
        Column("id", "id", ("id",)),
        Column("channel_id", "id", ("channel_id", "room", "room_name")),
        Column("session_id", "id", ("session_id", "room_sid")),
        Column("connection_id", "id", ("connection_id", "participant_sid")),
        Column("client_id", "id", ("client_id", "participant_identity")),
        Column("track_id", "id", ("track_id", "track_sid")),
    ),
)


@dataclass(frozen=True)
class View:
    """A query-time view over the lake's tables (and earlier views): derived data such as
    rates from counters, created in every query connection after the table views.

    ``sql`` is the view's ``SELECT``; ``columns`` documents each output column (name ->
    meaning with its unit), which ``docs/METRICS.md`` and the API show.
    """

    name: str
    sql: str
    description: str
    columns: tuple[tuple[str, str], ...] = ()


class TableRegistry:
    """The tables this node knows, by name, and the views derived from them."""

    def __init__(self, tables: Iterable[Table] = ()) -> None:
        self._tables: dict[str, Table] = {}
        self.views: dict[str, View] = {}
        self.derivations: list[Any] = []  # rtclake.derive.Derivation, in order
        for table in tables:
            self.add(table)

    def add(self, table: Table) -> None:
        if table.name in self._tables or table.name in self.views:
            raise ValueError(f"table {table.name!r} is declared twice")
        self._tables[table.name] = table

    def add_view(self, view: View) -> None:
        """Add a view; it may read the tables and the views added before it."""
        if view.name in self._tables or view.name in self.views:
            raise ValueError(f"view {view.name!r}: the name is taken")
        self.views[view.name] = view

    def __getitem__(self, name: str) -> Table:
        return self._tables[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tables

    def __iter__(self) -> Any:
        return iter(self._tables.values())

    def names(self) -> list[str]:
        return list(self._tables)
