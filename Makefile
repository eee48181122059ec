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

.PHONY: help venv demo test lint clean fuzz node-deps system-deps-demo system-deps-test system-deps-bench

help:
	@echo "make demo   - gateway on $(HOST):$(PORT) (SQLite) + $(DEVICES) simulated devices; Ctrl-C stops"
	@echo "make test   - install what the suite needs and run it"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make flash  - flash an ESP32 node (see hardware.md)"
	@echo "make bench  - gateway vs Mosquitto under load (docs/performance.md)"
	@echo "make fuzz   - 10^6 generated frames against protocol/ and a live gateway (FUZZ_FRAMES=...)"

# Debian packages each target needs (scripts/system-deps installs them as root, else prints the apt-get line).
system-deps-demo:
	@scripts/system-deps demo

system-deps-test:
	@scripts/system-deps test

system-deps-bench:
	@scripts/system-deps bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[gateway,fast,edge,firmware,bench,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: system-deps-demo $(STAMP)
	@$(PY) -m simulator.demo --host $(HOST) --port $(PORT) --devices $(DEVICES) --data-dir $(DEMO_DIR)

# MicroPython's WebAssembly port (npm) runs the firmware tests and the emulated ESP32 board.
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --silent
	@touch $@

node-deps: $(NODE_DIR)/node_modules/.installed esp32-sim-deps

test: system-deps-test $(STAMP) node-deps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest protocol.wire protocol.gateway protocol.device

# make fuzz: structure-aware fuzzing (hypothesis corpus + mutator) of protocol/ and a live gateway;
# FUZZ_FRAMES per target (CI: 10000). Fails on a crash, a task death, a 1011 or an unhealthy gateway.
FUZZ_FRAMES ?= 1000000
FUZZ_ARGS ?=
fuzz: $(STAMP)
	$(PY) -m fuzz --frames $(FUZZ_FRAMES) $(FUZZ_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# make bench: 1k/5k/10k devices, gateway (full path), gateway --storage none, Mosquitto; docs/performance.md.
# make bench-quick: 1k devices for 10 s (~60 s); fails if the gateway full path loses a reading (CI smoke).
BENCH_ARGS ?=
.PHONY: bench bench-quick
bench: system-deps-bench $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: system-deps-bench $(STAMP)
	$(PY) -m bench.run --quick $(BENCH_ARGS)

# make flash PORT=/dev/ttyUSB0 DEVICE_ID=SENSOR-01 WIFI_SSID=... WIFI_PASSWORD=... \
#   GATEWAY_URL=ws://HOST:8080/v1/device (TOKEN=ewt_... | ADMIN_TOKEN_FILE=<data dir>/admin.token) \
#   [MICROPYTHON_BIN=file.bin] [SENSOR=dht22] [SENSOR_PIN=4] [LED_PIN=2] [INTERVAL_S=60] [BAUD=460800]
# Settings reach firmware/flash.py through the environment (make exports command-line variables),
# so passwords and tokens never appear in the process list. See hardware.md.
ESP32_NODE_DIR := simulator/esp32/node

.PHONY: flash esp32-sim-deps
flash:
	@test -x $(PY) || { echo "make flash: $(PY) is missing: run 'make venv' first" >&2; exit 2; }
	@$(PY) firmware/flash.py

# The emulated ESP32 board (python -m simulator esp32) runs MicroPython's WebAssembly port.
esp32-sim-deps: $(ESP32_NODE_DIR)/node_modules/.installed
$(ESP32_NODE_DIR)/node_modules/.installed: $(ESP32_NODE_DIR)/package-lock.json
	cd $(ESP32_NODE_DIR) && npm ci --no-audit --no-fund --silent
	@touch $@
