"""Ray Tune search over the forecaster: Optuna's TPE sampler (``OptunaSearch``) + ASHA early stopping.

Each trial is a small driver function that builds the trial's windows (the lookback is searched)
and runs the SAME Ray Train ``TorchTrainer`` as a normal training run, forwarding every epoch's
metrics to Tune with ``TuneReportCallback`` (the Train V2 + Tune pattern), so ASHA can stop bad
trials after ``grace_period`` epochs. Every trial is logged to MLflow by Ray's
``MLflowLoggerCallback`` (see :func:`raytrade.tracking.tune_logger_callback`).

References: Bergstra et al., "Algorithms for Hyper-Parameter Optimization" (TPE), NeurIPS 2011;
Li et al., "A System for Massively Parallel Hyperparameter Tuning" (ASHA), MLSys 2020.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.windows import make_windows
from raytrade.errors import ConfigError
from raytrade.features.scaler import FeatureScaler

#: CPUs held by each trial's driver function, which only waits on its Ray Train workers
TRIAL_DRIVER_CPUS = 0.01
#: metrics where larger is better (everything else is minimised)
_MAXIMISED = ("val_accuracy", "val_macro_f1", "val_ic")


def metric_mode(metric: str) -> str:
    """``"max"`` for accuracy/F1/IC metrics, else ``"min"``."""
    return "max" if metric in _MAXIMISED else "min"


def kernel_set_name(kernels: tuple[int, ...] | list[int]) -> str:
    """``(3, 5, 7)`` -> ``"3-5-7"`` (Optuna's categorical values must be scalars)."""
    return "-".join(str(int(k)) for k in kernels)


def search_space(cfg: PipelineConfig) -> dict[str, Any]:
    """The Tune search space from ``cfg.tune``: learning rate (log-uniform), dropout, hidden sizes, lookback,
    kernel set and the return-loss weight."""
    from ray import tune

    t = cfg.tune
    return {
        "learning_rate": tune.loguniform(*t.learning_rate),
        "dropout": tune.uniform(*t.dropout),
        "lstm_hidden": tune.choice(list(t.lstm_hidden)),
        "conv_channels": tune.choice(list(t.conv_channels)),
        "lookback": tune.choice(list(t.lookback)),
        "kernel_set": tune.choice([kernel_set_name(k) for k in t.kernel_sets]),
        "return_loss_weight": tune.uniform(*t.return_loss_weight),
    }


def apply_trial(cfg: PipelineConfig, trial: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with a trial's (or the best trial's) hyperparameters in ``model`` and ``train``."""
    model = {**cfg.model.model_dump(), "lookback": int(trial["lookback"]), "dropout": float(trial["dropout"]),
             "lstm_hidden": int(trial["lstm_hidden"]), "conv_channels": int(trial["conv_channels"]),
             "kernel_sizes": tuple(int(k) for k in str(trial["kernel_set"]).split("-"))}
    train = {**cfg.train.model_dump(), "learning_rate": float(trial["learning_rate"]),
             "return_loss_weight": float(trial["return_loss_weight"])}
    return cfg.model_copy(update={"model": type(cfg.model)(**model), "train": type(cfg.train)(**train)})


def _trial(trial: dict[str, Any], cfg_json: dict[str, Any], scaled: dict[str, pd.DataFrame],
           feature_columns: list[str], scaler_state: dict[str, Any], storage_dir: str) -> None:
    """One Tune trial: windows for the trial's lookback, then the Ray Train run (reports go to Tune)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raytrade.config import parse_config
    from raytrade.training.trainer import fit_forecaster

    cfg = apply_trial(parse_config(cfg_json), trial)
    windows = {name: make_windows(scaled[name], feature_columns, cfg.model.lookback) for name in ("train", "val")}
    fit_forecaster(windows["train"], windows["val"], cfg.model, cfg.train,
                   scaler=FeatureScaler.from_dict(scaler_state), features=cfg.features, labels=cfg.labels,
                   storage_dir=Path(storage_dir) / "trials", name=tune.get_context().get_trial_id(),
                   epochs=cfg.tune.max_epochs, callbacks=[TuneReportCallback()])
    _wait_for_cpus(cfg.train.num_workers * cfg.train.cpus_per_worker)


def _wait_for_cpus(cpus: float, timeout_s: float = 120.0) -> None:
    """Return once ``cpus`` CPUs are free again (or after ``timeout_s``).

    Ray Train releases its workers' placement group while shutting down after ``fit`` returns; if the
    trial ended first, Tune would kill the trial (and with it the Train controller) before the release
    and the next trial could wait forever for those CPUs.
    """
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0.0) + 1e-9 < cpus:
        time.sleep(0.25)


def fit_trials_to_cluster(cfg: PipelineConfig, cluster_cpus: float) -> tuple[PipelineConfig, str | None]:
    """``cfg`` with ``train.cpus_per_worker`` lowered (if needed) so that one trial (driver + workers) fits
    in ``cluster_cpus``; returns the config and a note saying what changed (None when nothing did)."""
    free = cluster_cpus - TRIAL_DRIVER_CPUS
    need = cfg.train.num_workers * cfg.train.cpus_per_worker
    if need <= free:
        return cfg, None
    per_worker = int(free // cfg.train.num_workers)
    if per_worker < 1:
        raise ConfigError(f"train.num_workers: {cfg.train.num_workers} workers x 1 CPU do not fit in the cluster's "
                          f"{cluster_cpus:g} CPUs next to the trial driver; lower train.num_workers for tuning")
    note = (f"train.cpus_per_worker {cfg.train.cpus_per_worker:g} -> {per_worker} for the trials, so a trial "
            f"({cfg.train.num_workers} worker(s) + its driver) fits in {cluster_cpus:g} CPUs")
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"cpus_per_worker": float(per_worker)})}), note


def run_search(cfg: PipelineConfig, scaled: dict[str, pd.DataFrame], feature_columns: list[str],
               scaler: FeatureScaler, storage_dir: str | Path, callbacks: list[Any] | None = None):
    """Run the search; returns Ray Tune's ``ResultGrid``.

    Args:
        scaled: ``train`` and ``val`` frames with scaled features and ``label_*`` columns.
        storage_dir: Tune experiment storage (trial checkpoints under ``storage_dir/trials``).
        callbacks: Tune callbacks (e.g. the MLflow logger).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t = cfg.tune
    mode = metric_mode(t.metric)
    storage_dir = Path(storage_dir).resolve()
    trainable = tune.with_parameters(
        _trial, cfg_json=cfg.model_dump(mode="json"), scaled={k: scaled[k] for k in ("train", "val")},
        feature_columns=list(feature_columns), scaler_state=scaler.to_dict(), storage_dir=str(storage_dir))
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=t.metric, mode=mode, num_samples=t.num_samples, max_concurrent_trials=t.max_concurrent_trials,
            search_alg=OptunaSearch(seed=t.seed),
            scheduler=ASHAScheduler(time_attr="epoch", max_t=t.max_epochs, grace_period=min(t.grace_period,
                                    t.max_epochs), reduction_factor=t.reduction_factor),
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(storage_dir), callbacks=callbacks or None,
                                  verbose=1),
    )
    return tuner.fit()
