# Glimpse: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else here is what those two are made of.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export GRADIO_ANALYTICS_ENABLED := False
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: demo test lint setup system-deps train clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install the pinned requirements

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-*
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

test: setup system-deps  ## run the whole test suite
	$(PY) -m pytest

lint: setup  ## ruff check and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:  ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
