"""Ray Tune search over the forecaster: Optuna's TPE sampler (``OptunaSearch``) + ASHA early stopping.

Each trial builds its windows (the lookback is searched) and runs the SAME training loop as a Ray
Train worker (:func:`raytrade.training.loop.run_training_loop`) in the trial's own process, on the CPUs
Tune reserved for it, reporting every epoch to Tune so ASHA can stop bad trials after ``grace_period``
epochs; the best configuration is then retrained with Ray Train on the configured workers. (Launching
a ``TorchTrainer`` per trial is the other Train V2 pattern; on a 2-CPU machine a finished trial's worker
placement group was still held when the next trial asked for CPUs and the search stalled.) Every trial
is logged to MLflow by Ray's ``MLflowLoggerCallback`` (see :func:`raytrade.tracking.tune_logger_callback`).

References: Bergstra et al., "Algorithms for Hyper-Parameter Optimization" (TPE), NeurIPS 2011;
Li et al., "A System for Massively Parallel Hyperparameter Tuning" (ASHA), MLSys 2020.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.dataset.windows import make_windows
from raytrade.features.scaler import FeatureScaler

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
           feature_columns: list[str], scaler_state: dict[str, Any]) -> None:
    """One Tune trial: windows for the trial's lookback, then the SAME training loop as a Ray Train
    worker runs (:func:`~raytrade.training.loop.run_training_loop`), in this trial's process on the
    CPUs Tune reserved for it, reporting every epoch to Tune."""
    from raytrade.config import parse_config
    from raytrade.training.loop import TuneTrialSession, run_training_loop
    from raytrade.training.trainer import loop_config

    cfg = apply_trial(parse_config(cfg_json), trial)
    windows = {name: make_windows(scaled[name], feature_columns, cfg.model.lookback) for name in ("train", "val")}
    config = loop_config(windows["train"], cfg.model, cfg.train, FeatureScaler.from_dict(scaler_state), cfg.features,
                         cfg.labels, epochs=cfg.tune.max_epochs)
    data = {name: {"x": w.x[w.y_class >= 0], "y_class": w.y_class[w.y_class >= 0],
                   "y_return": w.y_return[w.y_class >= 0]} for name, w in windows.items()}
    run_training_loop(config, TuneTrialSession(data))


def trial_cpus(cfg: PipelineConfig, cluster_cpus: float) -> tuple[float, str | None]:
    """CPUs per trial: ``train.cpus_per_worker``, capped at the cluster's CPUs (with a note when capped)."""
    if cfg.train.cpus_per_worker <= cluster_cpus:
        return cfg.train.cpus_per_worker, None
    return cluster_cpus, (f"train.cpus_per_worker {cfg.train.cpus_per_worker:g} -> {cluster_cpus:g} per trial "
                          f"(the cluster has {cluster_cpus:g} CPUs)")


def run_search(cfg: PipelineConfig, scaled: dict[str, pd.DataFrame], feature_columns: list[str],
               scaler: FeatureScaler, storage_dir: str | Path, callbacks: list[Any] | None = None,
               cpus_per_trial: float = 1.0):
    """Run the search; returns Ray Tune's ``ResultGrid``.

    Args:
        scaled: ``train`` and ``val`` frames with scaled features and ``label_*`` columns.
        storage_dir: Tune experiment storage.
        cpus_per_trial: CPUs Tune reserves per trial (the trial trains in its own process).
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
        feature_columns=list(feature_columns), scaler_state=scaler.to_dict())
    trainable = tune.with_resources(trainable, {"CPU": cpus_per_trial})
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
                                  verbose=0),
    )
    return tuner.fit()
