"""The lake sink: Parquet files, Hive-partitioned by table and UTC date.

Layout: ``ROOT/TABLE/date=YYYY-MM-DD/NODE-RUN-SEGMENT.parquet``. The name is derived
from the batch, so a replayed batch overwrites its own earlier file instead of adding a
second copy. Each file is written under a hidden temporary name, fsync'd, then renamed,
so a reader (DuckDB's glob) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rtclake.sinks.base import Batch, Sink
from rtclake.tables import TableRegistry


def partition_dates(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """Split a table by the UTC date of its ``time`` column."""
    days = pc.floor_temporal(table["time"], unit="day")
    out = []
    for day in pc.unique(days):
        part = table.filter(pc.equal(days, day))
        out.append((day.as_py().strftime("%Y-%m-%d"), part))
    return sorted(out, key=lambda pair: pair[0])


class LakeSink(Sink):
    """Writes every batch as Parquet into a local folder."""

    name = "lake"
    needs_record_id = False  # derived from the identity columns by the query views

    def __init__(
        self,
        root: str | Path,
        tables: TableRegistry,
        *,
        compression: str = "zstd",
        compression_level: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.tables = tables
        self.compression = compression
        self.compression_level = compression_level

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, batch: Batch) -> None:
        for table_name, table in batch.tables.items():
            if table.num_rows == 0:
                continue
            stored = self.tables[table_name].stored_schema.names
            for date, part in partition_dates(table.select(stored)):
                folder = self.root / table_name / f"date={date}"
                self._write_file(folder, f"{batch.name}.parquet", part)

    def _write_file(self, folder: Path, name: str, table: pa.Table) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            pq.write_table(
                table,
                fh,
                compression=self.compression,
                compression_level=self.compression_level,
                use_dictionary=True,
                write_statistics=True,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
