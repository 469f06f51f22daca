"""rtclake benchmarks, run by ``make bench`` (``.venv/bin/python -m bench``).

Each benchmark prints its tables and rewrites its own section of ``docs/BENCHMARKS.md``.
"""

# rtclake before anything that loads pyarrow: its allocator reads its settings then
# (rtclake/__init__.py), and the benchmarks that run in this process measure rtclake's.
import rtclake  # noqa: F401
