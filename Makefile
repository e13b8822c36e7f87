# Everything a fresh clone needs: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format clean airflow test-e2e chromium bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m braze_currents_airflow.demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --ignore=tests/e2e --ignore=tests/ui

# Throughput, CPU and memory against baselines (README: "Performance"); BENCH_SIZES=10k,100k runs fewer.
bench: $(STAMP)
	$(BIN)/python -m bench.run

# Airflow on localhost with PostgreSQL (README: "make airflow"); AIRFLOW_ARGS=--help lists the options.
airflow: $(STAMP)
	$(BIN)/python -m braze_currents_airflow.local_airflow $(AIRFLOW_ARGS)

# Real deployments (PostgreSQL, Redis, Celery workers) and the UI tests in Debian's Chromium.
test-e2e: $(STAMP) chromium
	BRAZE_CURRENTS_E2E=1 $(BIN)/python -m pytest -q tests/e2e $(wildcard tests/ui)

chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "Chromium is missing: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache var
