"""Names of log files: what logrotate and most loggers append to a rotated copy.

``rtc_stats.jsonl.1``, ``rtc_stats.jsonl.2.gz``, ``rtc_stats.jsonl-20250725`` and
``rtc_stats.jsonl-20250725.gz`` are copies of ``rtc_stats.jsonl``.
"""

from __future__ import annotations

import re

ROTATION_SUFFIX = re.compile(r"(?:\.\d{1,4}|-\d{8}(?:\d{2})?)$")


def unrotated(name: str) -> str:
    """The name of the log a file is (a copy of): without ``.gz`` and a rotation suffix."""
    return ROTATION_SUFFIX.sub("", name.removesuffix(".gz"))
