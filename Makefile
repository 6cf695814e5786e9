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
# The index torch was last installed from: when TORCH_INDEX names another one, this file is
# rewritten, which makes the install run again and reinstall torch from the new index.
TORCH_INDEX_USED := $(VENV)/.torch-index
# Jupyter refuses to start as root unless asked to (containers run as root).
ROOT_FLAG   := $(if $(filter 0,$(shell id -u)),--allow-root,)
PORT        ?= 8888
LESSON      ?=
# `make lab` is the learners' JupyterLab: it opens notebooks/, without nbgrader's instructor
# tools. `make lab INSTRUCTOR=1` opens the course's root with them (see INSTRUCTORS.md).
INSTRUCTOR  ?=
LAB_ROOT    := $(if $(INSTRUCTOR),$(CURDIR),notebooks)
LAB_CONFIG  := $(if $(INSTRUCTOR),JUPYTER_CONFIG_PATH=$(CURDIR)/binder/instructor,)
DEST        ?=
# nbgrader runs the `alembic` executable: the venv's bin must come first on PATH.
export PATH := $(BIN):$(PATH)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup lab test test-fast release check timings learner-edition gpu-check bench clean FORCE

help:
	@echo "make lab        open the course in JupyterLab (instructors: make lab INSTRUCTOR=1)"
	@echo "make test       run every test (library, checks, mutants, notebooks, grading)"
	@echo "make check LESSON=01   grade your own notebook for lesson 01"
	@echo "make release    regenerate notebooks/ from solutions/ (instructors)"
	@echo "make timings    measure every solution notebook (time, memory)"
	@echo "make learner-edition DEST=folder   write the course for learners: no solutions, no hidden tests"
	@echo "make gpu-check  GPU tests and benchmarks, on a CUDA machine"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml binder/jupyterlab-overrides.json binder/hide-instructor-tools $(TORCH_INDEX_USED)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; found " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(and $(TORCH_INDEX),$(filter $(TORCH_INDEX_USED),$?)),$(BIN)/python -m pip uninstall --yes torch)
	$(BIN)/python -m pip install $(PIP_FLAGS) -r requirements.txt
	$(BIN)/python -m pip install --no-deps -e .
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp binder/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	bash binder/hide-instructor-tools
	touch $(STAMP)

# Rewritten when it is missing, or when TORCH_INDEX is given and differs from what it holds;
# a plain `make lab` keeps the torch that is installed.
$(TORCH_INDEX_USED): FORCE
	@mkdir -p $(VENV)
	@if [ ! -f $@ ] || { [ -n "$(TORCH_INDEX)" ] && [ "$$(cat $@)" != "$(TORCH_INDEX)" ]; }; then \
		echo "$(TORCH_INDEX)" > $@; fi

FORCE:

# PATH starts with the venv's bin (exported above), so JupyterLab's terminal finds `course`;
# its shell is started as from a terminal (not as a login shell, whose profile may reset PATH).
lab: $(STAMP)
	$(LAB_CONFIG) $(BIN)/jupyter lab --ServerApp.root_dir=$(LAB_ROOT) --port=$(PORT) $(ROOT_FLAG) \
		--ServerApp.terminado_settings=shell_command=$${SHELL:-/bin/sh} $(LAB_ARGS)

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

# A benchmark: run it on an otherwise idle machine.
timings: $(STAMP)
	$(BIN)/python -m course_lib.grading timings --write bench/notebook_timings.md

learner-edition: $(STAMP)
	@test -n "$(DEST)" || (echo "Say where: make learner-edition DEST=../llm-course-learners" && exit 2)
	$(BIN)/python -m course_lib.grading learner-edition $(DEST)

# On a CUDA machine. Needs only torch, numpy, tqdm and pytest there (no Jupyter packages, no .venv):
# run it with that machine's Python, e.g. `make gpu-check GPU_PYTHON=python3`.
# The test files that hold `gpu` tests; they import nothing beyond torch, numpy, tqdm, pytest
# (and triton, transformers where present).
GPU_PYTHON ?= python3
GPU_TESTS  := tests/test_device.py tests/test_kernels.py tests/test_benchmark.py tests/test_bench.py tests/test_memory.py tests/test_distributed.py tests/test_int4.py
gpu-check:
	mkdir -p bench/results
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -p no:cacheprovider -p no:nbval -m gpu $(GPU_TESTS) -q | tee bench/results/gpu-tests.txt
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) bench/run_all.py --out bench/results/gpu-bench.md
	# lesson 10 (needs triton there): int4 weights against bf16 at decoding's batch sizes; 2:4 sparse against dense
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) bench/int4_gpu.py --out bench/results/int4-gpu.md
	# lesson 08 (needs peft and bitsandbytes there): full fine-tuning vs LoRA vs QLoRA, NF4 on the GPU
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) bench/finetune_gpu.py --out bench/results/finetune-gpu.md

bench: gpu-check

clean:
	rm -rf $(VENV) .pytest_cache
