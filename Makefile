# tidewatch: every target installs what it needs and is safe to run again.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV      := $(CURDIR)/.venv
PY        := $(VENV)/bin/python
STAMPS    := $(CURDIR)/.stamps
TORCH_LIB := $(VENV)/lib/python3.11/site-packages/torch/lib

# torch-sys finds libtorch inside the venv's torch wheel; it runs `python` when VIRTUAL_ENV is set.
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
# Spark: stay on loopback, and run workers with the venv's interpreter.
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(PY)
export PYSPARK_DRIVER_PYTHON := $(PY)

RUST_SOURCES := $(shell find src -name '*.rs' 2>/dev/null) Cargo.toml Cargo.lock build.rs pyproject.toml
PYTEST_ARGS ?=

.PHONY: help install build test test-rust test-python demo bench bench-skab bench-attacks bench-detect bench-swat-size soak validate clean

help:
	@echo "make demo   - run tidewatch end to end on embedded defaults"
	@echo "make test   - install everything needed and run all tests (cargo + pytest)"
	@echo "make bench  - run the benchmarks under bench/"
	@echo "make bench-skab - the SKAB detection benchmark against baselines (~5 min)"
	@echo "make bench-attacks - detection and attribution on the simulator's 36 attacks (~5 min)"
	@echo "make bench-detect - issue 13: tidewatch vs KNN, PCA T²+Q, IForest, ECOD, random on SKAB, SMAP, simulator, drift (5-20 min)"
	@echo "make bench-swat-size - spark-submit train.py on 495,000 SWaT-size rows, timed"
	@echo "make soak   - the long fault, bad-input and memory soak runs"
	@echo "make build  - build the native extension (release) into the venv"
	@echo "make validate - check k8s manifests, Prometheus rules and the Grafana dashboard offline"

$(STAMPS):
	@mkdir -p $(STAMPS)

# System packages: a Java 17 runtime for Spark, Prometheus (server + promtool) for integration tests.
$(STAMPS)/apt: | $(STAMPS)
	@missing=""; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: requirements.lock | $(STAMPS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	@touch $@

install: $(STAMPS)/apt $(STAMPS)/venv

$(STAMPS)/build: $(STAMPS)/venv $(RUST_SOURCES)
	cd $(CURDIR) && $(VENV)/bin/maturin develop --release --quiet
	@touch $@

build: $(STAMPS)/build

test-rust: $(STAMPS)/venv
	LD_LIBRARY_PATH=$(TORCH_LIB) cargo test --release --quiet

test-python: install build
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: validate test-rust test-python

# Deployment files checked offline: CRD schemas (strict), promtool, dashboard queries (tools/validate.py).
validate: install build
	$(PY) tools/validate.py

demo: install build
	$(PY) -m tidewatch demo

bench: install build
	$(PY) bench/run_all.py

bench-skab: install build
	$(PY) bench/skab.py

bench-attacks: install build
	$(PY) bench/bench_simulated_attacks.py

bench-detect: install build
	$(PY) bench/detect.py

bench-swat-size: install build
	$(PY) bench/swat_size_train.py

# The long versions: 5x the malformed-input corpus, more hypothesis examples, kill -9 eight times in a row,
# then 30 minutes of the streaming job at full speed with its memory sampled (tools/soak.py).
soak: install build
	TIDEWATCH_SOAK=1 $(PY) -m pytest -q tests/test_bad_input.py tests/test_fuzz_native.py tests/test_faults.py
	$(PY) tools/soak.py --minutes 30

clean:
	rm -rf target $(STAMPS)
