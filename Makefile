# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates the virtual environment when it is missing and installs the pinned versions.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aloe-installed

.PHONY: install demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt maml  # test oracle for DIRECT (see pyproject)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aloe prototypes stats --source builtin --no-occupations
	$(BIN)/aloe generate --config examples/generate-quickstart.yaml
	@echo "demo done: candidates in runs/quickstart-generate/chunks, extxyz in runs/quickstart-generate/export"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_select.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
