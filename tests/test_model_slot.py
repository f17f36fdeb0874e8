"""A serving replica's model slot (raytrade.serving.slots.ModelSlot) when the registry cannot be read: "no such alias"
and "the tracking server does not answer" are told apart (raytrade.tracking.aliased_version), and a failed background
reload keeps the loaded model and says why (``reload_error``, shown in GET /models).

Real parts: a SQLite MLflow store for the missing model and alias, and a port nothing listens on for the lost
server (MLflow's client told to give up after one try, as serve_configs/ensemble.cluster.yaml does). The same on a
real multi-node cluster with its tracking server killed: tests/test_local_cluster.py.
"""

from __future__ import annotations

import asyncio

import pytest
from mlflow.exceptions import MlflowException

from conftest import free_port
from raytrade import tracking
from raytrade.serving.slots import LoadedModel, ModelSlot


@pytest.fixture
def one_try(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_a_missing_model_or_alias_is_none_and_a_lost_server_an_error(tmp_path, one_try):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.aliased_version(uri, "no-such-model", "champion") is None
    tracking.use_tracking_uri(uri)
    MlflowClient().create_registered_model("m")
    assert tracking.aliased_version(uri, "m", "champion") is None
    with pytest.raises(MlflowException, match="127.0.0.1"):
        tracking.aliased_version(f"http://127.0.0.1:{free_port()}", "m", "champion")


def test_a_failed_reload_keeps_the_model_and_reports_why(one_try):
    loads = []

    def loader(uri, name, alias, version):  # noqa: ANN001 - the registry's answer when the replica started
        loads.append(name)
        return LoadedModel(object(), name, alias, "1", "run-1", "2026-12-05T00:00:00+00:00")

    slot = ModelSlot(f"http://127.0.0.1:{free_port()}", "raytrade-forecaster", loader=loader)
    first = slot.current
    assert slot.reload_error is None
    asyncio.run(slot._refresh())  # what poll() starts in the background every reload_interval_s
    assert slot.current is first and loads == ["raytrade-forecaster"]  # still serving version 1
    assert slot.reload_error is not None and "127.0.0.1" in slot.reload_error
