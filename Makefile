# Two commands matter (README.md):
#   make demo   set up, export the embedded default (demo -> ./export + ./warehouse.duckdb), open the UI
#   make test   set up everything the tests need, then run them (this is what .ci/run calls)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 3000
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run demo ui test setup-test check clean debian-test-packages bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test,dev]"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml

run: setup  ## export the newest partitions of every pipeline in mixpanel_assets/dg_defs/pipelines/defs.yaml
	$(BIN)/python -m mixpanel_assets.cli demo

ui: setup  ## the Dagster UI and daemon, on 127.0.0.1 only
	$(BIN)/dg dev -h $(HOST) -p $(PORT)

demo: run ui

check: setup  ## definitions load and validate, as the UI would load them
	$(BIN)/dg check defs

# Azurite (Azure Blob emulator) for the Azure destination tests; npm and Node come from Debian if missing.
node_modules/.bin/azurite-blob: package.json
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null)
	npm install --no-audit --no-fund --no-package-lock --loglevel=error
	touch $@

# bqemulator (BigQuery emulator) in its own venv: its sqlglot pin conflicts with fakesnow's; its
# built-in SQL functions need numpy, which it does not declare.
.venv-bq/.installed:
	$(PYTHON) -m venv .venv-bq
	.venv-bq/bin/pip install -q "bqemulator==1.4.0" numpy
	touch $@

# PostgreSQL (the production-style instance) and headless Chromium for the daemon and browser tests,
# from Debian, only when missing.
debian-test-packages:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromium >/dev/null \
	    || [ ! -d /usr/share/fonts/truetype/dejavu ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    postgresql chromium fonts-dejavu-core >/dev/null; fi

setup-test: setup node_modules/.bin/azurite-blob .venv-bq/.installed debian-test-packages

test: setup-test
	$(BIN)/python -m pytest

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: setup $(VENV)/.bench-installed  ## export speed/memory vs baselines -> benchmarks/README.md (not part of make test); BEFORE=<checkout> adds its rows
	@command -v pigz >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pigz >/dev/null; }
	$(BIN)/python benchmarks/run.py $(if $(BEFORE),--before $(BEFORE)) $(BENCH_ARGS)

clean:  ## back to the checkout as cloned: venvs, node_modules, run outputs, caches, build outputs, benchmark data
	rm -rf $(VENV) .venv-bq node_modules .dagster_home export warehouse.duckdb warehouse.duckdb.lock .mixpanel_assets \
	  test-artifacts .hypothesis .pytest_cache .ruff_cache build *.egg-info benchmarks/data benchmarks/out
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
