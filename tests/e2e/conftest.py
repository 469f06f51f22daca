"""The opt-in end-to-end suite (``make e2e``: ``pytest -m e2e tests/e2e``): other engines
read the lake. ``make test`` deselects it (``-m 'not e2e'`` in pyproject's addopts) and
never imports pyspark; here, a test that needs it skips when it is not installed.

The figures the tests measure (rows, files, seconds) are printed after the run."""

from __future__ import annotations

import pytest

FIGURES = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> list[str]:
    """Lines for the run's summary (what the test measured, for the record)."""
    return pytestconfig.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("e2e figures")
        for line in lines:
            terminalreporter.write_line(line)
