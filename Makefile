# One-command set-up: every target creates the virtual environment first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
TORCH := torch==2.13.0
DEMO_DIR ?= demo

.PHONY: venv demo test test-slow test-lean lint clean

$(BIN)/slimformer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/slimformer

venv: $(BIN)/slimformer

demo: venv
	$(BIN)/slimformer run --output $(DEMO_DIR)

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m ci_slow
	$(MAKE) test-lean

# the lean install (ONNX serving without torch/transformers): the package without its dependencies + requirements-serve.txt
LEAN := .venv-lean
$(LEAN)/bin/slimformer: pyproject.toml requirements-serve.txt
	test -x $(LEAN)/bin/python || $(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/pip install --quiet --upgrade pip
	$(LEAN)/bin/pip install --quiet -r requirements-serve.txt pytest httpx
	$(LEAN)/bin/pip install --quiet --no-deps -e .
	touch $(LEAN)/bin/slimformer

test-lean: $(LEAN)/bin/slimformer
	$(LEAN)/bin/pytest -q tests/test_lean.py

test-slow: venv
	$(BIN)/pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
