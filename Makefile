# The two commands: `make run` (set up and serve) and `make test` (set up and pass every test).
# `make bench` measures the app against its limit (after `make test`'s set-up).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps: reinstall only when a requirements file changes.
$(VENV)/.runtime: requirements.txt local_entra/requirements.txt | $(PY)
	$(PIP) install -r requirements.txt -r local_entra/requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PIP) install -r requirements-dev.txt
	@touch $@

## Serve on http://localhost:5000: against Microsoft Entra ID with a .env, else against the local stand-in.
run: $(VENV)/.runtime
	$(PY) scripts/run.py

## Lint, then every test tier (fast, real protocol, browser, Redis).
test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

## Throughput of the app against a bare "limit" app, side by side.
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || \
		{ echo "make bench needs wrk: apt-get install wrk"; exit 2; }
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) instance test-artifacts bench/results .pytest_cache .ruff_cache
