# make run   - start the bridge on the embedded SQLite store (./data/bridge.db)
# make test  - run every test (Debian's prometheus, prometheus-alertmanager, redis-server,
#              docker.io, busybox-static and curl needed; the Docker tests start their own engine)
# make demo  - the bridge with a simulated fleet, plus Prometheus and Alertmanager if installed
# make bench - ingest, batch, scrape and memory beside a bare Flask app and the Pushgateway
#              (Debian's wrk, redis-server and prometheus-pushgateway needed)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BIND ?= 127.0.0.1:8000

.PHONY: run test demo bench install clean

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/heartbeat-bridge serve --bind $(BIND)

demo: install
	$(BIN)/heartbeat-bridge demo

bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache
