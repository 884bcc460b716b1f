# Two commands: `make run` sets everything up and runs the daemon on its embedded default;
# `make test` sets everything up and runs the tests, lint and type checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian / Raspberry Pi OS packages: a Python (3.11+) that can make virtualenvs, when the
# machine's python3 cannot; and what PyAudio builds with (real sound devices).
PYTHON_APT_PACKAGES := python3 python3-venv python3-dev
AUDIO_APT_PACKAGES := gcc portaudio19-dev
# Only for `make test`: a private PulseAudio with null sinks for a sound card
# (tests/soundserver.py), espeak-ng + sox for test speech, and mosquitto (a real MQTT broker,
# started by a test fixture).
TEST_APT_PACKAGES := pulseaudio pulseaudio-utils libasound2-plugins espeak-ng sox mosquitto debootstrap shellcheck systemd-container

# Install the Debian packages of $(1) that are missing (as root, or with sudo).
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p 2>/dev/null | grep -q '^Status: install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: run test system python-system test-system lint wheel-check

system:
	@$(PYTHON) -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null \
	  || $(MAKE) --no-print-directory python-system
	$(call apt_install,$(AUDIO_APT_PACKAGES))

python-system:
	$(call apt_install,$(PYTHON_APT_PACKAGES))

$(BIN)/voiced: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[audio]'
	@touch $@

test-system:
	$(call apt_install,$(TEST_APT_PACKAGES))

$(VENV)/.test-deps: $(BIN)/voiced | test-system
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(BIN)/voiced
	$(BIN)/voiced run

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The wheel, installed as a user installs it, runs `voiced ask` against `voiced sim`.
wheel-check: $(BIN)/voiced
	PYTHON=$(PYTHON) .ci/wheel-check

test: lint wheel-check
	$(BIN)/pytest
