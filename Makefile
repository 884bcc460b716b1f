# Two commands: `make run` sets everything up and runs the daemon on its embedded default;
# `make test` sets everything up and runs the tests, lint and type checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian / Raspberry Pi OS packages: a Python (3.11+) that can make virtualenvs.
APT_PACKAGES := python3 python3-venv python3-dev
# Only for `make test`: PortAudio's headers (PyAudio builds against them), a private PulseAudio
# with null sinks for a sound card (tests/soundserver.py), and espeak-ng + sox for test speech.
TEST_APT_PACKAGES := pulseaudio pulseaudio-utils libasound2-plugins portaudio19-dev espeak-ng sox

.PHONY: run test system test-system lint

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

test-system:
	@if [ "$$(dpkg -s $(TEST_APT_PACKAGES) 2>/dev/null | grep -c '^Status: install ok installed')" \
	    -ne "$(words $(TEST_APT_PACKAGES))" ]; then \
	  echo "installing $(TEST_APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $(TEST_APT_PACKAGES); \
	fi

$(VENV)/.test-deps: $(BIN)/voiced | test-system
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
