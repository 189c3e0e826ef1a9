# `make run` and `make test` work on a fresh clone: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint schema bench profile clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gql serve

# The frontend clients of tests/test_clients.py (Apollo Client, urql), exactly as pinned in their lockfile.
CLIENTS := tests/clients
$(CLIENTS)/node_modules/.package-lock.json: $(CLIENTS)/package-lock.json
	npm ci --prefix $(CLIENTS) --no-audit --no-fund

test: lint $(CLIENTS)/node_modules/.package-lock.json
	sh tests/ensure-chromium.sh
	sh tests/ensure-varnish.sh
	$(PY) -m pytest

# ruff and mypy, configured in pyproject.toml; `make test` runs them first.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

schema: $(STAMP)
	$(PY) -m gql export-schema --output schema.graphql

# Also installs flask, gunicorn (bench/requirements.txt) and wrk. Includes the Redis-fault and stampede runs of
# bench/faults.py (bench/results/faults.md), the data pickup runs of bench/pickup.py, the database source runs
# of bench/db.py (bench/results/database.md; needs PostgreSQL and MariaDB on 127.0.0.1, see bench/dbsetup.py) and
# the Redis topology runs of bench/fleet.py (bench/results/fleet.md: hits on standalone, Cluster and Sentinel, a
# master killed under load, connections per server process);
# BENCH_ARGS="--duration 2 --rounds 1 --faults quick --pickup-imports 5 --db quick --fleet quick" for a quick run.
bench: $(STAMP)
	sh bench/setup.sh $(PY)
	$(PY) -m bench.run $(BENCH_ARGS)

# Where the time of one cached hit goes, in process (bench/profile_hit.py: the real app on a redis-server of its own,
# no HTTP): µs per request, the access line and the metrics timed alone, and cProfile's costs by part.
# PROFILE_ARGS="--log-level warning" (no access line), "--log-json", "--requests 20000"; see --help.
profile: $(STAMP)
	$(PY) -m bench.profile_hit $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info $(CLIENTS)/node_modules
