"""The router: decides which lake table the records of a stream go to.

Routes come from the config (``routes: [{stream: "alerts-*", table: events}]``), are
matched with shell-style patterns in order, and fall back to ``default_table``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from functools import lru_cache

from rtclake.config import RouteConfig
from rtclake.errors import ConfigError, InputError
from rtclake.tables import Table, TableRegistry

STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")


class Router:
    def __init__(
        self, routes: Sequence[RouteConfig], default_table: str, tables: TableRegistry
    ) -> None:
        for name in [default_table, *(r.table for r in routes)]:
            if name not in tables:
                known = ", ".join(tables.names())
                raise ConfigError(f"routes: unknown table {name!r} (known: {known})")
        self._routes = [(re.compile(fnmatch.translate(r.stream)), tables[r.table]) for r in routes]
        self._default = tables[default_table]
        self.table_for = lru_cache(maxsize=4096)(self._table_for)

    def _table_for(self, stream: str) -> Table:
        """The table for ``stream``; raises :class:`InputError` for an invalid name."""
        if not STREAM_NAME.fullmatch(stream):
            raise InputError(
                "bad_stream",
                f"stream name {stream[:64]!r} is invalid: use 1-128 letters, digits, '_.:-'",
            )
        for pattern, table in self._routes:
            if pattern.match(stream):
                return table
        return self._default
