# Everyday targets. `make serve` and `make test` work from a fresh clone (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install serve test test-fast lint format typecheck bench bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pinned first and exactly: anything looser pulls multi-GB CUDA builds from the network.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: install  ## the embedded default: API + one worker on SQLite and a filesystem broker
	$(BIN)/jaga serve

test: install  ## the full suite (needs PostgreSQL and Redis on localhost; see README)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install  ## unit and API tests only
	$(BIN)/pytest -m "not integration and not e2e and not faults" $(PYTEST_ARGS)

lint: install  ## ruff's lint rules and its formatter's check (pyproject.toml); CI runs it beside the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install  ## mypy on api, worker and ssl_core; CI runs it beside the tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_simclr.py
	$(BIN)/python bench/bench_methods.py
	$(BIN)/python bench/learning_control.py

bench-quick: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_simclr.py --quick
	$(BIN)/python bench/bench_methods.py --quick
	$(BIN)/python bench/learning_control.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
