# Flow Matching in JAX: the two commands of the README, and a few more.
#   make book          build the HTML book into _build/html (sets up .venv first)
#   make test          every check: unit tests, notebooks (nbval), book build, browser, Colab stack
#   make colab-check   run every chapter on Colab's package versions, setup cell in install mode
#   make bench         measure speed and quality (benchmarks/), write benchmarks/results/latest.json
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep JAX on the CPU and quiet, and pytest's cache out of the tree.
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: book test unit notebooks build-book browser browser-test colab-check bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/browser tests

notebooks: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env chapters

build-book: book

# Debian's Chromium drives the browser test (browser downloads fail on these machines).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

browser-test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

colab-check:
	bash scripts/colab_check.sh

test: unit notebooks build-book browser-test colab-check

bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build .jupyter_cache
