"""How Sora prints its log lines, for code that writes them (``rtclake demo``, the
benchmarks' corpus): ids in Sora's Base32 alphabet, floats in Erlang's exponent form, and
the ``rtc_stats.jsonl`` lines of one getStats report.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import orjson

# Crockford's Base32 (no I, L, O, U), the alphabet of Sora's 26-character ids.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def sora_id(rng: random.Random) -> str:
    """A 26-character id, as Sora prints connection, session, client and log ids."""
    return "".join(rng.choices(ALPHABET, k=26))


def erlang(value: float) -> orjson.Fragment:
    """A float as Sora's JSON encoder (Erlang) prints it, 21 significant digits and a
    two-digit exponent at least: ``1.75342361155652490234e+12``, ``7.6799...e+01``."""
    return orjson.Fragment(f"{value:.20e}")


def number(value: float) -> int | orjson.Fragment:
    """A JavaScript number as it reaches Sora's log: a whole number stays an integer (the
    browser writes ``30``, not ``30.0``), any other becomes an Erlang float."""
    return int(value) if float(value).is_integer() else erlang(value)


def rtc_stats_lines(envelope: dict[str, Any], stats: Iterable[dict[str, Any]]) -> list[bytes]:
    """The ``rtc_stats.jsonl`` lines (without newline) of one getStats report: per
    RTCStats object, the envelope, the object as ``rtc_data``, then ``rtc_id``,
    ``rtc_timestamp`` and ``rtc_type`` (Sora's order). Floats are given as :func:`erlang`."""
    head = orjson.dumps(envelope)[:-1] + b',"rtc_data":'
    return [
        head
        + orjson.dumps(stat)
        + b","
        + orjson.dumps(
            {"rtc_id": stat["id"], "rtc_timestamp": stat["timestamp"], "rtc_type": stat["type"]}
        )[1:]
        for stat in stats
    ]
