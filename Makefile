# make demo | make test  (each creates .venv and installs on first use)
PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled

.PHONY: setup demo test test-fast test-slow test-all lint bench notebooks-strip clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, pinned, so nothing pulls the CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -c "import raytrade, raytrade_envs, ray, torch, talib, mlflow"
	touch $(STAMP)

demo: setup
	$(BIN)/raytrade pipeline --config jobs/configs/demo.yaml

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -x -q --ignore=tests/test_pipeline_e2e.py

test-slow: setup
	$(BIN)/python -m pytest -m slow

test-all: setup
	$(BIN)/python -m pytest -m ""

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m benchmarks

# clear notebook outputs before committing (tests/test_layout.py fails on outputs in git)
notebooks-strip: setup
	$(BIN)/python -c "import glob, nbformat; nbs = {p: nbformat.read(p, as_version=4) for p in glob.glob('notebooks/*.ipynb')}; \
	  [c.update(outputs=[], execution_count=None) for nb in nbs.values() for c in nb.cells if c.cell_type == 'code']; \
	  [nbformat.write(nb, p) for p, nb in nbs.items()]"

clean:
	rm -rf runs mlruns .pytest_cache
