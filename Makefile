# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates the virtual environment when it is missing and installs the pinned versions.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aloe-installed
# GPAW (the default labeler) is compiled here: against libxc 7 (r2SCAN; built from source into the venv, Debian's
# libxc 5 breaks r2SCAN), OpenBLAS and FFTW (Debian packages). See install/.
GPAW_CONFIG ?= $(CURDIR)/install/gpaw-siteconfig.py
GPAW_VERSION := $(shell sed -n 's/^gpaw==//p' constraints.txt)
LIBXC_PREFIX := $(abspath $(VENV))/libxc

.PHONY: install demo test test-slow test-slurm test-all lint bench study clean

$(STAMP): pyproject.toml constraints.txt install/gpaw-siteconfig.py install/libxc-requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@sh install/debian-packages.sh $(BIN)/python
	@# gpaw first, built from source with our site config (never a cached wheel that may lack libxc 7/FFTW);
	@# skipped when the venv already has this version built right (install/check_gpaw.py).
	@$(BIN)/python install/check_gpaw.py $(GPAW_VERSION) >/dev/null 2>&1 || { \
		sh install/build-libxc.sh $(LIBXC_PREFIX) $(BIN)/python && \
		echo "building gpaw $(GPAW_VERSION) with $(GPAW_CONFIG)" && \
		GPAW_CONFIG=$(GPAW_CONFIG) ALOE_LIBXC_PREFIX=$(LIBXC_PREFIX) $(BIN)/python -m pip install --quiet \
		--force-reinstall --no-deps --no-binary gpaw --no-cache-dir -c constraints.txt gpaw; }
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt maml  # test oracle for DIRECT (see pyproject)
	$(BIN)/python install/check_gpaw.py $(GPAW_VERSION)
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aloe run examples/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not slurm"

# A real single-node Slurm cluster (install/local-slurm.sh: apt-get slurm-wlm and munge, root): about 7 minutes
test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests benchmarks
	$(BIN)/ruff format --no-cache --check src tests benchmarks

study: $(STAMP)
	$(BIN)/aloe study examples/study-emt.yaml

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_select.py
	$(BIN)/python benchmarks/bench_bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
