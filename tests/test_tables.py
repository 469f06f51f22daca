"""Table declarations: validation at the edge and the columnar projection agree."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest

from rtclake.catalog import default_registry
from rtclake.convert import Converter
from rtclake.intake import make_entry
from rtclake.integrations.livekit.tables import LIVEKIT_ANALYTICS_EVENTS
from rtclake.integrations.sora.tables import RTC_STATS
from rtclake.records import Record, record_id, records
from rtclake.spool import Entry, EntryHeader
from rtclake.tables import EVENTS, TELEMETRY, Column, Table, TableRegistry

RECEIVED_US = 1_763_899_200_000_000  # 2025-11-23T12:00:00Z


def entry(
    body: bytes, *, table: str = "telemetry", idem: str | None = None, index: int = 0
) -> Entry:
    lines = body.count(b"\n") + 1
    head = EntryHeader(
        table=table,
        source="http",
        stream="s",
        kind="k",
        received_us=RECEIVED_US,
        records=lines,
        idem=idem,
    )
    return Entry(head, body, index)


def convert(*entries: Entry) -> dict[str, list[dict[str, object]]]:
    converter = Converter(default_registry())
    try:
        tables = converter.convert("spool", 7, entries)
    finally:
        converter.close()
    return {name: table.to_pylist() for name, table in tables.items()}


def test_known_keys_become_columns_and_the_rest_goes_to_extra() -> None:
    (row,) = convert(entry(b'{"device_id": 42, "type": "reading", "t": 1, "nested": {"a": [1]}}'))[
        "telemetry"
    ]
    assert row["device_id"] == "42"
    assert row["type"] == "reading"
    assert msgspec.json.decode(row["extra"]) == {"t": 1, "nested": {"a": [1]}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"2026-11-23T12:00:00.123456Z"', dt.datetime(2026, 11, 23, 12, 0, 0, 123456)),
        ('"2026-11-23T21:00:00+09:00"', dt.datetime(2026, 11, 23, 12, 0, 0)),
        ("1763899200", dt.datetime(2025, 11, 23, 12, 0, 0)),
        ("1763899200.5", dt.datetime(2025, 11, 23, 12, 0, 0, 500000)),
        ("1763899200123", dt.datetime(2025, 11, 23, 12, 0, 0, 123000)),
        ("1.75342361155652490234e+12", dt.datetime(2025, 7, 25, 6, 6, 51, 556525)),
        ("1763899200123456", dt.datetime(2025, 11, 23, 12, 0, 0, 123456)),
        ("1763899200123456789", dt.datetime(2025, 11, 23, 12, 0, 0, 123457)),
    ],
)
def test_time_is_read_from_rfc3339_or_epoch_numbers(value: str, expected: dt.datetime) -> None:
    (row,) = convert(entry(b'{"time": %s}' % value.encode()))["telemetry"]
    assert row["time"] == expected.replace(tzinfo=dt.UTC)


def test_missing_time_falls_back_to_received_at() -> None:
    (row,) = convert(entry(b'{"v": 1}'))["telemetry"]
    assert row["time"] == row["received_at"]
    assert row["time"] == dt.datetime(2025, 11, 23, 12, tzinfo=dt.UTC)


def test_a_time_of_its_own_equal_to_the_arrival_is_not_taken_for_the_arrival() -> None:
    """A row whose time equals its arrival was timed at its arrival (the lake's repeat
    check gives it a window); an own time equal to the arrival moves the arrival on."""
    same = b'{"time": "2025-11-23T12:00:00Z", "v": 1}'
    rows = convert(entry(same + b'\n{"v": 2}'))["telemetry"]
    arrival = dt.datetime(2025, 11, 23, 12, tzinfo=dt.UTC)
    assert [r["time"] for r in rows] == [arrival, arrival]
    assert rows[0]["received_at"] == arrival + dt.timedelta(microseconds=1)
    assert rows[1]["received_at"] == arrival


def test_record_ids_follow_the_documented_rule() -> None:
    rows = convert(
        entry(b'{"time": 1, "v": 1}', index=0),
        entry(b'{"v": 2}\n{"v": 2}', index=1),
        entry(b'{"v": 3}', idem="req-9", index=2),
    )["telemetry"]
    by_v = {}
    for row in rows:
        by_v.setdefault(msgspec.json.decode(row["extra"])["v"], []).append(row["record_id"])
    assert by_v[1] == [record_id("http", "s", '{"time": 1, "v": 1}')]
    assert sorted(by_v[2]) == sorted(
        [record_id("http", "s", "spool:7:1:1"), record_id("http", "s", "spool:7:1:2")]
    )
    assert by_v[3] == [record_id("http", "s", "req-9:1")]


def test_the_record_id_hashes_the_line_without_the_spaces_around_it() -> None:
    # the rule (records.record_id, which intake.py mirrors for the edges) strips spaces
    # only: a tab is JSON whitespace too, and stays part of the text hashed
    lines = [b'   {"time": 1, "v": 4}  ', b'\t{"time": 1, "v": 5} ', b'{"time": 1, "v": 6}']
    rows = convert(entry(b"\n".join(lines)))["telemetry"]
    by_v = {msgspec.json.decode(row["extra"])["v"]: row["record_id"] for row in rows}
    assert by_v == {
        4: record_id("http", "s", '{"time": 1, "v": 4}'),
        5: record_id("http", "s", '\t{"time": 1, "v": 5}'),
        6: record_id("http", "s", '{"time": 1, "v": 6}'),
    }


def test_a_record_twice_in_one_batch_gets_one_record_id() -> None:
    rows = convert(entry(b'{"time": 5, "v": 1}\n{"time": 5, "v": 1}\n{"time": 6, "v": 1}'))
    assert len({row["record_id"] for row in rows["telemetry"]}) == 2


def test_nested_keys_become_columns_and_leave_the_rest_in_extra() -> None:
    table = Table(
        "nested",
        "k",
        columns=(
            Column("bytes", "int", ("data.bytes",)),
            Column("rtt", "float", ("data.rtt",)),
            Column("ok", "bool", ("ok",)),
        ),
        identity=("rtt", "bytes"),
        identity_required=False,  # the second line has neither: its nulls identify it
    )
    converter = Converter(TableRegistry([table]))
    try:
        head = EntryHeader(
            table="nested", source="a", stream="s", kind="k", received_us=RECEIVED_US, records=2
        )
        body = b'{"id": "x", "ok": true, "data": {"bytes": 7, "rtt": 1.5e-2, "codec": "vp9"}}\n'
        body += b'{"id": "y", "data": {"bytes": "n/a"}}'
        result = converter.convert("r", 1, [Entry(head, body, 0)])["nested"]
    finally:
        converter.close()
    rows = {msgspec.json.decode(r["extra"])["id"]: r for r in result.to_pylist()}
    first, second = rows["y"], rows["x"]
    assert (first["bytes"], first["rtt"], first["ok"]) == (None, None, None)
    # A value that does not fit its column is not dropped: it stays in extra.
    assert msgspec.json.decode(first["extra"]) == {"id": "y", "data": {"bytes": "n/a"}}
    assert (second["bytes"], second["rtt"], second["ok"]) == (7, 0.015, True)
    assert msgspec.json.decode(second["extra"]) == {"id": "x", "data": {"codec": "vp9"}}
    with pytest.raises(msgspec.ValidationError, match=r"\$\.data\.bytes"):
        table.validator().decode(b'{"data": {"bytes": "n/a"}}')


def test_keys_a_column_passes_over_stay_in_extra_nested_or_not() -> None:
    """A column takes the first of its keys that has a value (null is none); another one
    holding another value stays in extra as it was sent, inside its objects; a copy of
    the value taken (Sora's rtc_id beside rtc_data.id) is not repeated there, nor a key
    another column takes alone."""
    table = Table(
        "aliases",
        "k",
        columns=(
            Column("room", "id", ("room.sid", "egress.roomId", "roomId")),
            Column("stamp", "time", ("timestamp",)),
        ),
    )
    lines = [
        b'{"room": {"sid": "R1", "name": "n"}, "egress": {"roomId": "R2", "status": 1}}',
        b'{"room": {"sid": null}, "egress": {"roomId": "R2"}, "roomId": "R\\u0034"}',
        b'{"roomId": "R3", "time": 1, "timestamp": 2, "ts": 1.50}',
        b'{"room": {"sid": "R1"}, "roomId": "R1", "time": "1970-01-01T00:00:01Z", "ts": 1}',
    ]
    converter = Converter(TableRegistry([table]))
    try:
        head = EntryHeader(table="aliases", source="a", stream="s", kind="k",
                           received_us=RECEIVED_US, records=len(lines))  # fmt: skip
        rows = converter.convert("r", 1, [Entry(head, b"\n".join(lines), 0)])["aliases"]
    finally:
        converter.close()
    assert rows["room"].to_pylist() == ["R1", "R2", "R3", "R1"]
    assert rows["extra"].to_pylist() == [
        '{"room":{"name":"n"},"egress":{"roomId":"R2","status":1}}',
        '{"roomId":"R\\u0034"}',  # as sent
        '{"ts":1.50}',  # timestamp is the stamp column's
        None,  # the same room and the same time twice
    ]
    seconds = [t.timestamp() for t in rows["time"].to_pylist()]
    assert seconds[2:] == [1.0, 1.0]
    assert rows["stamp"][2].as_py() == dt.datetime(1970, 1, 1, 0, 0, 2, tzinfo=dt.UTC)


def test_same_entries_give_the_same_rows() -> None:
    body = b'{"v": 1}\n{"time": "2026-01-01T00:00:00Z", "v": 2}'
    first, second = convert(entry(body))["telemetry"], convert(entry(body))["telemetry"]
    assert sorted(first, key=str) == sorted(second, key=str)
    assert len(first) == 2


def test_validator_rejects_wrong_types_of_mapped_keys() -> None:
    decode = TELEMETRY.validator().decode
    decode(b'{"time": "2026-11-23T12:00:00Z", "device_id": 5, "anything": [1, {"x": null}]}')
    for bad in (b'{"time": "yesterday"}', b'{"time": true}', b'{"type": 5}', b"[1]"):
        with pytest.raises(msgspec.ValidationError):
            decode(bad)


def test_a_required_identity_is_checked_alike_at_the_edge_and_in_imports() -> None:
    """rtc_stats needs its whole identity; LiveKit's analytics identities hold nulls (a
    room's event names no participant or track), so such an event is taken by the edge
    and by an import alike (an import had skipped it as a bad line)."""
    assert RTC_STATS.required_identity == ("connection_id", "stats_id", "rtc_timestamp")
    assert LIVEKIT_ANALYTICS_EVENTS.required_identity == ()
    room = b'{"id":"AE_1","type":"ROOM_CREATED","timestamp":"2026-01-01T00:00:00Z","roomId":"R"}'
    no_room = b'{"type":"ROOM_CREATED","timestamp":"2026-01-01T00:00:00Z"}'
    stat = b'{"rtc_id":"s","rtc_timestamp":1764924000000,"rtc_type":"codec"}'
    converter = Converter(default_registry())
    try:
        for table, line, bad in (
            (LIVEKIT_ANALYTICS_EVENTS, room, []),
            (LIVEKIT_ANALYTICS_EVENTS, no_room, []),
            (RTC_STATS, stat, [(0, "no connection_id: the table's identity needs it")]),
        ):
            header = make_entry("file", "s", table, 1)
            parsed = converter.parse_block(table, line, "import", 1, header)
            assert (parsed.rows, parsed.bad) == (1 - len(bad), bad)
            if bad:
                with pytest.raises(msgspec.ValidationError, match=bad[0][1]):
                    table.checker()(line)
            else:
                table.checker()(line)
    finally:
        converter.close()


def test_events_table_maps_source_identifiers() -> None:
    body = b'{"type": "session.created", "channel_id": "c", "session_id": "s1", "x": 1}'
    (row,) = convert(entry(body, table="events"))["events"]
    assert (row["channel_id"], row["session_id"], row["type"]) == ("c", "s1", "session.created")
    assert set(EVENTS.schema.names) >= {"connection_id", "client_id", "track_id", "extra"}


def test_rows_read_back_as_typed_records() -> None:
    converter = Converter(default_registry())
    try:
        tables = converter.convert("spool", 1, [entry(b'{"device_id": "d", "v": 1}')])
    finally:
        converter.close()
    (record,) = records("telemetry", tables["telemetry"])
    assert isinstance(record, Record)
    assert record.ids["device_id"] == "d"
    assert {record.ids[k] for k in ("topic", "content_type", "metadata", "payload")} == {None}
    assert record.payload == {"v": 1}
    assert record.time.tzinfo is not None
