"""The generic file tail: any directory of JSON Lines files into any table, by a rule
the configuration injects (Sora's log tail is one such configuration; its rotation,
truncation and crash tests are in test_sora_logs.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rtclake.config import Settings
from rtclake.service import Service
from rtclake.sources.file_tail import FileTail, FileTailConfig


def test_any_json_lines_log_into_any_table(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.jsonl").write_text(
        '{"device_id": "a", "time": "2026-11-20T00:00:00Z"}\n{"device_id": "b"}\n'
    )
    (logs / "other.txt").write_text("not followed\n")

    async def main() -> list[list[object]]:
        settings = Settings(data_dir=tmp_path / "data", node="t", spool={"flush_interval": 0.1})
        service = Service(settings)
        tail = FileTail(
            FileTailConfig(dirs=[logs], poll_interval=0.05, rotate_wait=0),
            service.intake,
            settings.data_dir,
            tables=service.tables,
            table_for=lambda name: "telemetry" if name == "app.jsonl" else None,
            source="app_log",
        )
        await service.start()
        try:
            await tail.poll_once()
            assert await service.writer.drain(10)
            sql = "SELECT source, stream, device_id FROM telemetry ORDER BY device_id"
            return service.query.run(sql).rows()
        finally:
            await tail.stop()
            await service.stop()

    assert asyncio.run(main()) == [["app_log", "app", "a"], ["app_log", "app", "b"]]
    assert (tmp_path / "data" / "file-tail.checkpoint.json").exists()
