"""Names of log files: what logrotate and most loggers append to a rotated copy.

``rtc_stats.jsonl.1``, ``rtc_stats.jsonl.2.gz``, ``rtc_stats.jsonl-20250725`` and
``rtc_stats.jsonl-20250725.gz`` are copies of ``rtc_stats.jsonl``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

ROTATION_SUFFIX = re.compile(r"(?:\.\d{1,4}|-\d{8}(?:\d{2})?)$")


def unrotated(name: str) -> str:
    """The name of the log a file is (a copy of): without ``.gz`` and a rotation suffix."""
    return ROTATION_SUFFIX.sub("", name.removesuffix(".gz"))


def _age(name: str) -> tuple[int, int, str]:
    """Sorts a log's files oldest first: the numbered copies from the highest number
    (``.3`` was rotated before ``.2``), the dated ones from the earliest date, then the
    log itself."""
    suffix = ROTATION_SUFFIX.search(name.removesuffix(".gz"))
    if suffix is None:
        return (1, 0, "")
    text = suffix.group()
    return (0, -int(text[1:]), "") if text.startswith(".") else (0, 0, text[1:])


def oldest_first(paths: Iterable[Path]) -> list[Path]:
    """``paths`` with the files of each log (one folder's ``rtc_stats.jsonl`` and its
    rotated copies) in the order their lines were written, oldest first; the logs in
    order of folder and name.

    What is derived from a log as it is read (rates from consecutive samples, one row
    per report, spans of activity) takes its lines in that order: read newest first, a
    stream's samples at the start of each older file had no predecessor."""
    return sorted(paths, key=lambda p: (str(p.parent), unrotated(p.name), _age(p.name)))
