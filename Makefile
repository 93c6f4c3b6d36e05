# Scripts to rule them all: one obvious command for each job a developer has.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install bench-install dev test lint format bench lock upgrade-lock clean

# Installs come from the lock file: the exact versions (and hashes) the suite last passed with.
# Conveyor itself goes in on top, editable and without resolving anything again.
$(STAMP): requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Conveyor with its dev tools, from the lock file

# The peers bench/peers.py measures against live in a venv of their own: Celery's kombu pins a
# `packaging` the dev lock does not have, and `make install` must stay the suite's exact lock.
# requirements/bench.txt is Conveyor's runtime lock (unchanged pins) plus the `bench` extra.
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
$(BENCH_STAMP): requirements/bench.txt pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	# pip itself is not locked; 23.x refuses arq's `redis[hiredis]` in hash-checking mode.
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(BENCH_VENV)/bin/python -m pip install --quiet --require-hashes -r requirements/bench.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)  ## create .venv-bench: Conveyor's runtime lock plus the peers (arq, SAQ, Celery, ...)

dev: $(STAMP)      ## run API + worker on embedded defaults (SQLite, embedded Redis)
	$(BIN)/conveyor dev

test: $(STAMP)     ## the whole test suite, against real Redis and PostgreSQL
	$(BIN)/python -m pytest

lint: $(STAMP)     ## ruff, mypy, and cfn-lint on the AWS template
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint infra/template.yaml

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) $(BENCH_STAMP)  ## every benchmark; each prints its ratio on the last line
	$(BIN)/python bench/worker_overhead.py
	$(BIN)/python bench/analytics.py
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/get_throughput.py
	$(BIN)/python bench/submit.py
	$(BIN)/python bench/web_fragments.py
	$(BIN)/python bench/page_latency.py
	$(BIN)/python bench/pipelined_redis.py
	$(BENCH_VENV)/bin/python bench/peers.py

# Re-lock after changing pyproject.toml's dependencies: keeps every pin that still fits, adds
# what is new. `make upgrade-lock` moves every pin to today's newest. Then `make test`.
LOCK = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --universal --python-version 3.11
lock: $(STAMP)     ## re-lock requirements/*.txt after a dependency change (then: make test)
	$(LOCK) --extra dev -o requirements/dev.txt $(UPGRADE)
	$(LOCK) -o requirements/runtime.txt $(UPGRADE)
	$(LOCK) --extra bench -c requirements/runtime.txt -o requirements/bench.txt $(UPGRADE)

upgrade-lock:      ## move every pin to the newest release (then: make test)
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
