# Two commands do all the setup on a fresh machine (see README.md):
#   make backup   - a first encrypted backup into the embedded default store
#   make test     - the whole test suite (core and plugins, against local S3 and Azurite servers)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCE ?= src
NAME ?= first-$(shell date +%Y%m%d-%H%M%S)
PLUGINS := $(dir $(wildcard plugins/*/pyproject.toml))
AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob

.PHONY: backup test bench lint

$(BIN)/strongroom: pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . $(foreach plugin,$(PLUGINS),-e $(plugin)) --group dev
	touch $@

$(AZURITE):
	npm install --no-save --no-audit --no-fund --prefix $(VENV)/node azurite@3

backup: $(BIN)/strongroom
	$(BIN)/strongroom create --name $(NAME) $(SOURCE)
	$(BIN)/strongroom list

test: $(BIN)/strongroom $(AZURITE)
	$(BIN)/python -m pytest

lint: $(BIN)/strongroom
	$(BIN)/ruff check src tests benchmarks plugins
	$(BIN)/mypy
	$(foreach plugin,$(PLUGINS),MYPYPATH=src $(BIN)/mypy --strict $(plugin)src &&) true

bench: $(BIN)/strongroom
	$(BIN)/python benchmarks/throughput.py --workdir $(or $(WORKDIR),/tmp/strongroom-bench)
