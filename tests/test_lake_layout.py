"""The lake's layout: where a batch's file goes, and which files a reader sees."""

from __future__ import annotations

from pathlib import Path

from rtclake.lake import layout


def test_a_batch_has_one_place_per_table_and_date() -> None:
    assert layout.partition("rtc_stats", "2026-12-02") == "rtc_stats/date=2026-12-02"
    assert layout.file_name("n1-run-000000000007") == "n1-run-000000000007.parquet"
    assert not layout.is_data_file(layout.temporary_name("x.parquet"))


def test_readers_see_data_files_only_never_through_links(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    day = root / "telemetry" / "date=2026-12-02"
    day.mkdir(parents=True)
    (day / "b.parquet").write_bytes(b"")
    (day / "a.parquet").write_bytes(b"")
    (day / ".c.parquet.tmp").write_bytes(b"")  # being written
    (day / "notes.txt").write_bytes(b"")
    outside = tmp_path / "secret.parquet"
    outside.write_bytes(b"")
    (day / "link.parquet").symlink_to(outside)
    (root / "telemetry" / "date=2026-12-03").symlink_to(tmp_path)  # a linked date folder
    (root / "telemetry" / "other").mkdir()
    found = layout.local_files(root, "telemetry")
    assert [Path(f).name for f in found] == ["a.parquet", "b.parquet"]
    assert layout.local_files(root, "events") == []
