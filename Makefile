# altinn-mottak developer commands. Everything installs itself on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast test-reliability lint bench bench-quick check-infra ci clean

## demo: run the whole flow locally (Azurite + Altinn simulator + local Functions host)
demo: $(VENV)/.installed node_modules/.installed
	$(PY) -m devtools.demo

## test: the full test suite (unit, in-process, integration over Azurite and the simulator, reliability,
## contract, infra), on every core (pytest-xdist: each worker starts its own Azurite and simulators)
test: $(VENV)/.installed node_modules/.installed
	$(PY) -m pytest -n auto

## test-fast: the layers without servers (unit and in-process), in seconds
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests/unit tests/inprocess

## test-pythons: the unit tests on every Python version infra/main.bicep allows (pythonVersion), each in its own .venv-py3.X; a version with no interpreter on this machine is skipped with a message
# Keep equal to the @allowed list of pythonVersion in infra/main.bicep (tests/infra checks it).
PYTHON_VERSIONS := 3.11 3.12

# The interpreter for a version: python3.X on PATH if it runs, else an installed pyenv version
# 3.X.* (pyenv's shims only run the versions that are active), else none.
.PHONY: test-pythons
test-pythons:
	@set -e; for v in $(PYTHON_VERSIONS); do \
	  py=$$(command -v python$$v 2>/dev/null || true); \
	  if [ -n "$$py" ] && ! "$$py" -c pass >/dev/null 2>&1; then py=""; fi; \
	  if [ -z "$$py" ] && command -v pyenv >/dev/null 2>&1; then \
	    pv=$$(pyenv versions --bare --skip-aliases 2>/dev/null | grep -E "^$$v\.[0-9]+$$" | sort -t. -k3 -n | tail -n 1); \
	    if [ -n "$$pv" ] && "$$(pyenv root)/versions/$$pv/bin/python$$v" -c pass >/dev/null 2>&1; then py="$$(pyenv root)/versions/$$pv/bin/python$$v"; fi; \
	  fi; \
	  if [ -z "$$py" ]; then echo "test-pythons: SKIPPED Python $$v: no python$$v interpreter on this machine"; continue; fi; \
	  $(MAKE) --no-print-directory .venv-py$$v/.installed VENV_PYTHON="$$py"; \
	  echo "test-pythons: Python $$v ($$(.venv-py$$v/bin/python -c 'import sys; print(sys.version.split()[0])'), .venv-py$$v)"; \
	  .venv-py$$v/bin/python -m pytest tests/unit -q -p no:cacheprovider; \
	done

.venv-py%/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x .venv-py$*/bin/python || $(or $(VENV_PYTHON),python$*) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## test-reliability: only the reliability suite (faults, chaos, crash, races, hostile input, fuzz, secrets); part of `make test`
test-reliability: $(VENV)/.installed node_modules/.installed
	$(PY) -m pytest tests/reliability

## lint: ruff (with the complexity limit), ruff format, mypy and the import-layer contract
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

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
	rm -rf $(VENV) .venv-checkov .venv-actionlint .venv-py3.* node_modules .pytest_cache .ruff_cache .demo
