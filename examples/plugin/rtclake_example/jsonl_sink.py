"""A sink: each batch as JSON Lines files, one per table, in a folder.

The sink contract (``rtclake.sinks.base``): started once, called from one thread, ``write``
returns once the batch is durable and is idempotent (a replayed batch rewrites its own
files: they are named after the batch). A record the destination refuses for good is not
retried: here, a record longer than ``max_record_bytes`` is left out and named in
``Rejected``; rtclake stores it in the ``dead_letters`` table with this sink's name.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from rtclake.durable import write_atomic
from rtclake.registry import BuildContext, ComponentType, SinkConfig
from rtclake.sinks.base import Batch, Rejected, Sink


class JsonlFilesConfig(SinkConfig):
    """``type: jsonl_files``."""

    dir: Path = Field(description="the folder; one subfolder per table")
    max_record_bytes: int = Field(default=65536, gt=0, description="longer records: refused")


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


class JsonlFiles(Sink):
    needs_record_id = True  # each line carries its record id

    def __init__(self, config: JsonlFilesConfig) -> None:
        self.config = config

    def start(self) -> None:
        self.config.dir.mkdir(parents=True, exist_ok=True)

    def write(self, batch: Batch) -> None:
        refused: dict[str, list[tuple[int, str]]] = {}
        for table, rows in batch.tables.items():
            lines = []
            for index, row in enumerate(rows.to_pylist()):
                line = orjson.dumps(row, default=_default)
                if len(line) > self.config.max_record_bytes:
                    reason = f"{len(line)} bytes, more than {self.config.max_record_bytes}"
                    refused.setdefault(table, []).append((index, reason))
                    continue
                lines.append(line + b"\n")
            folder = self.config.dir / table
            folder.mkdir(exist_ok=True)
            write_atomic(folder / f"{batch.name}.jsonl", b"".join(lines))
        if refused:
            raise Rejected(refused)


def build(config: JsonlFilesConfig, ctx: BuildContext) -> JsonlFiles:
    return JsonlFiles(config)


JSONL_FILES = ComponentType("sink", "jsonl_files", JsonlFilesConfig, build, "JSON Lines files.")
