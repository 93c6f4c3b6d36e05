# Scripts to rule them all: one obvious command for each job a developer has.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install dev test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Conveyor with its dev tools

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
