# Two entry points for a new machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: serve test lint bench load system-deps train-default export-default protos

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# Serving needs no torch: onnxruntime, numpy, fastapi, uvicorn, pydantic.
$(VENV)/.serve: pyproject.toml setup.py sarnn_serve/csrc/step_kernel.c | $(VENV)/bin/python
	$(PIP) -e .
	touch $@

# Tests need everything: torch (CPU build pinned), onnx, datasets, redis, a browser driver.
$(VENV)/.dev: pyproject.toml setup.py sarnn_serve/csrc/step_kernel.c | $(VENV)/bin/python
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.serve

# models/ ships more than one model; requests that name none get the default one
serve: $(VENV)/.serve
	SARNN_DEFAULT_MODEL=$${SARNN_DEFAULT_MODEL:-watch-gru} $(VENV)/bin/sarnn-serve serve

system-deps:
	bash scripts/system-deps.sh

test: $(VENV)/.dev system-deps
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The gRPC modules beside sarnn_serve/api/grpc_predict_v2.proto (checked in; needs grpcio-tools)
protos: $(VENV)/.dev
	$(PY) scripts/gen_protos.py

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_onnx.py --checkpoint models/watch-gru/checkpoint.pt

load: $(VENV)/.dev
	$(PY) benchmarks/load_ws.py --spawn-server --sessions 100 --rate 50 --chunk 1 --duration 20

train-default: $(VENV)/.dev
	$(PY) -m export train --dataset watch --cell gru --hidden 128 --lam 2.5 --lam-warmup-epochs 4 --epochs 24 --seed 0 --out runs/watch-gru

export-default: $(VENV)/.dev
	$(PY) -m export onnx --checkpoint runs/watch-gru/checkpoint.pt --out models/watch-gru --force
