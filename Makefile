# Flow Matching in JAX: the two commands of the README, and a few more.
#   make book          build the HTML book into _build/html (sets up .venv first)
#   make test          every check: unit tests, notebooks (nbval), book build, browser, and
#                      each chapter's install and imports on Colab's stack; prints the time
#                      of each stage (also in _build/test-times.txt)
#   make colab-smoke   on Colab's stack, each chapter's setup cell and imports only
#   make colab-check   run every chapter in full on Colab's stack, setup cell in install mode
#                      (before a chapter is called done; not in make test, see README)
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

.PHONY: book test unit notebooks browser browser-test colab-smoke colab-check bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The chapters the book cache lacks run first, two at a time; the build then takes every
# chapter's outputs from the cache (execute_notebooks: cache) and executes nothing.
book: $(STAMP)
	$(BIN)/python scripts/notebooks.py --fill-cache
	$(BIN)/jupyter-book build . -W -n --keep-going

# Two workers, a test file each at a time (a file's module fixtures are built once).
unit: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile \
		--ignore=tests/browser tests

# Each chapter runs once, on two workers; chapters/conftest.py hands what ran to the
# book's cache, so the `book` stage after it executes nothing again.
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope \
		--nbval-lax --nbval-current-env chapters

# Debian's Chromium drives the browser test (browser downloads fail on these machines).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

browser-test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/browser

colab-smoke:
	bash scripts/colab_check.sh --smoke

colab-check:
	bash scripts/colab_check.sh

# The full Colab run (colab-check) would execute every chapter a second time, on a stack
# with the same jax, flax and optax; it costs more than a third of make test's 30-minute
# budget, so make test runs the smoke check and colab-check runs before a chapter is done.
TEST_STAGES := unit notebooks book browser-test colab-smoke
test:
	@mkdir -p _build && : > _build/test-times.txt
	@for stage in $(TEST_STAGES); do \
		start=$$(date +%s); \
		$(MAKE) --no-print-directory $$stage; \
		echo "$$stage $$(( $$(date +%s) - start ))" >> _build/test-times.txt; \
	done
	@awk '{printf "%-14s %5d s\n", $$1, $$2; t += $$2} END {printf "%-14s %5d s\n", "make test", t}' \
		_build/test-times.txt

bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/run.py --only all  # every section, the opt-in profile too

clean:
	rm -rf _build .jupyter_cache
