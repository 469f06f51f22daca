"""Fault class: odd bodies for every HTTP endpoint, generated from a seed.

Each case starts from a valid body of its endpoint, mutated at the JSON level (values of
other types, odd times, unknown keys, deep nesting, lone surrogates, huge numbers) and at
the byte level (flips, cuts, insertions), with odd framings (arrays, JSON Lines, gzip of
one or several members, trailing garbage) and odd headers. No answer may be a 5xx other
than a deliberate 503/507, and every acknowledged record must be stored exactly once:
each ingest case writes a stream of its own and each Sora case a channel of its own, so
the rows stored for it are counted against what its answer acknowledged.

``RTCLAKE_FUZZ_CASES`` sets the number of cases (``make fuzz`` runs many more) and
``RTCLAKE_FUZZ_SEED`` the seed; a failure names the seed and the case.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import orjson
import pytest

from tests.conftest import Server, wait_for
from tests.faults.conftest import NO_DEDUP

CASES = int(os.environ.get("RTCLAKE_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("RTCLAKE_FUZZ_SEED", "20261202"))
DELIBERATE = {503, 507}

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1e308,
    -0.0,
    "",
    "x" * 5000,
    "2026-11-20T00:00:00",
    "2026-11-20 00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2016-12-31T23:59:60Z",
    "2026-11-20T24:00:00Z",
    "9999-12-31T23:59:59.999999999-23:59",
    "0000-01-01T00:00:00Z",
    "yesterday",
    "\u0000",
    "caf\u00e9 \u2603 \U0001f600",
    [],
    [1, "a", None],
    {},
    {"nested": {"deeper": [1, {"k": "v"}]}},
]
RAW_VALUES = [
    b'"\\ud800"',
    b'"\\udc00"',
    b'"\\ud83d\\ude00"',
    b'"a\\u0000b"',
    b"1e999",
    b"-0",
    b"123456789012345678901234567890",
    b"9223372036854775808",
    b"-18446744073709551616",
    b"[" * 300 + b"]" * 300,
    b'"2026-11-20T00:00:00.000\\u0000Z"',
]


@dataclass
class Case:
    """One request and what storing it must show."""

    path: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    table: str | None = None  # where acknowledged records land
    key: str = ""  # the stream or channel that is the case's own
    rows: Callable[[bytes, httpx.Response], int] | None = None  # rows an ack stands for


def mutate_value(rng: random.Random, doc: dict[str, Any], keep: set[str]) -> None:
    keys = [k for k in doc if k not in keep]
    roll = rng.random()
    if roll < 0.5 and keys:
        doc[rng.choice(keys)] = rng.choice(ODD_VALUES)
    elif roll < 0.7 and keys:
        del doc[rng.choice(keys)]
    elif roll < 0.9:
        doc[rng.choice(["time", "timestamp", "ts", "type", "device_id", "zz", "\u00e9"])] = (
            rng.choice(ODD_VALUES)
        )
    else:
        doc["extra" + str(rng.randrange(5))] = {"a": rng.choice(ODD_VALUES)}


def encode(rng: random.Random, doc: dict[str, Any]) -> bytes:
    body = orjson.dumps(doc)
    if rng.random() < 0.2:  # a raw value JSON libraries would not write
        raw = rng.choice(RAW_VALUES)
        body = body[:-1] + (b', "raw": ' if len(body) > 2 else b'"raw": ') + raw + b"}"
    return body


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        at = rng.randrange(len(data))
        roll = rng.random()
        if roll < 0.4:
            data[at] = rng.randrange(256)
        elif roll < 0.7:
            del data[at : at + rng.randint(1, 20)]
        else:
            data[at:at] = rng.choice([b"\x00", b"\xff", b'"', b"{", b"]", b"\n", b"\\", b",,"])
    return bytes(data)


def frame(rng: random.Random, lines: list[bytes], headers: dict[str, Any]) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        body = b"\n".join(lines) + rng.choice([b"", b"\n", b"\r\n", b"\n\n  \n"])
    else:
        body = b"[" + b",".join(lines) + b"]"
    roll = rng.random()
    if roll < 0.15:
        headers["Content-Encoding"] = "gzip"
        half = len(body) // 2
        members = [gzip.compress(body)]
        if rng.random() < 0.5 and half:  # several members (RFC 1952 allows it)
            members = [gzip.compress(body[:half]), gzip.compress(body[half:])]
        body = b"".join(members)
        if rng.random() < 0.3:
            body += rng.choice([b"garbage", b"\x00\x00", b"\x1f\x8b", body[:7]])
    elif roll < 0.18:
        headers["Content-Encoding"] = rng.choice(["deflate", "br", "gzip, identity", "\u00e9"])
    return body


def ingest_case(rng: random.Random, n: int) -> Case:
    stream = f"fz{n}"
    headers: dict[str, Any] = {}
    lines = []
    for i in range(rng.randint(1, 5)):
        doc: dict[str, Any] = {"seq": i, "device_id": f"d{n}", "v": rng.random()}
        if rng.random() < 0.7:
            doc["time"] = f"2026-11-{rng.randint(1, 30):02d}T12:00:00.{rng.randrange(10**6):06d}Z"
        if rng.random() < 0.6:
            mutate_value(rng, doc, keep={"seq"})
        lines.append(encode(rng, doc))
    body = frame(rng, lines, headers)
    if rng.random() < 0.25:
        body = mutate_bytes(rng, body)
    if rng.random() < 0.05:
        headers["Idempotency-Key"] = rng.choice(["k", "", "\u00e9" * 3, "k" * 300])
    if rng.random() < 0.03:
        headers["Authorization"] = rng.choice([b"Bearer \xff", "Basic x", b"\xe9"])

    def acked(_body: bytes, response: httpx.Response) -> int:
        return int(response.json()["accepted"])

    return Case(f"/ingest/{stream}", body, headers, "telemetry", stream, acked)


def sora_case(rng: random.Random, n: int) -> Case:
    channel = f"fzc{n}"
    kind = rng.choice(["session", "event", "auth", "stats", "exporter"])
    headers: dict[str, Any] = {}
    envelope: dict[str, Any] = {
        "id": f"ID{n}",
        "timestamp": "2026-11-20T00:00:00.000000Z",
        "channel_id": channel,
        "session_id": "S" * 26,
        "connection_id": "C" * 26,
        "client_id": "alice",
        "role": "sendrecv",
        "label": "WebRTC SFU Sora",
        "version": "2025.2.1",
        "node_name": "sora@127.0.0.1",
    }
    if kind in ("stats", "exporter"):
        stats = [
            {"id": f"T{i}", "type": "outbound-rtp", "timestamp": 1.7e12 + i, "bytesSent": i}
            for i in range(rng.randint(1, 4))
        ]
        for stat in stats:
            if rng.random() < 0.3:
                mutate_value(rng, stat, keep={"id", "type"})
        envelope |= {"type": "connection.rtc", "stats": stats}
        if kind == "stats":
            path = "/sora/webhooks/stats"
            headers["sora-stats-webhook-type"] = "connection.rtc"
        else:
            path = "/sora/stats-exporter"
            headers["x-sora-stats-exporter-type"] = "connection.user-agent"
            envelope["type"] = "connection.user-agent"
        table = "rtc_stats"
    else:
        envelope["type"] = {
            "session": "session.created",
            "event": "connection.created",
            "auth": "connection.auth",
        }[kind]
        path = f"/sora/webhooks/{kind}"
        table = "sessions" if kind == "session" else "sora_events"
    if rng.random() < 0.5:
        mutate_value(rng, envelope, keep={"id", "channel_id", "stats"})
    body = encode(rng, envelope)
    if rng.random() < 0.2:
        body = mutate_bytes(rng, body)

    return Case(path, body, headers, table, channel, lambda sent, _: sora_rows(table, sent))


def sora_rows(table: str, sent: bytes) -> int:
    """Rows an acknowledged Sora body stands for (its channel is read by :func:`key_of`)."""
    return len(msgspec.json.decode(sent, type=_Sent).stats or ()) if table == "rtc_stats" else 1


def key_of(case: Case) -> str | None:
    """The stream or channel the case's rows carry: a byte mutation may have changed a
    Sora body's channel; None if it is not one of the fuzz's (not counted)."""
    if case.path.startswith("/ingest/"):
        return case.key
    channel = msgspec.json.decode(case.body, type=_Sent).channel_id
    return channel if isinstance(channel, str) and channel.startswith("fz") else None


class _Sent(msgspec.Struct):
    """What the count needs of a Sora body; the other keys are skipped unread (they may
    hold numbers no float can, such as 1e999)."""

    channel_id: Any = None
    stats: list[msgspec.Raw] | None = None


QUERIES = [
    b'{"sql": "SELECT count(*) FROM telemetry"}',
    b'{"sql": "SELECT max(time) - min(time), 1 AS a, 2 AS a FROM telemetry"}',
    b'{"sql": "SELECT * FROM telemetry t JOIN telemetry u USING (record_id) LIMIT 3"}',
    b'{"sql": "SELECT 170141183460469231731687303715884105727::HUGEINT", "max_rows": 1}',
    b'{"sql": "SELECT * FROM read_text(\'/etc/passwd\')"}',
    b'{"sql": "SELECT \\"\\ud800\\""}',
    b'{"sql": 5}',
    b'{"sql": "SELECT 1", "max_rows": -1}',
    b"[]",
]


def query_case(rng: random.Random, n: int) -> Case:
    body = rng.choice(QUERIES)
    if rng.random() < 0.5:
        body = mutate_bytes(rng, body)
    return Case("/api/query", body)


def cases(seed: int, count: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for n in range(count):
        roll = rng.random()
        if roll < 0.6:
            yield ingest_case(rng, n)
        elif roll < 0.9:
            yield sora_case(rng, n)
        else:
            yield query_case(rng, n)


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    data.mkdir()
    env = {
        **NO_DEDUP,
        "RTCLAKE_SERVER__MAX_BODY_BYTES": str(256 * 1024),
        "RTCLAKE_SPOOL__FLUSH_INTERVAL": "0.5",
        "RTCLAKE_QUERY__TIMEOUT": "2",
        "RTCLAKE_QUERY__MAX_ROWS": "1000000",
    }
    server = Server(data, env=env).start()
    yield server
    if server.proc is not None:
        server.stop(signal.SIGKILL)


def counts(server: Server, table: str, column: str, prefix: str) -> dict[str, int]:
    result = server.query(
        f"SELECT {column}, count(*) FROM {table} WHERE {column} LIKE '{prefix}%' GROUP BY 1",
        max_rows=1_000_000,
    )
    return {str(key): int(n) for key, n in result["rows"]}


def test_fuzzed_bodies_get_no_5xx_and_every_ack_is_stored_once(fuzz_server: Server) -> None:
    expected: dict[tuple[str, str], int] = {}
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
        for n, case in enumerate(cases(SEED, CASES)):
            headers = {k: v.encode() if isinstance(v, str) else v for k, v in case.headers.items()}
            response = client.post(case.path, content=case.body, headers=headers)
            status = response.status_code
            statuses[status] = statuses.get(status, 0) + 1
            where = f"seed {SEED}, case {n}: {case.path} {case.body[:200]!r} {case.headers}"
            assert status < 500 or status in DELIBERATE, f"{where} -> {status} {response.text}"
            if status >= 400:
                reason = response.json()
                assert reason["error"] and reason["message"], where
            key = key_of(case) if case.table and status in (200, 204) else None
            if case.table and case.rows and key is not None:
                rows = case.rows(case.body, response)
                expected[(case.table, key)] = expected.get((case.table, key), 0) + rows
    assert 200 in statuses and 400 in statuses, statuses  # both kinds of case were made

    def stored() -> dict[tuple[str, str], int]:
        got = {
            ("telemetry", k): v for k, v in counts(fuzz_server, "telemetry", "stream", "fz").items()
        }
        for table in ("rtc_stats", "sessions", "sora_events"):
            got |= {
                (table, k): v for k, v in counts(fuzz_server, table, "channel_id", "fz").items()
            }
        return {k: v for k, v in got.items() if v}

    want = {k: v for k, v in expected.items() if v}
    wait_for(lambda: sum(stored().values()) >= sum(want.values()), 60)
    assert stored() == want  # nothing refused stored, nothing acked lost or doubled
    assert "Traceback" not in fuzz_server.log()
