# Two commands do all the setup on a fresh machine (see README.md):
#   make backup   - a first encrypted backup into the embedded default store
#   make test     - lint (ruff, mypy --strict), then the whole test suite (core and plugins,
#                   against local S3 and Azurite servers);
#                   it installs what the tests need: Python packages, npm azurite, and the Debian
#                   packages below (with apt-get, as root or with passwordless sudo)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCE ?= src
NAME ?= first-$(shell date +%Y%m%d-%H%M%S)
PLUGINS := $(dir $(wildcard plugins/*/pyproject.toml))
AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob
#: Debian packages the tests need, and a file each one installs.
DEBIAN_PACKAGES := chromium chromium-driver
DEBIAN_FILES := /usr/bin/chromium /usr/bin/chromedriver

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

$(DEBIAN_FILES) &:
	@if ! command -v apt-get >/dev/null; then \
		echo "make test needs $(DEBIAN_FILES): install Chromium and ChromeDriver there (Debian: $(DEBIAN_PACKAGES)), then run it again." >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then sudo=; \
	elif sudo -n true 2>/dev/null; then sudo=sudo; \
	else echo "make test needs the Debian packages $(DEBIAN_PACKAGES): run 'sudo apt-get install $(DEBIAN_PACKAGES)', then make test again." >&2; exit 1; fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null

test: $(BIN)/strongroom $(AZURITE) $(DEBIAN_FILES) lint
	$(BIN)/python -m pytest

lint: $(BIN)/strongroom
	$(BIN)/ruff check src tests benchmarks plugins
	$(BIN)/mypy
	$(foreach plugin,$(PLUGINS),MYPYPATH=src $(BIN)/mypy --strict $(plugin)src &&) true

bench: $(BIN)/strongroom
	$(BIN)/python benchmarks/throughput.py --workdir $(or $(WORKDIR),/tmp/strongroom-bench)
