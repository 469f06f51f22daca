"""rtclake benchmarks, run by ``make bench`` (``.venv/bin/python -m bench``).

Each benchmark prints its tables and rewrites its own section of ``docs/BENCHMARKS.md``.
"""
