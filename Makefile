# Entry points. Every target uses the project's virtualenv (.venv), created by `make setup`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LOCK := requirements/lock.txt
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed-$(shell cat $(LOCK) $(CONSTRAINTS) 2>/dev/null | sha1sum | cut -c1-12)
MODEL ?= xception_bigru
export PYTHONPATH := $(CURDIR)

.PHONY: setup test lint typecheck describe train train-all evaluate archive serve stop run bench clean

setup: $(STAMP)

$(STAMP): $(LOCK) $(CONSTRAINTS) requirements/system-deps.sh
	requirements/system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# -c pins torch/torchvision to the local CPU wheel: pip may never pick a CUDA build.
	$(PIP) install -q -c $(CONSTRAINTS) -r $(LOCK)
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	$(PIP) check
	rm -f $(VENV)/.installed-*
	touch $@

# The test command (README, .ci/run). Uses MySQL when DATABASE_URL points at it, else SQLite.
test: setup kserve-env
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

describe: setup
	$(PY) -m training.describe

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Area-specific targets (training, serving, portal) live in mk/*.mk.
-include mk/*.mk
