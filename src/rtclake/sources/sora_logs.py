"""Sora's log tail: the file tail (:mod:`rtclake.sources.file_tail`) on Sora's log
directories, with Sora's rule for which file goes to which table
(:func:`rtclake.sora.logs.table_for`). Records carry ``source = "sora_log"``."""

from __future__ import annotations

from pathlib import Path

from rtclake.catalog import default_registry
from rtclake.config import SoraLogsConfig
from rtclake.intake import Intake
from rtclake.sora.logs import table_for
from rtclake.sources.file_tail import FileTail
from rtclake.tables import TableRegistry

SOURCE = "sora_log"


class SoraLogTail(FileTail):
    """Follows Sora's log directories (``sora.logs`` in the configuration)."""

    def __init__(
        self,
        config: SoraLogsConfig,
        intake: Intake,
        data_dir: Path,
        *,
        tables: TableRegistry | None = None,
    ) -> None:
        super().__init__(
            config,
            intake,
            data_dir,
            tables=tables or default_registry(),
            table_for=table_for,
            name="sora_logs",
            source=SOURCE,
            label="sora logs",
            checkpoint_name="sora-logs.checkpoint.json",
        )
