# Two commands: `make run` starts rtclake on its embedded defaults, `make test` passes the tests.
# Both create .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
E2E_STAMP := $(VENV)/.installed-e2e

.PHONY: run test lint typecheck pytest bench fuzz services clean e2e

# `make run` installs what running needs; the test tools come with `make test`.
$(RUN_STAMP): pyproject.toml setup.py src/rtclake/_jsoncols.cpp
	bash scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP) scripts/test-deps.sh
	bash scripts/test-deps.sh
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(RUN_STAMP)
	$(BIN)/rtclake run

services:
	bash scripts/services.sh

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP) services
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(TEST_STAMP)
	$(BIN)/python -m bench

# The fault suite's body fuzz at ten times the cases of `make test`.
fuzz: $(TEST_STAMP)
	RTCLAKE_FUZZ_CASES=30000 $(BIN)/pytest tests/faults/test_fuzz_bodies.py

# Opt-in: Spark (pyspark from PyPI, local mode) reads the live files of the lake's current
# snapshot (`rtclake files TABLE`) and gets the counts and sums DuckDB gets. Needs Java 17+
# (Debian: apt-get install openjdk-17-jre-headless).
$(E2E_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,e2e]'
	touch $@

e2e: $(E2E_STAMP)
	@command -v java >/dev/null || { echo "e2e: Spark needs Java 17+ (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	$(BIN)/pytest -m e2e tests/e2e

clean:
	rm -rf $(VENV) rtclake-data .pytest_cache .mypy_cache .ruff_cache
