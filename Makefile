# stablelab: every target sets up .venv first if it is missing or stale.
# GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
ARGS        ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.stablelab-installed

.DEFAULT_GOAL := help
.PHONY: help install train diagnose test test-all lint format clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(STAMP)  ## create .venv and install stablelab (editable) with dev tools

train: $(STAMP)  ## train the default experiment on CPU (extra Hydra overrides: ARGS="...")
	$(BIN)/stablelab-train $(ARGS)

DIAGNOSE_ARGS ?= max_train_steps=500 logger=csv --jobs 2
diagnose: $(STAMP)  ## LR sweep -> probe -> warmup sweep -> clip threshold on the default (a few minutes)
	$(BIN)/stablelab diagnose $(DIAGNOSE_ARGS) $(ARGS)

test: $(STAMP)  ## run the test suite (slow reproductions excluded)
	$(BIN)/python -m pytest $(ARGS)

test-all: $(STAMP)  ## run every test, the slow reproductions included
	$(BIN)/python -m pytest -m "" $(ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)  ## ruff fix + format
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:  ## remove outputs, caches and the virtual environment
	rm -rf $(VENV) logs outputs multirun data build dist .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
