# Two commands do all the setup on a fresh machine (see README.md):
#   make backup   - a first encrypted backup into the embedded default store
#   make test     - the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCE ?= src
NAME ?= first-$(shell date +%Y%m%d-%H%M%S)

.PHONY: backup test bench lint

$(BIN)/strongroom: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . --group dev
	touch $@

backup: $(BIN)/strongroom
	$(BIN)/strongroom create --name $(NAME) $(SOURCE)
	$(BIN)/strongroom list

test: $(BIN)/strongroom
	$(BIN)/python -m pytest

lint: $(BIN)/strongroom
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(BIN)/strongroom
	$(BIN)/python benchmarks/throughput.py --workdir $(or $(WORKDIR),/tmp/strongroom-bench)
