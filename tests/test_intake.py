"""The intake: every source hands over through it; it routes, validates, spools, and
counts records received only once they are durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rtclake.catalog import default_registry
from rtclake.config import RouteConfig
from rtclake.errors import InputError, SpoolFull
from rtclake.intake import Intake, make_entry
from rtclake.metrics import Metrics
from rtclake.router import Router
from rtclake.spool import Spool


def intake(tmp_path: Path, max_bytes: int = 1 << 20) -> Intake:
    spool = Spool(
        tmp_path, max_bytes=max_bytes, segment_max_bytes=1 << 20, segment_max_records=1000,
        flush_interval=60,
    )  # fmt: skip
    tables = default_registry()
    router = Router([RouteConfig(stream="alerts-*", table="events")], "telemetry", tables)
    return Intake(spool, Metrics(), router)


def received(i: Intake, source: str) -> float:
    value = i.metrics.registry.get_sample_value(
        "rtclake_records_received_total", {"source": source}
    )
    return value or 0.0


def test_routes_validates_spools_and_counts(tmp_path: Path) -> None:
    async def main() -> None:
        i = intake(tmp_path)
        await i.spool.start()
        table = i.table_for("alerts-disk")
        assert table.name == "events"
        records = i.validate(b'{"id": "a"}\n{"id": "b"}\n', table)
        assert (await i.take("test", "alerts-disk", table, records, idem="k")).records == 2
        assert received(i, "test") == 2
        i.spool.cut()
        await i.spool.flush()
        (entry,) = Spool.read(await i.spool.next_sealed())
        assert (entry.header.table, entry.header.stream, entry.header.idem) == (
            "events",
            "alerts-disk",
            "k",
        )
        await i.spool.close()

    asyncio.run(main())


def test_bad_records_are_refused_before_anything_is_spooled(tmp_path: Path) -> None:
    i = intake(tmp_path)
    with pytest.raises(InputError) as info:
        i.validate(b'{"a": 1}\n{"time": "yesterday"}\n', i.table_for("s"))
    assert (info.value.reason, info.value.line) == ("invalid_record", 2)


def test_a_body_that_begins_with_a_byte_order_mark_is_taken(tmp_path: Path) -> None:
    """Windows tools (PowerShell's Out-File) write a UTF-8 byte order mark; RFC 8259 lets a
    parser pass over it. An object, an array and JSON Lines after one are taken; it had
    been refused as "body must be a JSON object, an array of objects, or JSON Lines"."""
    i = intake(tmp_path)
    table = i.table_for("s")
    bom = b"\xef\xbb\xbf"
    assert i.validate(bom + b'{"id": "a"}', table).n == 1
    assert i.validate(bom + b'[{"id": "a"}, {"id": "b"}]', table).n == 2
    lines = i.validate(bom + b'{"id": "a"}\n{"id": "b"}\n', table)
    assert lines.n == 2 and not lines.body.startswith(bom)
    with pytest.raises(InputError) as info:  # only at the start: elsewhere it is not JSON
        i.validate(b'{"id": "a"}\n' + bom + b'{"id": "b"}\n', table)
    assert info.value.line == 2


def test_records_a_full_spool_refuses_are_not_counted(tmp_path: Path) -> None:
    async def main() -> None:
        i = intake(tmp_path, max_bytes=400)
        await i.spool.start()
        table = i.table_for("s")
        await i.take("test", "s", table, i.validate(b'{"pad": "%s"}' % (b"x" * 200), table))
        with pytest.raises(SpoolFull):
            await i.take("test", "s", table, i.validate(b'{"pad": "%s"}' % (b"y" * 200), table))
        assert received(i, "test") == 1
        await i.spool.close()

    asyncio.run(main())


def test_take_nowait_counts_once_durable(tmp_path: Path) -> None:
    async def main() -> None:
        i = intake(tmp_path)
        await i.spool.start()
        table = i.table_for("s")
        future = i.take_nowait(
            make_entry("tail", "f.jsonl", table, 3), b'{"a":1}\n{"a":2}\n{"a":3}'
        )
        assert received(i, "tail") == 0  # not yet fsync'd
        await future
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert received(i, "tail") == 3
        await i.spool.close()

    asyncio.run(main())


def test_records_over_more_lines_than_their_count_are_refused_not_acknowledged(
    tmp_path: Path,
) -> None:
    """A source that hands over a record spread over several lines (a pretty-printed
    webhook kept as sent) would have it acknowledged, then set aside by the writer as a
    corrupt segment: the intake refuses it before the spool instead."""
    from rtclake.sources.base import Records

    async def main() -> None:
        i = intake(tmp_path)
        await i.spool.start()
        table = i.table_for("s")
        broken = Records(b'{"a":\n 1}', 1, None)
        with pytest.raises(RuntimeError, match="1 records handed over in 2 lines"):
            await i.take("test", "s", table, broken)
        assert received(i, "test") == 0 and i.spool.used_bytes == 0
        await i.spool.close()

    asyncio.run(main())
