# Two entry points for a new machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: serve test test-runtime lint bench load system-deps train-default export-default protos
.PHONY: clean distclean

# The Python pyproject.toml requires (requires-python = ">=X.Y"), and the venv's own, if any.
REQUIRES_PYTHON := $(shell sed -n 's/^requires-python *= *">= *\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
VENV_PYTHON := $(shell $(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# "yes" when version $(1) is older than REQUIRES_PYTHON
too_old = $(if $(filter $(REQUIRES_PYTHON),$(firstword $(shell printf '%s\n' $(REQUIRES_PYTHON) $(1) | sort -V))),,yes)

# A venv made with an older Python (or whose Python is gone) is made again, with what it holds.
ifneq ($(wildcard $(VENV)/pyvenv.cfg),)
ifneq ($(if $(VENV_PYTHON),$(call too_old,$(VENV_PYTHON)),yes),)
.PHONY: $(VENV)/bin/python $(VENV)/.serve $(VENV)/.dev
endif
endif

$(VENV)/bin/python:
	@found=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	if [ -z "$$found" ] || [ "$$(printf '%s\n' $(REQUIRES_PYTHON) "$$found" | sort -V | head -1)" != $(REQUIRES_PYTHON) ]; then \
	  echo "sarnn-serve needs Python >= $(REQUIRES_PYTHON); $(PYTHON) is $${found:-not found}: make PYTHON=python$(REQUIRES_PYTHON) ..." >&2; \
	  exit 1; \
	fi
	@if [ -e $(VENV)/pyvenv.cfg ]; then \
	  echo "$(VENV) was made with Python $(or $(VENV_PYTHON),that is gone), older than $(REQUIRES_PYTHON): making it again" >&2; \
	  rm -rf $(VENV); \
	fi
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

# Installs only missing Debian packages and upgrades none (SYSTEM_DEPS=--allow-upgrades to allow)
system-deps:
	bash scripts/system-deps.sh $(SYSTEM_DEPS)

test: $(VENV)/.dev system-deps
	$(PY) -m pytest -q

# The suite against the built wheel in a fresh venv without torch or a C compiler (not `train`)
test-runtime: $(VENV)/.dev system-deps
	$(PY) scripts/runtime_suite.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The gRPC modules beside sarnn_serve/api/grpc_predict_v2.proto (checked in; needs grpcio-tools)
protos: $(VENV)/.dev
	$(PY) scripts/gen_protos.py

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_onnx.py --checkpoint models/watch-gru/checkpoint.pt

load: $(VENV)/.dev
	$(PY) benchmarks/load_ws.py --spawn-server --sessions 100 --rate 50 --chunk 1 --duration 20

# How the default's recipe was chosen (its card's training.recipe_chosen_on).
DEFAULT_RECIPE_CHOSEN_ON := validation subjects 7-8: final slope 1.5 against 2 and 5, lambda 5 against 2.5 and 10, 3 seeds each

train-default: $(VENV)/.dev
	$(PY) -m export train --dataset watch --cell gru --hidden 128 --lam 5 --lam-warmup-epochs 4 --budget mean --gate-grad smooth --target-rate 0.3 --threshold-range 0.1 0.9 --target-slope 0.75 --final-slope 1.5 --epochs 24 --batches-per-epoch 50 --batch-size 32 --window 256 --lr 0.003 --seed 0 --out runs/watch-gru

export-default: $(VENV)/.dev
	$(PY) -m export onnx --checkpoint runs/watch-gru/checkpoint.pt --out models/watch-gru --force --ship \
		--recipe-chosen-on "$(DEFAULT_RECIPE_CHOSEN_ON)"

# Build outputs and caches; the venv stamps too, so the next target reinstalls (and rebuilds the
# native kernel). Keeps the venv, runs/ and exported models; distclean removes the venv as well.
clean:
	rm -rf build *.egg-info test-artifacts .pytest_cache .ruff_cache sarnn_serve/_step_kernel*.so
	rm -f $(VENV)/.serve $(VENV)/.dev
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
