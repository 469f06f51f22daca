# Two commands: `make run` starts rtclake on its embedded defaults, `make test` passes the tests.
# Both create .venv and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench fuzz services clean

$(STAMP): pyproject.toml setup.py src/rtclake/_jsoncols.cpp
	bash scripts/system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/rtclake run

services:
	bash scripts/services.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) services
	$(BIN)/pytest

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m bench

# The fault suite's body fuzz at ten times the cases of `make test`.
fuzz: $(STAMP)
	RTCLAKE_FUZZ_CASES=30000 $(BIN)/pytest tests/faults/test_fuzz_bodies.py

clean:
	rm -rf $(VENV) rtclake-data .pytest_cache .mypy_cache .ruff_cache
