# The two commands of the README:
#   make run    set up, train the PyTorch VAE example's MLP on MNIST, evaluate it, write its pictures and numbers
#   make test   set up, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch where one is at hand (a local wheel, or TORCH_INDEX_URL pointing at a
# CPU wheel index); otherwise whatever `pip install torch` gives on this platform.
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_INDEX_URL ?=
RUN ?= runs/mnist-$(shell date +%Y%m%d-%H%M%S)
TRAIN_ARGS ?=
EVAL_ARGS ?= --k 1 10 100 1000
PYTEST_ARGS ?=

.PHONY: setup run test test-fast lint bench frontier clean

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
	  { if [ -n "$(TORCH_INDEX_URL)" ]; then $(BIN)/python -m pip install torch --index-url "$(TORCH_INDEX_URL)"; \
	    else $(BIN)/python -m pip install "$(TORCH_CPU)" || $(BIN)/python -m pip install "torch>=2.4"; fi; }
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

run: setup
	$(BIN)/vaelab train --out $(RUN) $(TRAIN_ARGS)
	$(BIN)/vaelab evaluate --checkpoint $(RUN) $(EVAL_ARGS)
	$(BIN)/vaelab report $(RUN)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/throughput.py

frontier: setup
	$(BIN)/python bench/frontier.py --out runs/frontier $(FRONTIER_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
