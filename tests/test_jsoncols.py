"""The C++ JSON Lines parser behind the Converter (``rtclake._jsoncols``), on nasty input."""

from __future__ import annotations

import json
import time

import pyarrow as pa

from rtclake import _jsoncols
from rtclake.convert import Converter, entries_to_header
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import Column, Table, TableRegistry

TABLE = Table(
    "nasty",
    "k",
    columns=(
        Column("n", "int", ("n",)),
        Column("x", "float", ("d.x",)),
        Column("s", "string", ("s",)),
        Column("ident", "id", ("ident",)),
        Column("flag", "bool", ("flag",)),
        Column("blob", "json", ("blob",)),
        Column("at", "time", ("at",)),
    ),
)


def parse(*lines: str | bytes) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
    converter = Converter(TableRegistry([TABLE]))
    try:
        head = EntryHeader(
            table="nasty", source="t", stream="s", kind="k", received_us=1, records=len(lines)
        )
        header = entries_to_header("r", 1, [Entry(head, b"", 0)])
        text = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
        parsed = converter.parse(TABLE, text, header)
        rows: pa.Table = converter.finish(parsed)
    finally:
        converter.close()
    return rows.to_pylist(), parsed.bad


def test_erlang_floats_and_big_integers_parse_exactly() -> None:
    (row,), _ = parse('{"n": 9115038255631187967, "d": {"x": 1.75342361155652490234e+12}}')
    assert row["n"] == 9115038255631187967
    assert row["x"] == float("1.75342361155652490234e+12")


def test_a_line_that_is_not_an_object_is_reported_and_the_others_kept() -> None:
    rows, bad = parse('{"n": 1}', '{"n": ', "[1, 2]", "", '{"n": 2}')
    assert [r["n"] for r in rows] == [1, 2]
    assert [index for index, _ in bad] == [1, 2]  # the blank line is neither row nor error
    assert "invalid JSON" in bad[0][1] and "Expected `object`" in bad[1][1]


def test_values_of_the_wrong_type_stay_in_extra() -> None:
    (row,), bad = parse('{"n": "ten", "d": {"x": "far"}, "flag": 1, "at": "yesterday"}')
    assert bad == []
    assert (row["n"], row["x"], row["flag"], row["at"]) == (None, None, None, None)
    assert json.loads(row["extra"]) == {"n": "ten", "d": {"x": "far"}, "flag": 1, "at": "yesterday"}


def test_unknown_keys_with_escapes_and_unicode_round_trip_through_extra() -> None:
    line = (
        '{"s": "caf\\u00e9 \\"q\\"", "we\\"ird\\nkey": [1, {"z": null}], "d": {"x": 2, "y": "ü"}}'
    )
    (row,), _ = parse(line)
    assert row["s"] == 'café "q"'
    assert row["x"] == 2.0
    assert json.loads(row["extra"]) == {'we"ird\nkey': [1, {"z": None}], "d": {"y": "ü"}}


def test_the_last_of_a_repeated_key_counts() -> None:
    (row,), _ = parse('{"s": "first", "s": "second", "n": 1, "n": null, "ident": 7}')
    assert (row["s"], row["n"], row["ident"]) == ("second", None, "7")


def test_a_line_with_only_mapped_keys_has_no_extra() -> None:
    rows, _ = parse('{"n": 1, "d": {"x": 1}, "blob": {"a": [1, 2]}}', '{"n": 2, "d": null}')
    assert [r["extra"] for r in rows] == [None, None]
    assert json.loads(rows[0]["blob"]) == {"a": [1, 2]}


def test_times_as_text_and_as_numbers_become_timestamps() -> None:
    rows, _ = parse(
        '{"at": "2026-11-20T00:00:01.5+09:00"}',
        '{"at": 1.75342361155652490234e+12}',
        '{"at": 1795132800}',
    )
    got = [r["at"].timestamp() for r in rows]
    assert got == [1795100401.5, 1753423611.556525, 1795132800.0]


def test_thousands_of_lines_with_many_shapes_keep_their_values() -> None:
    lines = []
    for i in range(5000):
        record: dict[str, object] = {"n": i, f"k{i % 7}": i}
        if i % 3 == 0:
            record["d"] = {"x": i / 4, f"u{i % 5}": "v"}
        if i % 11 == 0:
            record["s"] = "é" * (i % 13)
        lines.append(json.dumps(record))
    started = time.perf_counter()
    rows, bad = parse(*lines)
    assert time.perf_counter() - started < 60  # a hang guard, not a speed target
    assert bad == [] and len(rows) == 5000
    for i, row in enumerate(rows):
        assert row["n"] == i
        assert row["x"] == (i / 4 if i % 3 == 0 else None)
        assert row["s"] == ("é" * (i % 13) if i % 11 == 0 else None)
        extra = json.loads(row["extra"])
        assert extra[f"k{i % 7}"] == i
        assert extra.get("d") == ({f"u{i % 5}": "v"} if i % 3 == 0 else None)


def test_invalid_json_anywhere_in_a_line_makes_it_bad() -> None:
    rows, bad = parse(
        '{"n": -inf}',
        '{"n": 01}',
        '{"x": 1.}',
        '{"u": {"a": tru}}',  # inside an unmapped value, which is copied to extra
        '{"u": ["\\x"]}',  # a bad escape
        '{"n": 1} trailing',
        '{"n": 7}',
    )
    assert [r["n"] for r in rows] == [7]
    assert [index for index, _ in bad] == [0, 1, 2, 3, 4, 5]
    assert all("invalid JSON" in message for _, message in bad)


def test_a_line_refused_before_it_is_read_leaves_the_line_before_it_whole() -> None:
    """Text that is not UTF-8, a string never closed or a raw control character is
    refused by simdjson before the line is walked; the line before it keeps its values
    (its rollback had cleared them)."""
    for bad in (b"\xff\xfe bad", b'{"s": "never closed', b'{"s": "a\x01"}'):
        rows, found = parse('{"n": 1, "s": "one"}', bad, '{"n": 2, "s": "two"}')
        assert [(r["n"], r["s"]) for r in rows] == [(1, "one"), (2, "two")], bad
        assert [index for index, _ in found] == [1]


def test_unusable_times_stay_in_extra_and_precision_past_microseconds_is_cut() -> None:
    rows, bad = parse(
        '{"at": "2026-02-30T00:00:00Z"}',  # no such day
        '{"at": "2026-11-20T23:59:60Z"}',
        '{"at": -1}',
        '{"at": "2026-11-20T00:00:01.1234567Z"}',
        '{"at": "2026-11-20T24:00:00Z"}',  # the end of the day
        '{"at": "2026-11-20 00:00:01-00:30"}',
        '{"at": 1795132801123456789}',  # nanoseconds
    )
    assert bad == []
    assert [r["at"] for r in rows[:3]] == [None, None, None]
    assert [json.loads(r["extra"])["at"] for r in rows[:3]] == [
        "2026-02-30T00:00:00Z",
        "2026-11-20T23:59:60Z",
        -1,
    ]
    stamps = [r["at"].timestamp() for r in rows[3:]]
    assert stamps == [1795132801.123456, 1795219200.0, 1795134601.0, 1795132801.123457]


def test_numbers_keep_their_text_in_extra_and_ids() -> None:
    (row,), bad = parse('{"ident": 123456789012345678901234567890, "big": 1.50e+400, "z": -0}')
    assert bad == []
    assert row["ident"] == "123456789012345678901234567890"
    assert row["extra"] == '{"big":1.50e+400,"z":-0}'


def test_column_memory_is_kept_for_the_next_block_and_released_on_request() -> None:
    _jsoncols.release_pool()
    lines = [json.dumps({"n": i, "s": "x" * (i % 50), "d": {"x": i / 3}}) for i in range(20000)]
    rows, _ = parse(*lines)
    assert len(rows) == 20000
    assert _jsoncols.pool_bytes() > 20000 * 8  # the int and float buffers came back
    _jsoncols.release_pool()
    assert _jsoncols.pool_bytes() == 0


def test_text_that_starts_like_a_literal_is_invalid_json_not_that_literal() -> None:
    # "not json" had been reported as "Expected `object`, got `null`" (its first letter)
    rows, bad = parse("not json", "trux", '"open', "null", "true", '"s"', '{"n": 3}')
    assert [r["n"] for r in rows] == [3]
    assert [message for _, message in bad[:2]] == ["invalid JSON: not a JSON value"] * 2
    assert bad[2][1].startswith("invalid JSON")
    assert [message for _, message in bad[3:]] == [
        "Expected `object`, got `null`",
        "Expected `object`, got `bool`",
        "Expected `object`, got `str`",
    ]
