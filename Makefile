# The course in two commands:  `make lab`  and  `make test`.
# Both create .venv (if missing) and install the pinned packages (requirements.txt)
# and course_lib, in editable mode.

SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON      ?= python3
VENV        := .venv
BIN         := $(CURDIR)/$(VENV)/bin
STAMP       := $(VENV)/.installed
# Optional: a PyTorch wheel index, for example PyTorch's CPU-only one (see README).
TORCH_INDEX ?=
PIP_FLAGS   := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# Jupyter refuses to start as root unless asked to (containers run as root).
ROOT_FLAG   := $(if $(filter 0,$(shell id -u)),--allow-root,)
PORT        ?= 8888
LESSON      ?=
# nbgrader runs the `alembic` executable: the venv's bin must come first on PATH.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup lab test test-fast release check timings gpu-check bench clean

help:
	@echo "make lab        open the course in JupyterLab"
	@echo "make test       run every test (library, checks, mutants, notebooks, grading)"
	@echo "make check LESSON=01   grade your own notebook for lesson 01"
	@echo "make release    regenerate notebooks/ from solutions/ (instructors)"
	@echo "make timings    measure every solution notebook (time, memory)"
	@echo "make gpu-check  GPU tests and benchmarks, on a CUDA machine"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml binder/jupyterlab-overrides.json
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp binder/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks --port=$(PORT) $(ROOT_FLAG) $(LAB_ARGS)

# The README's test command. Tests run on 2 workers, one PyTorch thread each (two
# workers with two threads each on two cores slow PyTorch down many times over);
# --dist loadscope keeps every notebook's cells on one worker.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadscope --nbval-lax tests solutions

# Library tests only: seconds, not minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -p no:nbval tests

release: $(STAMP)
	$(BIN)/python -m course_lib.grading release

check: $(STAMP)
	@test -n "$(LESSON)" || (echo "Say which lesson: make check LESSON=01" && exit 2)
	$(BIN)/python -m course_lib.grading check $(LESSON)

timings: $(STAMP)
	$(BIN)/python -m course_lib.grading timings --write bench/notebook_timings.md

# On a CUDA machine. Needs only torch, numpy, tqdm and pytest there (no Jupyter packages, no .venv):
# run it with that machine's Python, e.g. `make gpu-check GPU_PYTHON=python3`.
# The test files that hold `gpu` tests; they import nothing beyond torch, numpy, tqdm, pytest
# (and triton, transformers where present).
GPU_PYTHON ?= python3
GPU_TESTS  := tests/test_device.py tests/test_kernels.py tests/test_benchmark.py tests/test_bench.py tests/test_memory.py
gpu-check:
	mkdir -p bench/results
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -p no:cacheprovider -p no:nbval -m gpu $(GPU_TESTS) -q | tee bench/results/gpu-tests.txt
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) bench/run_all.py --out bench/results/gpu-bench.md

bench: gpu-check

clean:
	rm -rf $(VENV) .pytest_cache
