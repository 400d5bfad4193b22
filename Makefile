PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test bench bench-small

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 fbgemm-gpu-cpu==1.8.0 -e '.[dev,ray]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/negseq run examples/synthetic.toml

test: setup
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/sampler_bench.py

bench-small: setup
	$(PY) benchmarks/sampler_bench.py --small
