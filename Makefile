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

.PHONY: orthanc setup demo test test-fast lint clean mlflow-ui serve serve-stop pacs pacs-demo pacs-stop

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

test: setup orthanc
	$(BIN)/python -m pytest -q

# The PACS tests, `make pacs` and `make pacs-demo` run a real Orthanc with the DICOMweb plugin (Debian's
# orthanc + orthanc-dicomweb): installed with apt-get when missing (sudo when not root).
orthanc:
	@if { ! command -v Orthanc >/dev/null && ! test -x /usr/sbin/Orthanc; } \
	   || ! test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; then \
	  SUDO=""; if [ "$$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q orthanc orthanc-dicomweb; \
	fi

# Everything but the tests marked slow (end-to-end pipeline, servers, DDP, Dask processes): minutes less.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

# The MLflow UI over this project's store (runs of every variant side by side), on loopback only.
# MLFLOW_ROOT: the project folder whose mlruns.db / mlartifacts/ it shows (default: this one).
MLFLOW_PORT ?= 5000
MLFLOW_ROOT ?= $(CURDIR)
mlflow-ui: setup
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(MLFLOW_ROOT))/mlruns.db \
	  --default-artifact-root $(abspath $(MLFLOW_ROOT))/mlartifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

# A local Prefect server on 127.0.0.1:$(PREFECT_PORT) + the deployments of prefect.yaml + a process
# worker, in the foreground (`unetflow serve`, tasks/serving/). Stop it with Ctrl-C or `make serve-stop`
# (`unetflow serve-stop`) from another shell: the worker stops before the server, then any process they
# left (orphaned flow runs), schedules stay active. A dead worker is restarted; runs without a live
# process are marked Crashed (slots freed). After a crash: `make serve-stop && make serve`. PIDs and logs: outputs/serve/.
PREFECT_PORT ?= 4200
serve: setup
	$(BIN)/unetflow serve --root $(CURDIR) --port $(PREFECT_PORT)

serve-stop:
	$(BIN)/unetflow serve-stop --root $(CURDIR)

# A throwaway local PACS (Orthanc with DICOMweb, tasks/pacs/orthanc.py) in the foreground, for trying
# `unetflow pacs-sync` without a hospital: loopback only, config/log/storage under outputs/pacs-server (kept;
# `make clean` removes it). DICOMweb http://127.0.0.1:$(PACS_HTTP_PORT)/dicom-web, DIMSE
# 127.0.0.1:$(PACS_DICOM_PORT):ORTHANC, Explorer http://127.0.0.1:$(PACS_HTTP_PORT)/app/explorer.html. Ctrl-C stops it.
PACS_HTTP_PORT ?= 8042
PACS_DICOM_PORT ?= 4242
pacs: setup orthanc
	$(BIN)/python -m tasks.pacs.orthanc --dir outputs/pacs-server --http-port $(PACS_HTTP_PORT) --dicom-port $(PACS_DICOM_PORT)

# pacs-sync end to end in about two minutes (tasks/pacs/demo.py): uses the Orthanc of `make pacs` when one answers on
# $(PACS_HTTP_PORT), else starts one in the background and leaves it running (`make pacs-stop` stops it); uploads
# 3 synthetic CT series (STOW-RS), trains a tiny CT model once (outputs/pacs-demo/model.pt, reused), runs the
# sync and prints the Explorer links where each study's SEG and volume report appear. A rerun stores nothing twice.
pacs-demo: setup orthanc
	$(BIN)/unetflow pacs-demo --root $(CURDIR) --http-port $(PACS_HTTP_PORT) --dicom-port $(PACS_DICOM_PORT)

pacs-stop:
	$(BIN)/unetflow pacs-demo --stop --root $(CURDIR)

clean:
	rm -rf outputs mlruns.db mlartifacts data

# nnU-Net v2's planner vs unetflow's on small generated datasets (benchmarks/planning.py, issue #15). nnunetv2
# (the planning-bench extra) lives in its own venv: its dependencies would replace the pinned torch in .venv.
NNUNET_VENV := .venv-nnunet
NNUNET_STAMP := $(NNUNET_VENV)/.planning-bench-installed
$(NNUNET_STAMP): pyproject.toml
	test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	set -o pipefail; $(NNUNET_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_INDEX) $(QUIET)
	set -o pipefail; $(NNUNET_VENV)/bin/python -m pip install -q "torch==$(TORCH_VERSION)" \
	  "$$(sed -n 's/^planning-bench = \["\(.*\)"\]$$/\1/p' pyproject.toml)" $(QUIET)
	touch $(NNUNET_STAMP)

.PHONY: bench-planning
bench-planning: setup $(NNUNET_STAMP)
	$(BIN)/python benchmarks/planning.py --nnunet-python $(NNUNET_VENV)/bin/python
