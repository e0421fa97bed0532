# make run        - start the bridge on the embedded SQLite store (./data/bridge.db)
# make test       - run every test (the Debian packages .ci/run installs are needed; the
#                   tests start their own Redis, Prometheus, Alertmanager and Docker engine)
# make test-fast  - the tests that start no server: seconds
# make test-lowest - the tests (but the slow ones) on the lowest versions pyproject.toml allows
# make lint       - ruff's formatter (checked), ruff and mypy
# make rules      - write alerts/heartbeat-bridge.rules.yml from bridge/server/alert_rules.yml.in
# make demo       - the bridge with a simulated fleet, plus Prometheus and Alertmanager if installed
#                   (DEMO_PORT=8000; refused when a bridge already listens there)
# make bench      - ingest, batch, scrape and memory beside a bare Flask app and the Pushgateway
# make alert-latency - seconds from a failure to its notification, through real Prometheus and
#                   Alertmanager with the shipped settings (about 7 minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOWEST ?= .venv-lowest
BIND ?= 127.0.0.1:8000
DEMO_PORT ?= 8000

.PHONY: run test test-fast test-lowest lint rules demo bench alert-latency install install-service clean

# The service alone (make run, make demo, make rules): what requirements.txt pins, no test tools.
$(BIN)/.installed-service: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Then the test, lint and benchmark tools (make test, make lint, make bench).
$(BIN)/.installed: requirements-dev.txt $(BIN)/.installed-service
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install-service: $(BIN)/.installed-service

install: $(BIN)/.installed

run: install-service
	$(BIN)/heartbeat-bridge serve --bind $(BIND)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

# The runtime dependencies at the floors pyproject.toml states; the test tools as pinned.
$(LOWEST)/.installed: pyproject.toml requirements-dev.txt $(BIN)/.installed
	UV_PYTHON_DOWNLOADS=never $(BIN)/uv venv --quiet --python $(BIN)/python $(LOWEST)
	grep -E '^(pytest|hypothesis|schemathesis|sentry-sdk|selenium)==' requirements-dev.txt > $(LOWEST)/test-tools.txt
	VIRTUAL_ENV=$(LOWEST) $(BIN)/uv pip install --quiet --resolution lowest-direct \
	    -e ".[redis,agent,grpc]" -r $(LOWEST)/test-tools.txt
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

rules: install-service
	BRIDGE_EXTERNAL_URL= $(BIN)/heartbeat-bridge rules > alerts/heartbeat-bridge.rules.yml

demo: install-service
	$(BIN)/heartbeat-bridge demo --port $(DEMO_PORT)

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

alert-latency: install
	$(BIN)/python -m bench.alert_latency $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) data .pytest_cache .mypy_cache .ruff_cache
