# factkeep: `make demo` sets everything up and runs the demo; `make test` runs lint and the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format slow clean

setup: $(VENV)/.installed

# constraints.txt pins the CPU build of torch and the versions the tests run with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/factkeep demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/factkeep

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

slow: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
