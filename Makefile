# Glimpse: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else here is what those two are made of.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
export GRADIO_ANALYTICS_ENABLED := False
# TensorFlow's start-up lines are kept off the terminal by shared/terminal.py (a level set
# here would override it); `make demo GLIMPSE_VERBOSE=1` shows them.

.PHONY: demo test lint setup setup-dev system-deps train clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install the pinned requirements of the demo and training

setup-dev: $(DEV_STAMP)  ## setup, plus the pinned test and lint tools

# The pinned requirements install on Python 3.11-3.13 (pyproject.toml; tests/test_requirements.py).
CHECK_PYTHON := import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 13) else \
	"Glimpse needs Python 3.11-3.13, not %d.%d: run make with PYTHON=python3.12 (or another), after removing .venv if it was made with that Python" % v)

$(STAMP): requirements.txt
	@test -x $(PY) || { $(PYTHON) -c '$(CHECK_PYTHON)' && $(PYTHON) -m venv $(VENV); }
	@$(PY) -c '$(CHECK_PYTHON)'
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-[0-9]*
	@touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-dev-*
	@touch $@

system-deps:  ## Debian packages for the browser test and CJK plots (needs root; skipped otherwise)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-cjk >/dev/null; \
	else echo "note: chromium/chromedriver not installed and not root: the browser test will be skipped"; fi

demo: setup  ## train both models on the built-in data if needed, export them, launch the demos
	$(PY) -m training.demo

train: setup  ## train both models on the built-in data (again), without launching the demos
	$(PY) -m training.demo --no-launch

# Test files run in parallel worker processes, each file's tests in one worker (its trained
# fixtures are made once). Two suit a 2-core machine; more cores: make test TEST_WORKERS=4.
TEST_WORKERS ?= 2

test: setup-dev system-deps  ## run the whole test suite
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: setup-dev  ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:  ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
