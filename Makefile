# Quick start:  `make repro` (set up + run the pipeline)   `make test` (set up + run the tests)
# GPU users: make repro TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
RUN := env PATH="$(BIN):$$PATH"

.PHONY: setup setup-dev repro test clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

repro: setup
	$(RUN) dvc repro

# Bytecode writing stays ON for the tests, as on users' machines: PYTHONDONTWRITEBYTECODE=1 once hid that
# __pycache__ changed the hash of DVC's code directory dependencies.
test: setup-dev
	$(RUN) env -u PYTHONDONTWRITEBYTECODE python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
