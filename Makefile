# The two commands of the README: `make demo` (set up + run the main job), `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test test-all lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

# pytest exits 5 when no test was collected; that is not a failure of the code under test.
test: setup
	@$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

test-all: setup
	@$(PY) -m pytest -q -m "slow or not slow"

lint: setup
	$(VENV)/bin/ruff check policystack tests benchmarks scripts

bench: setup
	$(PY) benchmarks/bench_loader.py
