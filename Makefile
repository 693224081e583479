# Covenant developer entry points. Every target installs what it needs on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FUNCTION ?= mobile
EVENT ?= events/health.json

# Node 20 works for synth; jsii's end-of-life banner would bury the output.
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1

.PHONY: dev test lint invoke tail reset clean preflight

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

## dev: run the local six-region stack (PostgreSQL primary + replica, NATS JetStream, gateway on :8000)
dev: $(STAMP)
	$(PY) -m devstack run

## test: lint, type-check and run the whole test suite against real PostgreSQL and nats-server
test: $(STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## preflight: before `cdk deploy`, check the target account (AWS credentials in the environment)
preflight: $(STAMP)
	$(PY) -m tools.preflight

## invoke: run one function locally with an event file: make invoke FUNCTION=mobile EVENT=events/health.json
invoke: $(STAMP)
	$(PY) -m devstack invoke $(FUNCTION) $(EVENT)

## tail: follow a JetStream stream of the running stack: make tail STREAM=AUDIT
STREAM ?= COVENANT
tail: $(STAMP)
	$(PY) -m devstack tail $(STREAM)

## reset: delete the local stack's data (PostgreSQL, NATS) so the next `make dev` starts fresh
# Without .venv no server can have run from the folder: deleting it is all there is to do.
reset:
	@if [ -x $(PY) ]; then $(PY) -m devstack reset; else rm -rf "$${COVENANT_DATA_DIR:-.local}"; fi

clean: reset
	rm -rf .local $(VENV) cdk.out .pytest_cache .mypy_cache .ruff_cache
