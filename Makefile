# The README's commands. `make test` and `make demo` create .venv when it is missing and install the pinned
# set-up into it; later runs reuse it (the stamp is redone when requirements-dev.txt or the packaging changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test lint format info prebuild bench-eval bench-data bench-train bench-scl bench-transfer gpu-check \
	check-fresh venv clean

venv: $(STAMP)

# The CUDA ops under csrc/ are compiled by the editable install (setup.py) when a toolkit is found. CUDA_HOME:
# the environment's, else the toolkit nvcc itself reports (--dryrun's TOP=, which sees through wrapper scripts
# such as /usr/local/bin/nvcc; torch would guess /usr/local from `which nvcc`), else empty (setup.py decides).
# TORCH_CUDA_ARCH_LIST: the environment's, else setup.py's default ("8.0;9.0+PTX" when no GPU is visible).
CSRC_SOURCES := $(wildcard csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*/*.cuh)
ifeq ($(origin CUDA_HOME),undefined)
CUDA_HOME := $(shell nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's|^\#\$$ TOP=\(.*\)/bin/\.\.$$|\1|p')
endif
export CUDA_HOME
export TORCH_CUDA_ARCH_LIST

$(STAMP): requirements-dev.txt pyproject.toml setup.py $(CSRC_SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -r requirements-dev.txt $(TORCH_PIN)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The main job on generated data: builds data/synth_demo, pre-trains with 2 DeepSpeed ranks (CPU) or the GPU(s),
# prints mAP/R1/mINP before and after training; outputs in outputs/demo/.
demo: $(STAMP)
	$(VENV)/bin/reidscale demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

info: $(STAMP)
	$(VENV)/bin/reidscale info

bench-eval: $(STAMP)
	$(PY) benchmarks/bench_eval.py

bench-data: $(STAMP)
	$(PY) benchmarks/bench_data.py

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py

bench-scl: $(STAMP)
	$(PY) benchmarks/bench_scl.py

# Fine-tuning from random init vs from the backbone `make demo` pre-trained (outputs/demo/backbone.pt), 3 seeds.
bench-transfer: $(STAMP)
	$(PY) benchmarks/bench_transfer.py

# Builds once what DeepSpeed and the CUDA ops would otherwise compile on first use (see reidscale/prebuild.py).
prebuild: $(STAMP)
	$(VENV)/bin/reidscale prebuild

# For a lent, offline GPU machine: builds, tests and times everything GPU-side inside 8 minutes (see
# benchmarks/gpu_check.py). No venv and no install: the venv's python when there is one, else python3.
GPU_CHECK_PYTHON := $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHONPATH=. $(GPU_CHECK_PYTHON) benchmarks/gpu_check.py

# CI as a new machine runs it: a fresh clone of HEAD, empty build caches, a CPU-bound process beside it
# (RUNS=2 for twice in a row, LOAD=0 without the load, KEEP=1 to keep the clone).
check-fresh:
	bash .ci/fresh-clone-check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
