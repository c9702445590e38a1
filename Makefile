# Everyday targets. `make serve` and `make test` work from a fresh clone (they create .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install serve test test-fast lint format typecheck torch-kept image-test bench bench-quick clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# PyTorch first, at the exact build of constraints.txt; the package's ranges then keep it.
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
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

torch-kept: install  ## installing Jaga where PyTorch already is changes no torch package; CI runs it
	$(BIN)/python -m pip install -q --dry-run --no-build-isolation --report $(VENV)/install-report.json .
	$(BIN)/python .ci/torch_kept.py $(VENV)/install-report.json

CONTAINER_CLI ?= docker
CONTAINER_BUILD_ARGS ?=
CONTAINER_RUN_ARGS ?=
image-test: install  ## build the image and run it as docker-compose.yml does (needs Docker or Podman, PostgreSQL, Redis)
	$(CONTAINER_CLI) build $(CONTAINER_BUILD_ARGS) -t jaga:test .
	JAGA_TEST_IMAGE=jaga:test JAGA_CONTAINER_CLI="$(CONTAINER_CLI)" JAGA_CONTAINER_RUN_ARGS="$(CONTAINER_RUN_ARGS)" \
		$(BIN)/pytest -m image tests/image $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/bench_simclr.py
	$(BIN)/python bench/bench_methods.py
	$(BIN)/python bench/learning_control.py

bench-quick: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/bench_simclr.py --quick
	$(BIN)/python bench/bench_methods.py --quick
	$(BIN)/python bench/learning_control.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
