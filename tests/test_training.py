"""Ray Train forecaster training on real bars: checkpoints are bundles, seeded CPU runs repeat exactly,
early stopping, DDP with two workers, and recovery from a killed training worker."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import BUNDLED, REPO
from raytrade.config import load_config
from raytrade.dataset.prepare import load_market_data, prepare_data
from raytrade.models.bundle import ForecasterBundle
from raytrade.training.loop import TRAIN_STATE_FILE, LoopConfig
from raytrade.training.trainer import balanced_class_weights, fit_forecaster, loop_config

# metrics that depend on wall-clock time or process memory, not on the computation
TIMING = ["epoch_time_s", "train_samples_per_s", "peak_rss_mb"]


@pytest.fixture(scope="module")
def prepared(ray_local):
    cfg = load_config(REPO / "jobs/configs/smoke.yaml", {"data": {"path": str(BUNDLED), "max_bars": 2000}})
    return cfg, prepare_data(cfg, load_market_data(cfg))


def _fit(cfg, prepared, tmp_path, name, **train):
    train_cfg = cfg.train.model_copy(update=train)
    w = prepared.windows(cfg.model.lookback)
    return fit_forecaster(w["train"], w["val"], cfg.model, train_cfg, scaler=prepared.scaler, features=cfg.features,
                          labels=cfg.labels, storage_dir=tmp_path, name=name)


def test_balanced_class_weights_follow_inverse_frequency():
    y = np.array([0] * 10 + [1] * 30 + [2] * 20 + [-1] * 5)
    w = balanced_class_weights(y)
    np.testing.assert_allclose(w, [60 / (3 * 10), 60 / (3 * 30), 60 / (3 * 20)])
    assert balanced_class_weights(np.array([1, 1, 2]))[0] == 0.0  # absent class


def test_loop_config_is_typed_and_survives_ray_trains_dict(prepared):
    cfg, data = prepared
    w = data.windows(cfg.model.lookback)
    config = loop_config(w["train"], cfg.model, cfg.train, data.scaler, cfg.features, cfg.labels, epochs=3)
    assert isinstance(config, LoopConfig) and config.epochs == 3 and config.batch_size == cfg.train.batch_size
    assert config.class_weights == tuple(balanced_class_weights(w["train"].y_class))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 1  # type: ignore[misc]
    # Ray Train's train_loop_config is a dict: the workers rebuild the same config from it
    as_dict = config.to_dict()
    assert LoopConfig.from_dict(as_dict) == config
    # a value set in that dict (e.g. a hyperparameter Tune samples) overrides its field; unknown keys are named
    assert LoopConfig.from_dict({**as_dict, "learning_rate": 0.5}).learning_rate == 0.5
    with pytest.raises(TypeError, match="'learning_rat'"):
        LoopConfig.from_dict({**as_dict, "learning_rat": 0.5})


def test_checkpoints_are_bundles_and_seeded_runs_repeat(prepared, tmp_path):
    cfg, data = prepared
    a = _fit(cfg, data, tmp_path, "a", epochs=2, early_stopping_patience=None)
    b = _fit(cfg, data, tmp_path, "b", epochs=2, early_stopping_patience=None)
    assert list(a.history["epoch"]) == [1, 2]
    ha, hb = a.history.drop(columns=TIMING), b.history.drop(columns=TIMING)
    assert ha.equals(hb), f"two identical CPU runs differ:\n{ha}\n{hb}"
    # every epoch's checkpoint is a complete bundle (weights + scaler + config) plus the train state
    loaded = ForecasterBundle.load(a.checkpoint_path)
    assert loaded.scaler.to_dict() == data.scaler.to_dict() and loaded.lookback == cfg.model.lookback
    assert os.path.isfile(os.path.join(a.checkpoint_path, TRAIN_STATE_FILE))
    x = data.windows(cfg.model.lookback)["test"].x[:16]
    np.testing.assert_array_equal(loaded.forecast_windows(x)["probs"], a.bundle.forecast_windows(x)["probs"])
    # a different seed gives a different model
    c = _fit(cfg, data, tmp_path, "c", epochs=1, early_stopping_patience=None, seed=7)
    assert c.history["val_loss"].iloc[0] != a.history["val_loss"].iloc[0]


def test_early_stopping_ends_training_when_val_loss_stalls(prepared, tmp_path):
    cfg, data = prepared
    # a learning rate of 1e-9 cannot move the val loss by min_delta: epochs 2 and 3 are "bad"
    out = _fit(cfg, data, tmp_path, "stall", epochs=10, learning_rate=1e-9, early_stopping_patience=2,
               early_stopping_min_delta=1e-3)
    assert list(out.history["epoch"]) == [1, 2, 3]
    assert out.history["stopped_early"].tolist() == [0, 0, 1]
    assert out.best_metrics["epoch"] == 1


def test_two_workers_train_with_ddp(prepared, tmp_path):
    cfg, data = prepared
    out = _fit(cfg, data, tmp_path, "ddp", epochs=1, num_workers=2, cpus_per_worker=1.0)
    assert out.history["world_size"].tolist() == [2]
    assert np.isfinite(out.history["val_loss"]).all()


def _train_worker_pids(run_name: str) -> list[int]:
    """Live Ray Train worker processes of the run ``run_name`` (Ray Train makes each worker's working
    directory ``<session>/artifacts/<run name>``), so workers of earlier runs still exiting are skipped."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []) and proc.cwd().endswith(f"/{run_name}"):
                pids.append(proc.info["pid"])
        except psutil.Error:
            continue
    return pids


def _registered_epochs(run_dir) -> list[int]:
    """Epochs whose checkpoints Ray Train's controller has registered (its checkpoint-manager snapshot)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being rewritten
        return []
    return [int(r["metrics"]["epoch"]) for r in snapshot.get("checkpoint_results", [])]


def test_killed_worker_resumes_from_last_checkpoint(prepared, tmp_path):
    cfg, data = prepared
    epochs = 12
    result: dict = {}

    def run():
        try:
            result["out"] = _fit(cfg, data, tmp_path, "ft", epochs=epochs, early_stopping_patience=None,
                                 max_failures=2)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 240
    killed, registered = None, 0
    while time.time() < deadline and thread.is_alive():
        # kill once the controller has REGISTERED the epoch-2 checkpoint (a checkpoint on disk whose report is
        # still queued is not resumable: the restart would rightly begin at epoch 0)
        done = _registered_epochs(tmp_path / "ft")
        if max(done, default=0) >= 2:
            pids = _train_worker_pids("ft")
            if pids:  # every live worker process of this run (one worker; a process may linger briefly)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                killed, registered = pids, max(done)
                break
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None, "never saw the epoch-2 checkpoint registered while training ran"
    assert "error" not in result, result.get("error")
    history = result["out"].history
    assert history["epoch"].max() == epochs
    resumed = history[history["resumed_from_epoch"] > 0]
    assert len(resumed), f"no epoch reports a resume:\n{history}"
    # training resumed from the last REGISTERED checkpoint (the one seen at the kill, or the next if it was
    # registered between the check and the kill), not from epoch 0
    first = int(resumed["resumed_from_epoch"].iloc[0])
    assert first in (registered, registered + 1) and first >= 2
    assert resumed["epoch"].iloc[0] == first + 1
    assert history[history["resumed_from_epoch"] == 0]["epoch"].max() >= first
