# A first run on a fresh machine is two commands, each doing its own set-up:
#   make demo   a venv (.venv) with pinned CPU torch and the plugin, then the project's main
#               workflow on the shipped WNUT-17 sample: a trained, evaluated, packaged pipeline
#   make test   what CI runs (.ci/run): the venv with every extra, ruff, then the tests
# The sample is small: 500 steps learn what it can teach. Other project vars:
#   make demo DEMO_VARS="--vars.max_steps 2000 --vars.threads 1"

PYTHON ?= python3
VENV ?= .venv
# Pinned first: an open torch requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_VARS ?= --vars.max_steps 500

BIN := $(VENV)/bin

.PHONY: demo test

demo: $(VENV)/.demo-installed
	$(BIN)/python -m spacy project run all . $(DEMO_VARS)

$(VENV)/.demo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[project]"
	touch $@

test:
	bash .ci/run
