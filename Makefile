# fenxiao developer entry points. `make` lists them; `make test` / `make run` work on a fresh Debian
# clone: they create the venv, install redis-server and fetch the Kafka jars as needed.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fenxiao-installed
# apt-get needs root: use sudo when not already root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: help venv deps run test test-faults lint fmt stack-up stack-down stack-status clean bench bench-rebuild

help: ## list the targets
	@echo "usage: make <target>"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## create .venv and install the project with its dev tools (again only when pyproject.toml changes)

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: apt-get install -y python3.11 python3.11-venv, or set PYTHON=/path/to/python3.11"; exit 1; }; \
	  if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null; then \
	    echo "$(PYTHON) cannot create venvs; installing python3.11-venv"; \
	    $(APT_GET) update -q && $(APT_GET) install -y -q python3.11-venv; \
	  fi; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

deps: venv ## install redis-server and chromium (apt) if missing, check Java 17 and Maven, fetch the Kafka jars once
	@if ! command -v redis-server >/dev/null; then \
	  echo "installing redis-server with apt-get"; \
	  $(APT_GET) update -q && $(APT_GET) install -y -q redis-server; \
	  if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then \
	    echo "stopping the system redis-server service: fenxiao runs its own (fenxiao stack up)"; \
	    $(SUDO) systemctl disable --now redis-server; \
	  fi; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium with apt-get (the dashboard's browser test drives it headless)"; \
	  $(APT_GET) update -q && $(APT_GET) install -y -q chromium; \
	fi
	@command -v java >/dev/null || { echo "java not found: Kafka needs Java 17+ (apt-get install -y openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "mvn not found: it fetches the Kafka jars once (apt-get install -y maven)"; exit 1; }
	@$(BIN)/python -c 'import sys; from streams.ops import stack; sys.exit(stack.deps_command())'

run: venv deps ## run the demo (fenxiao demo): a live flash sale, then the dashboard stays up until Ctrl-C
	$(BIN)/fenxiao demo

test: venv deps lint ## lint, then all tests (integration tests start their own private Kafka and Redis)
	$(BIN)/pytest -q tests

# The fault tests of issue 6: kills, Redis loss, broker restart, ClickHouse failures, standby handover, fuzzing.
FAULT_TESTS := tests/integration/test_faults.py tests/integration/test_sink_faults.py tests/integration/test_pipeline.py
RUNS ?= 5

test-faults: venv deps ## run the fault tests RUNS times in a row (default 5), stopping at the first failure
	@for i in $$(seq 1 $(RUNS)); do \
	  start=$$(date +%s); \
	  $(BIN)/pytest -q $(FAULT_TESTS) -k "not test_live and not test_backlog" || { echo "fault run $$i of $(RUNS) FAILED"; exit 1; }; \
	  echo "fault run $$i of $(RUNS): passed in $$(( $$(date +%s) - start )) s"; \
	done

lint: venv ## ruff check and mypy --strict
	$(BIN)/ruff check streams schemas tests
	$(BIN)/mypy

fmt: venv ## format the code with ruff
	$(BIN)/ruff format streams schemas tests

bench: venv deps ## issue 11's benchmark on a private stack (as root for cgroup CPU/quotas) -> bench/results/latest.json; BENCH_ARGS=--quick
	$(BIN)/pip install -q --disable-pip-version-check 'py-spy>=0.4'
	$(BIN)/python bench/pipeline_bench.py $(BENCH_ARGS)

bench-rebuild: venv deps ## time a rebuild of Redis from the topics after FLUSHALL (~5 min, 100k users); BENCH_ARGS=--users 5000
	$(BIN)/python bench/rebuild_bench.py $(BENCH_ARGS)

stack-up: venv deps ## start Kafka and Redis for development (data in var/)
	$(BIN)/fenxiao stack up

stack-down: venv ## stop the development Kafka and Redis
	$(BIN)/fenxiao stack down

stack-status: venv ## show whether the development Kafka and Redis run and answer
	$(BIN)/fenxiao stack status

clean: ## stop the development stack if it runs, then delete var/ (its data and logs)
	@if [ -x $(BIN)/fenxiao ] && { [ -f var/kafka/kafka.pid ] || [ -f var/redis/redis.pid ]; }; then $(BIN)/fenxiao stack down; fi
	rm -rf var
