"""Sora's log tail: the file tail (:mod:`rtclake.sources.file_tail`) on Sora's log
directories, with Sora's rule for which file goes to which table
(:func:`rtclake.integrations.sora.logs.table_for`). Records carry ``source = "sora_log"``."""

from __future__ import annotations

from pathlib import Path

from rtclake.intake import Intake
from rtclake.integrations.sora.config import SoraLogsConfig
from rtclake.integrations.sora.logs import table_for
from rtclake.sources.file_tail import FileTail
from rtclake.tables import TableRegistry

SOURCE = "sora_log"


class SoraLogTail(FileTail):
    """Follows Sora's log directories (``type: sora_logs`` in ``sources:``)."""

    def __init__(
        self,
        config: SoraLogsConfig,
        intake: Intake,
        data_dir: Path,
        *,
        tables: TableRegistry,
        name: str = "sora_logs",
    ) -> None:
        super().__init__(
            config,
            intake,
            data_dir,
            tables=tables,
            table_for=table_for,
            name=name,
            source=SOURCE,
            label="sora logs" if name == "sora_logs" else name,
            # the checkpoint of the name sora_logs keeps its earlier file name
            checkpoint_name="sora-logs.checkpoint.json"
            if name == "sora_logs"
            else f"{name}.checkpoint.json",
        )
