# unetflow — `make demo` and `make test` set everything up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.unetflow-installed
TORCH_VERSION := 2.13.0
export PATH := $(abspath $(BIN)):$(PATH)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PYTHONUTF8 := 1

# pip here warns once per package about find-links folders it cannot use; keep the log readable.
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Where pip finds a CPU build of torch. Empty: this machine's local CPU wheel (and PyPI's default).
# Elsewhere without a GPU, point it at PyTorch's CPU index: make setup TORCH_CPU_INDEX="--index-url URL".
TORCH_CPU_INDEX ?=

.PHONY: setup demo test lint clean mlflow-ui

setup: $(STAMP)

# Re-runs only when pyproject.toml changes; otherwise `make setup` takes a moment.
# Without a GPU, the CPU torch goes in first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(QUIET); \
	else \
	  $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_INDEX) $(QUIET); \
	fi
	set -o pipefail; $(BIN)/python -m pip install -q -e '.[dev,dask]' $(QUIET)
	touch $(STAMP)

demo: setup
	$(BIN)/unetflow demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# The MLflow UI over this project's store (runs of every variant side by side).
MLFLOW_PORT ?= 5000
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db \
	  --default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

clean:
	rm -rf outputs mlruns.db mlartifacts data
