# Two commands: `make run` sets everything up and runs the daemon on its embedded default;
# `make test` sets everything up and runs the tests, lint and type checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian / Raspberry Pi OS packages: a Python (3.11+) that can make virtualenvs.
APT_PACKAGES := python3 python3-venv python3-dev

.PHONY: run test system lint

system:
	@if ! $(PYTHON) -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
	  echo "installing $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(BIN)/voiced: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-deps: $(BIN)/voiced
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(BIN)/voiced
	$(BIN)/voiced run

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
