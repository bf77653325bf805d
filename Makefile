# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
# torch is pinned to the CPU build that installs fast on CPU-only machines; on a machine with a
# GPU, install the CUDA build of torch first (pip install torch) and `make` keeps it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint clean

$(BIN)/batchscale: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/batchscale

setup: $(BIN)/batchscale

demo: setup
	$(BIN)/batchscale study demo --jobs 2 --out runs/demo

lint: setup
	$(BIN)/ruff check batchscale tests scripts benchmarks examples

# the suite in parallel pytest processes, one per core (at most 2): scripts/run_tests.py
test: lint
	$(BIN)/python scripts/run_tests.py

clean:
	rm -rf runs .pytest_cache
