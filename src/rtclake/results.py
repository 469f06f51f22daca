"""A query result as JSON rows, CSV and table text.

The HTTP API and ``rtclake query`` show results through this module, so a value looks the
same everywhere. Each column is converted from Arrow, guided by DuckDB's type of the column
(Arrow alone cannot tell a ``BIT`` from a ``BLOB``), into values JSON can hold exactly:

- integers beyond JavaScript's safe range (±(2^53 - 1)), ``HUGEINT``, ``UHUGEINT`` and
  ``BIGNUM`` beyond it, become decimal strings; smaller ones stay numbers;
- ``DECIMAL`` is a number while it has at most 15 significant digits (a double holds
  those exactly), otherwise a string with every digit; ``NaN`` and infinities of ``FLOAT``
  and ``DOUBLE`` are the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``;
- ``INTERVAL`` is an ISO 8601 duration (``P1Y2M3DT4H5M6.5S``; a negative part carries its
  own sign, ``PT-1H-30M``); ``BLOB`` is base64; ``BIT`` is its text of 0s and 1s;
- dates, times and timestamps are ISO 8601 (timestamps with a ``Z``), also the ones Python
  cannot hold (years past 9999 as ``+294247-01-10T...``, before year 1 as ``-5877641-...``,
  ``infinity``, ``TIME '24:00:00'``);
- ``UUID`` and ``ENUM`` are text; ``JSON`` goes out as the JSON text it is (an
  ``orjson.Fragment``: however deep it nests); ``LIST``, ``ARRAY``, ``STRUCT``, ``MAP``
  (an object; keys that are not text become their JSON text) and ``UNION`` (its value)
  are converted recursively.

CSV and the table view write the same values: text as it is, everything else as its JSON
text (``true``, ``[1,2]``, ``2026-11-01T10:00:00Z``), NULL as an empty cell.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TextIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc

JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
"""How rtclake encodes JSON: naive timestamps are UTC, and UTC is written ``Z``."""

SAFE_INTEGER = 2**53 - 1
"""The largest integer a JSON reader using doubles (JavaScript) reads exactly."""

_DATE_INFINITY = 2**31 - 1  # DuckDB's DATE 'infinity' in Arrow days; '-infinity' negated
_TIMESTAMP_INFINITY = 2**63 - 1  # and TIMESTAMP 'infinity' in any unit
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# The range of Python's datetime, in seconds and in days from 1970-01-01.
_PY_SECONDS = (-62_135_596_800, 253_402_300_799)
_PY_DAYS = (-719_162, 2_932_896)
_DAY_US = 86_400_000_000


def unique_names(names: Sequence[str]) -> list[str]:
    """Column names made unique: a repeated ``a`` becomes ``a_1``, ``a_2``, ..., skipping
    names the result already has."""
    taken = set(names)
    seen: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 0
        while unique in seen or (n and unique in taken):
            n += 1
            unique = f"{name}_{n}"
        seen.add(unique)
        out.append(unique)
    return out


def is_json(duck_type: Any) -> bool:
    """Whether a DuckDB type is ``JSON`` (text to parse)."""
    return str(duck_type) == "JSON"


def json_columns(table: pa.Table, types: Sequence[Any]) -> list[list[Any]]:
    """Each column of ``table`` as JSON-ready values; ``types`` are DuckDB's, per column."""
    return [
        [v for chunk in table.column(i).chunks for v in _convert(chunk, duck_type)]
        for i, duck_type in enumerate(types)
    ]


def json_rows(table: pa.Table, types: Sequence[Any]) -> list[list[Any]]:
    """The rows of ``table`` as lists of JSON-ready values."""
    columns = json_columns(table, types)
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def text_rows(table: pa.Table, types: Sequence[Any]) -> list[list[str]]:
    """The rows of ``table`` as cells of text, as CSV and the table view show them."""
    columns = [[cell_text(v) for v in column] for column in json_columns(table, types)]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def write_csv(table: pa.Table, types: Sequence[Any], out: TextIO) -> None:
    """``table`` as CSV with a header line (RFC 4180 quoting, ``\\n`` line ends)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows(text_rows(table, types))


def cell_text(value: Any) -> str:
    """One JSON-ready value as a cell: text as it is, others as their JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = orjson.dumps(value, option=JSON_OPTIONS).decode()
    return text[1:-1] if isinstance(value, dt.date | dt.time) else text


# -- conversion of one Arrow array, by DuckDB type -------------------------------------------


def _convert(array: pa.Array, duck_type: Any) -> list[Any]:
    if is_json(duck_type):
        # Passed through as the JSON text it is: parsing it would cost time, and a value
        # nested deeper than orjson writes (254 levels) could not be sent back at all.
        return [None if v is None else orjson.Fragment(v) for v in array.to_pylist()]
    converter = _CONVERTERS.get(duck_type.id)
    return converter(array, duck_type) if converter else array.to_pylist()


def _safe(value: int | None) -> int | str | None:
    return value if value is None or -SAFE_INTEGER <= value <= SAFE_INTEGER else str(value)


def _integers(array: pa.Array, duck_type: Any) -> list[Any]:
    bounds = pc.min_max(array)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or (low >= -SAFE_INTEGER and high <= SAFE_INTEGER):
        return array.to_pylist()  # type: ignore[no-any-return]
    return [_safe(v) for v in array.to_pylist()]


def _hugeint(array: pa.Array, duck_type: Any) -> list[Any]:
    return [None if v is None else _safe(int(v)) for v in array.to_pylist()]


def _uhugeint(array: pa.Array, duck_type: Any) -> list[Any]:
    raw = array.storage.to_pylist() if isinstance(array, pa.ExtensionArray) else array.to_pylist()
    return [None if v is None else _safe(int.from_bytes(v, "little")) for v in raw]


def _bignum(value: bytes) -> int:
    # DuckDB's BIGNUM: a 3-byte header whose top bit is set for positive numbers, then the
    # magnitude big-endian; a negative number has every byte inverted.
    digits = value[3:]
    if value[0] & 0x80:
        return int.from_bytes(digits, "big")
    return -int.from_bytes(bytes(255 - b for b in digits), "big")


def _bignums(array: pa.Array, duck_type: Any) -> list[Any]:
    raw = array.storage.to_pylist() if isinstance(array, pa.ExtensionArray) else array.to_pylist()
    return [None if v is None else _safe(_bignum(v)) for v in raw]


def _decimal(value: Decimal | None) -> float | str | None:
    if value is None:
        return None
    if len(value.normalize().as_tuple().digits) <= 15:
        return float(value)
    return format(value, "f")


def _decimals(array: pa.Array, duck_type: Any) -> list[Any]:
    precision, scale = array.type.precision, array.type.scale
    if precision > 15:
        bounds = pc.min_max(array)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        exact = Decimal(10) ** (15 - scale)
        if low is not None and not (-exact < low and high < exact):
            return [_decimal(v) for v in array.to_pylist()]
    # At most 15 significant digits: the nearest double prints as the same digits.
    return pc.cast(array, pa.float64()).to_pylist()  # type: ignore[no-any-return]


def _float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _floats(array: pa.Array, duck_type: Any) -> list[Any]:
    if array.type == pa.float32():
        # The shortest text of each single-precision value (1.1, not 1.100000023841858).
        texts = pc.cast(array, pa.string()).to_pylist()
        return [None if v is None else _float(float(v)) for v in texts]
    if pc.all(pc.is_finite(array)).as_py() is False:
        return [_float(v) for v in array.to_pylist()]
    return array.to_pylist()  # type: ignore[no-any-return]


def _year(year: int) -> str:
    # ISO 8601's expanded years: a sign past 9999 and before year 1 (0 is 1 BC).
    return f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}"


def _civil(days: int) -> str:
    """A day number from 1970-01-01 as a proleptic Gregorian date, any year.

    Howard Hinnant's ``civil_from_days``."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return f"{_year(yoe + era * 400 + (month <= 2))}-{month:02d}-{day:02d}"


def _date_text(days: int | None) -> str | None:
    if days is None:
        return None
    if abs(days) == _DATE_INFINITY:
        return "infinity" if days > 0 else "-infinity"
    return _civil(days)


def _dates(array: pa.Array, duck_type: Any) -> list[Any]:
    days = array.cast(pa.int32())
    bounds = pc.min_max(days)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None or (_PY_DAYS[0] <= low and high <= _PY_DAYS[1]):
        return array.to_pylist()  # type: ignore[no-any-return]
    return [_date_text(v) for v in days.to_pylist()]


def _clock(seconds: int, fraction: int, width: int) -> str:
    hours, rest = divmod(seconds, 3600)
    text = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{fraction:0{width}d}" if fraction else text


def _times(array: pa.Array, duck_type: Any) -> list[Any]:
    micros = array.cast(pa.int64())
    high = pc.max(micros).as_py()
    if high is None or high < _DAY_US:
        return array.to_pylist()  # type: ignore[no-any-return]
    # DuckDB has TIME '24:00:00', which Python's time has not.
    return [
        None if v is None else _clock(v // 1_000_000, v % 1_000_000, 6) for v in micros.to_pylist()
    ]


def _timestamp_text(value: int | None, per_second: int) -> str | None:
    if value is None:
        return None
    if abs(value) == _TIMESTAMP_INFINITY:
        return "infinity" if value > 0 else "-infinity"
    seconds, fraction = divmod(value, per_second)
    days, seconds = divmod(seconds, 86_400)
    if per_second == 1_000_000_000:
        clock = _clock(seconds, fraction, 9)
    else:  # as Python's datetime prints: microseconds
        clock = _clock(seconds, fraction * (1_000_000 // per_second), 6)
    return f"{_civil(days)}T{clock}Z"


def _timestamps(array: pa.Array, duck_type: Any) -> list[Any]:
    per_second = _PER_SECOND[array.type.unit]
    ticks = array.cast(pa.int64())
    bounds = pc.min_max(ticks)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None:
        return [None] * len(array)
    # Python's datetime holds microseconds and years 1 to 9999; anything else is text.
    if per_second <= 1_000_000 and (
        _PY_SECONDS[0] * per_second <= low and high < (_PY_SECONDS[1] + 1) * per_second
    ):
        return array.to_pylist()  # type: ignore[no-any-return]
    return [_timestamp_text(v, per_second) for v in ticks.to_pylist()]


def _duration(months: int, days: int, nanoseconds: int) -> str:
    def part(value: int, unit: str) -> str:
        return f"{value}{unit}" if value else ""

    sign = -1 if months < 0 else 1
    years, months = divmod(abs(months), 12)
    date = part(sign * years, "Y") + part(sign * months, "M") + part(days, "D")
    sign = -1 if nanoseconds < 0 else 1
    hours, rest = divmod(abs(nanoseconds), 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds, nanos = divmod(rest, 1_000_000_000)
    second = ""
    if seconds or nanos:
        digits = f"{seconds}.{nanos:09d}".rstrip("0").rstrip(".")
        second = f"{'-' if sign < 0 else ''}{digits}S"
    time = part(sign * hours, "H") + part(sign * minutes, "M") + second
    if not date and not time:
        return "PT0S"
    return f"P{date}{'T' + time if time else ''}"


def _intervals(array: pa.Array, duck_type: Any) -> list[Any]:
    return [None if v is None else _duration(*v) for v in array.to_pylist()]


def _blobs(array: pa.Array, duck_type: Any) -> list[Any]:
    return [None if v is None else base64.b64encode(v).decode() for v in array.to_pylist()]


def _bits(array: pa.Array, duck_type: Any) -> list[Any]:
    # DuckDB's BIT: the first byte counts the padding bits at the start of the second.
    return [
        None if v is None else "".join(f"{b:08b}" for b in v[1:])[v[0] :] for v in array.to_pylist()
    ]


def _child(duck_type: Any, name: str) -> Any:
    return next(t for n, t in duck_type.children if n == name)


def _lists(array: pa.Array, duck_type: Any) -> list[Any]:
    values = _convert(array.values, _child(duck_type, "child"))
    offsets = array.offsets.to_pylist()  # into the unsliced values
    valid = array.is_valid().to_pylist()
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(array))]


def _arrays(array: pa.Array, duck_type: Any) -> list[Any]:
    values = _convert(array.values, _child(duck_type, "child"))
    size = array.type.list_size
    start = array.offset  # .values ignores the array's slice
    valid = array.is_valid().to_pylist()
    return [
        values[(start + i) * size : (start + i + 1) * size] if valid[i] else None
        for i in range(len(array))
    ]


def _structs(array: pa.Array, duck_type: Any) -> list[Any]:
    names = [array.type.field(i).name for i in range(array.type.num_fields)]
    fields = [
        _convert(f, _child(duck_type, n)) for f, n in zip(array.flatten(), names, strict=True)
    ]
    valid = array.is_valid().to_pylist()
    return [
        dict(zip(names, (f[i] for f in fields), strict=True)) if valid[i] else None
        for i in range(len(array))
    ]


def _map_key(key: Any) -> str:
    return key if isinstance(key, str) else orjson.dumps(key, option=JSON_OPTIONS).decode()


def _maps(array: pa.Array, duck_type: Any) -> list[Any]:
    keys = [_map_key(k) for k in _convert(array.keys, _child(duck_type, "key"))]
    items = _convert(array.items, _child(duck_type, "value"))
    offsets = array.offsets.to_pylist()  # into the unsliced keys and items
    valid = array.is_valid().to_pylist()
    return [
        dict(
            zip(keys[offsets[i] : offsets[i + 1]], items[offsets[i] : offsets[i + 1]], strict=True)
        )
        if valid[i]
        else None
        for i in range(len(array))
    ]


def _unions(array: pa.Array, duck_type: Any) -> list[Any]:
    kind = array.type
    members = [
        _convert(array.field(i), _child(duck_type, kind.field(i).name))
        for i in range(kind.num_fields)
    ]
    member_of = {code: i for i, code in enumerate(kind.type_codes)}
    # The type ids from the buffer itself: .type_codes ignores the array's slice.
    codes = pa.Array.from_buffers(
        pa.int8(), array.offset + len(array), [None, array.buffers()[1]]
    ).to_pylist()[array.offset :]
    if kind.mode == "dense":
        offsets = pa.Array.from_buffers(
            pa.int32(), array.offset + len(array), [None, array.buffers()[2]]
        ).to_pylist()[array.offset :]
        return [members[member_of[c]][o] for c, o in zip(codes, offsets, strict=True)]
    return [members[member_of[c]][i] for i, c in enumerate(codes)]


_CONVERTERS: dict[str, Callable[[pa.Array, Any], list[Any]]] = {
    "bigint": _integers,
    "ubigint": _integers,
    "hugeint": _hugeint,
    "uhugeint": _uhugeint,
    "bignum": _bignums,
    "decimal": _decimals,
    "float": _floats,
    "double": _floats,
    "date": _dates,
    "time": _times,
    "timestamp": _timestamps,
    "timestamp_s": _timestamps,
    "timestamp_ms": _timestamps,
    "timestamp_ns": _timestamps,
    "timestamp with time zone": _timestamps,
    "interval": _intervals,
    "blob": _blobs,
    "bit": _bits,
    "list": _lists,
    "array": _arrays,
    "struct": _structs,
    "map": _maps,
    "union": _unions,
}
