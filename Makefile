# The two commands: `make run` (set up and serve) and `make test` (set up and pass every test).
# `make bench` measures the app against its limit (after `make test`'s set-up).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test quick lint lock bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Installs come from the lock files (every package pinned); the requirements files keep the
# readable ranges they are compiled from. Stamps: reinstall only when a lock file changes.
$(VENV)/.runtime: requirements.lock | $(PY)
	$(PIP) install -r requirements.lock
	@touch $@

$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(PIP) install -r requirements-dev.lock
	@touch $@

LOCK := $(VENV)/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-trusted-host --no-emit-find-links

## Serve on http://localhost:5000: against Microsoft Entra ID with a .env, else against the local stand-in.
run: $(VENV)/.runtime
	$(PY) scripts/run.py

## Lint, then every test tier (fast, real protocol, browser, Redis).
test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

## The fast loop: every test but the slow ones (make test runs them all).
quick: $(VENV)/.dev
	$(PY) -m pytest -m "not slow"

## Regenerate the lock files from requirements*.txt (after changing a range or to take upgrades).
lock: $(VENV)/.dev
	$(LOCK) --output-file requirements.lock requirements.txt local_entra/requirements.txt
	$(LOCK) --output-file requirements-dev.lock requirements-dev.txt

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

## Throughput of the app against a bare "limit" app, side by side.
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk; } || \
		{ echo "make bench needs wrk: apt-get install wrk"; exit 2; }
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) instance test-artifacts bench/results .pytest_cache .ruff_cache
