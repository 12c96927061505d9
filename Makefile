# Quick start:  `make repro` (set up + run the pipeline)   `make test` (set up + run the tests)
# GPU users: make repro TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
RUN := env PATH="$(BIN):$$PATH"
# Hashed pins of everything but torch (pip-tools); `make lock` regenerates them, README "Upgrading dependencies".
LOCK := requirements/lock.txt
LOCK_DEV := requirements/lock-dev.txt
# pip-tools lives in its own venv so that it never enters the project's environment or its lock.
LOCK_TOOLS := $(abspath .venv-lock)/bin
# uv installs the locked set ~4x faster than pip (62 s vs 4 min for the dev set here); INSTALLER=pip uses pip.
# Either way only the lock is installed: torch stays with pip, which finds the local CPU wheel and TORCH_SPEC.
# --compile-bytecode: write the .pyc files at install time, as pip does by default (uv does not); without them
# every stage compiles its imports from source where bytecode cannot be written (PYTHONDONTWRITEBYTECODE, a
# read-only venv): +4 s per train stage here (BENCHMARKS.md).
INSTALLER ?= uv
UV_SPEC ?= uv==0.13.9
ifeq ($(INSTALLER),uv)
INSTALL_LOCK = $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --require-hashes --no-deps -r
else
INSTALL_LOCK = $(BIN)/python -m pip install -q --require-hashes --no-deps -r
endif

.PHONY: setup setup-dev repro test test-fast lock clean-venv

# The lock first, exactly (--no-deps: it is complete), then torch from TORCH_SPEC on top (its dependencies are
# already locked, so only torch and, for a CUDA build, its CUDA libraries come in), then the package itself.
# `pip check` fails when pyproject.toml asks for something the lock lacks: run `make lock`.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(if $(filter uv,$(INSTALLER)),$(UV_SPEC))
	$(INSTALL_LOCK) $(LOCK)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(LOCK_DEV)
	$(INSTALL_LOCK) $(LOCK_DEV)
	$(BIN)/python -m pip check
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

repro: setup
	$(RUN) dvc repro

# Bytecode writing stays ON for the tests, as on users' machines: PYTHONDONTWRITEBYTECODE=1 once hid that
# __pycache__ changed the hash of DVC's code directory dependencies.
# Tests run on every core (pytest-xdist): each file whole on one worker, its tests in file order (the e2e files
# build on their earlier tests), files handed out in collection order, so that the two longest (tests/e2e/) start
# first on two workers. TEST_WORKERS=0 runs them in this process, one after the other.
TEST_WORKERS ?= auto
PYTEST := $(RUN) env -u PYTHONDONTWRITEBYTECODE python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) \
	--dist loadfile --no-loadscope-reorder
test: setup-dev
	$(PYTEST) $(PYTEST_ARGS)

# The fast tier (tests/unit, tests/stages; no `dvc repro`, no servers, no torchrun, nothing marked slow).
test-fast: setup-dev
	$(PYTEST) -m "(unit or stages) and not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Re-resolve both locks from pyproject.toml's ranges, newest releases first (pip-compile keeps a pin that still
# fits unless told --upgrade: LOCK_ARGS=--upgrade, or LOCK_ARGS="--upgrade-package transformers").
# torch is resolved at TORCH_SPEC's version so that its own dependencies are locked, then left out of the files
# (--unsafe-package; pip-compile notes it at the end): on a machine whose `pip install torch==X` finds only the
# CUDA build, add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or the guard below stops.
LOCK_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/pip-compile -q --generate-hashes --strip-extras --no-allow-unsafe \
	--unsafe-package torch --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock:
	test -x $(LOCK_TOOLS)/pip-compile || { $(PYTHON) -m venv $(dir $(LOCK_TOOLS)) && \
		$(LOCK_TOOLS)/python -m pip install -q "pip-tools>=7.4,<8"; }
	mkdir -p requirements
	tmp=$$(mktemp) && echo "$(firstword $(TORCH_SPEC))" > $$tmp && \
	$(LOCK_COMPILE) -c $$tmp -o $(LOCK) pyproject.toml && \
	$(LOCK_COMPILE) -c $$tmp -c $(LOCK) --extra dev -o $(LOCK_DEV) pyproject.toml; \
	status=$$?; rm -f $$tmp; exit $$status
	! grep -HnE '^(nvidia-|cuda-|triton==)' $(LOCK) $(LOCK_DEV) || \
		{ echo "make lock: CUDA packages above entered the lock: torch resolved to a CUDA build (see the comment above 'lock:' in the Makefile)"; exit 1; }
