# The two commands a new user needs: `make dev` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian's chromium, driven by Playwright in tests/e2e/test_dashboard.py. Installed from
# Debian's packages: no test ever downloads a browser.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: dev test lint unit package bench clean chromium

$(VENV)/.installed: requirements.txt requirements-dev.txt $(wildcard requirements-*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	printf '#!/usr/bin/env bash\nexec "%s/bin/aia" "$$@"\n' "$(CURDIR)" > $(VENV)/bin/aia && chmod +x $(VENV)/bin/aia
	touch $@

## dev: start emulators, every function and the gateway on http://127.0.0.1:8080
dev: $(VENV)/.installed
	$(PY) -m devtools.stack

## test: lint, type-check and run every test (starts the emulators it needs)
test: $(VENV)/.installed $(CHROMIUM) lint
	$(PY) -m pytest

## chromium: install Debian's chromium when it is missing
chromium: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

## package: build/<function>/ deploy bundles and their zips
package: $(VENV)/.installed
	$(PY) -m tools.package

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache .venv-*
