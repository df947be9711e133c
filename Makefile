# Two commands do all the setup on a fresh machine (see README.md):
#   make backup   - a first encrypted backup into the embedded default store
#   make test     - lint (ruff, mypy --strict), then the whole test suite (core and plugins,
#                   against local S3, Azurite and PostgreSQL servers);
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
#: (postgresql: the tests start their own server from its binaries, as a non-root user.)
DEBIAN_PACKAGES := chromium chromium-driver postgresql
DEBIAN_FILES := /usr/bin/chromium /usr/bin/chromedriver /usr/share/doc/postgresql/copyright
#: Debian packages make bench compares strongroom with (and GNU time, for peak RSS).
BENCH_DEBIAN_PACKAGES := borgbackup restic age time
BENCH_DEBIAN_FILES := /usr/bin/borg /usr/bin/restic /usr/bin/age /usr/bin/time
BENCH_ARGS ?=

# $(call apt_install,PACKAGES,WHO): apt-get install PACKAGES as root or with passwordless sudo;
# where that cannot be done, say what to run and fail.
define apt_install
	@if ! command -v apt-get >/dev/null; then \
		echo "$(2) needs $(1) (Debian package names): install them, then run it again." >&2; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then sudo=; \
	elif sudo -n true 2>/dev/null; then sudo=sudo; \
	else echo "$(2) needs the Debian packages $(1): run 'sudo apt-get install $(1)', then $(2) again." >&2; exit 1; fi; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null
endef

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
	$(call apt_install,$(DEBIAN_PACKAGES),make test)

# The benchmark skips a tool that is missing, so a failed install does not stop make bench (-).
$(BENCH_DEBIAN_FILES) &:
	-$(call apt_install,$(BENCH_DEBIAN_PACKAGES),make bench)

test: $(BIN)/strongroom $(AZURITE) $(DEBIAN_FILES) lint
	$(BIN)/python -m pytest

lint: $(BIN)/strongroom
	$(BIN)/ruff check src tests benchmarks plugins
	$(BIN)/mypy
	$(foreach plugin,$(PLUGINS),MYPYPATH=src $(BIN)/mypy --strict $(plugin)src &&) true

# Cold-cache runs: as root (it drops the page cache before every run), or BENCH_ARGS=--warm.
bench: $(BIN)/strongroom $(BENCH_DEBIAN_FILES)
	$(BIN)/python benchmarks/throughput.py --workdir $(or $(WORKDIR),/tmp/strongroom-bench) $(BENCH_ARGS)
