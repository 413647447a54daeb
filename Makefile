# Two commands matter (README.md):
#   make demo   set up, export the embedded default (demo -> ./export + ./warehouse.duckdb), open the UI
#   make test   set up everything the tests need, then run them (this is what .ci/run calls)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 3000
UI_LOG_LEVEL ?= error
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup run demo ui test setup-test check clean debian-test-packages bench profile

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
	@$(BIN)/python -m mixpanel_assets.cli demo

# Started in $(DAGSTER_HOME), whose dagster.yaml is the instance's configuration (setup copies it
# there): started in the checkout, Dagster warns that ./dagster.yaml "will not be used". Given a
# workspace file (workspace.yaml names the code location), `dg dev` serves it as is, from any folder.
# The services' own log lines at UI_LOG_LEVEL and above: at info the daemon says every minute that no
# schedule is running, and a new instance's daemon warns "No cursor for event type ..." once; the
# runs' logs and the daemons' state are in the UI (Runs; Deployment -> Daemons). UI_LOG_LEVEL=info
# shows everything.
ui: setup  ## the Dagster UI and daemon, on 127.0.0.1 only
	@echo "Dagster UI: http://$(HOST):$(PORT) (ready in a minute or so; Ctrl-C stops it)"
	@cd $(DAGSTER_HOME) && $(CURDIR)/$(BIN)/dg dev -w $(CURDIR)/workspace.yaml -h $(HOST) -p $(PORT) \
	  --log-level $(UI_LOG_LEVEL) --code-server-log-level $(UI_LOG_LEVEL)

demo: run ui

# dg compares the project's .venv with the activated one ($$VIRTUAL_ENV) and warns when they differ:
# say which one is in use, as activating it would.
check: setup  ## definitions load and validate, as the UI would load them
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(BIN)/dg check defs

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

# Two workers, one test file each at a time (--dist loadfile): the suite waits on servers and
# subprocesses as much as it computes, and a file's session fixtures then start once per worker.
TEST_WORKERS ?= 2
test: setup-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: setup $(VENV)/.bench-installed  ## export speed/memory vs baselines -> benchmarks/README.md (not part of make test); BEFORE=<checkout> adds its rows
	@command -v pigz >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pigz >/dev/null; }
	$(BIN)/python benchmarks/run.py $(if $(BEFORE),--before $(BEFORE)) $(BENCH_ARGS)

profile: setup $(VENV)/.bench-installed  ## where the 1M-event job's CPU time goes (py-spy), by stage and process -> benchmarks/README.md
	$(BIN)/python benchmarks/profile_job.py --readme $(PROFILE_ARGS)

clean:  ## back to the checkout as cloned: venvs, node_modules, run outputs, caches, build outputs, benchmark data
	rm -rf $(VENV) .venv-bq node_modules .dagster_home export warehouse.duckdb warehouse.duckdb.lock .mixpanel_assets \
	  test-artifacts .hypothesis .pytest_cache .ruff_cache build *.egg-info benchmarks/data benchmarks/out
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
