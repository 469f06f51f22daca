"""The router: the one place that chooses a stream's table."""

from __future__ import annotations

import pytest

from rtclake.catalog import default_registry
from rtclake.config import RouteConfig
from rtclake.errors import ConfigError, InputError
from rtclake.router import Router


def router(*routes: tuple[str, str], default: str = "telemetry") -> Router:
    return Router([RouteConfig(stream=s, table=t) for s, t in routes], default, default_registry())


def test_the_first_matching_pattern_wins_then_the_default() -> None:
    r = router(("alerts-*", "events"), ("alerts-disk", "telemetry"))
    assert r.table_for("alerts-disk").name == "events"
    assert r.table_for("sensors").name == "telemetry"


def test_an_unknown_table_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown table 'nope'.*telemetry"):
        router(("x", "nope"))
    with pytest.raises(ConfigError, match="unknown table 'nope'"):
        router(default="nope")


@pytest.mark.parametrize("stream", ["", "-x", ".hidden", "a b", "é", "a" * 129, "a/b"])
def test_an_invalid_stream_name_is_refused(stream: str) -> None:
    with pytest.raises(InputError) as info:
        router().table_for(stream)
    assert info.value.reason == "bad_stream"
