# The two commands: `make run` runs the whole cluster, `make test` runs every check.
# Both set up what they need first, from PyPI and the npm registry only.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NPM    := $(VENV)/bin/npm
BUF    := node_modules/.bin/buf

.DEFAULT_GOAL := help
.PHONY: help setup run test lint typecheck proto proto-check buf-lint pytest clean

help:
	@echo "make run    - set up and run the whole local cluster (Ctrl-C stops it)"
	@echo "make test   - set up and run lint, type checks, buf lint, codegen check and pytest"
	@echo "make proto  - regenerate the Python code under gen/ from proto/"

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed

run: $(VENV)/.installed
	$(PY) -m cluster

proto: setup
	$(PY) -m tools.protogen

proto-check: setup
	$(PY) -m tools.protogen --check

buf-lint: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m tools.protogen --lint

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy services workers cluster cli tests bench tools deploy

pytest: setup
	$(VENV)/bin/pytest

test: lint typecheck buf-lint proto-check pytest

clean:
	rm -rf $(VENV) node_modules build
