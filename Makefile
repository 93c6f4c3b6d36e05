# Scripts to rule them all: one obvious command for each job a developer has.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev test lint format bench lock upgrade-lock clean

# Installs come from the lock file: the exact versions (and hashes) the suite last passed with.
# Conveyor itself goes in on top, editable and without resolving anything again.
$(STAMP): requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Conveyor with its dev tools, from the lock file

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

bench: $(STAMP)    ## every benchmark; each prints its ratio on the last line
	$(BIN)/python bench/worker_overhead.py
	$(BIN)/python bench/analytics.py
	$(BIN)/python bench/detection.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/get_throughput.py
	$(BIN)/python bench/web_fragments.py
	$(BIN)/python bench/pipelined_redis.py

# Re-lock after changing pyproject.toml's dependencies: keeps every pin that still fits, adds
# what is new. `make upgrade-lock` moves every pin to today's newest. Then `make test`.
LOCK = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --universal --python-version 3.11
lock: $(STAMP)     ## re-lock requirements/*.txt after a dependency change (then: make test)
	$(LOCK) --extra dev -o requirements/dev.txt $(UPGRADE)
	$(LOCK) -o requirements/runtime.txt $(UPGRADE)

upgrade-lock:      ## move every pin to the newest release (then: make test)
	$(MAKE) lock UPGRADE=--upgrade

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
