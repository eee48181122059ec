# Edgewire. `make demo` runs the gateway and a simulated fleet; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
DEVICES ?= 20
DEMO_DIR ?= var/demo
NODE_DIR := tests/firmware/node

.PHONY: help venv demo test test-fast lint clean

help:
	@echo "make demo   - gateway on $(HOST):$(PORT) (SQLite) + $(DEVICES) simulated devices; Ctrl-C stops"
	@echo "make test   - install what the suite needs and run it"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make flash  - flash an ESP32 node (see hardware.md)"
	@echo "make bench  - gateway vs Mosquitto under load (docs/performance.md)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[gateway,fast,edge,firmware,bench,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@$(PY) -m simulator.demo --host $(HOST) --port $(PORT) --devices $(DEVICES) --data-dir $(DEMO_DIR)

$(NODE_DIR)/node_modules/.installed: $(wildcard $(NODE_DIR)/package-lock.json)
	@if [ -f $(NODE_DIR)/package.json ]; then cd $(NODE_DIR) && npm ci --no-audit --no-fund --silent; fi
	@mkdir -p $(NODE_DIR)/node_modules && touch $@

test: $(STAMP) $(NODE_DIR)/node_modules/.installed
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# --- bench (owned by bench helper) ---
# make bench: 1k/5k/10k devices, gateway (full path), gateway --storage none, Mosquitto; docs/performance.md.
# make bench-quick: 1k devices for 10 s (~60 s); fails if the gateway full path loses a reading (CI smoke).
BENCH_ARGS ?=
.PHONY: bench bench-quick
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick $(BENCH_ARGS)
# --- end bench ---
