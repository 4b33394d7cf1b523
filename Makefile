# altinn-mottak developer commands. Everything installs itself on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast test-reliability lint bench bench-quick check-infra ci clean

## demo: run the whole flow locally (Azurite + Altinn simulator + local Functions host)
demo: $(VENV)/.installed node_modules/.installed
	$(PY) -m devtools.demo

## test: the full test suite (unit + integration over Azurite and the simulator)
test: $(VENV)/.installed node_modules/.installed
	$(PY) -m pytest

test-fast: $(VENV)/.installed
	$(PY) -m pytest tests/unit

## test-reliability: only the reliability suite (faults, chaos, crash, races, hostile input, fuzz, secrets); part of `make test`
test-reliability: $(VENV)/.installed node_modules/.installed
	$(PY) -m pytest tests/reliability

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

check-infra:
	bash devtools/check_infra.sh

## bench: the benchmarks of bench/ against baselines measured in the same run (under 10 minutes); writes bench/results.md
bench: $(VENV)/.installed node_modules/.installed
	$(PY) -m bench

## bench-quick: the same with reduced sizes (under 2 minutes; CI runs it so it cannot rot)
bench-quick: $(VENV)/.installed node_modules/.installed
	$(PY) -m bench --quick

ci: lint test bench-quick check-infra

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) .venv-checkov node_modules .pytest_cache .ruff_cache .demo
