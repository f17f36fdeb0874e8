"""Build and run the Ray Train ``TorchTrainer`` for the forecaster.

:func:`fit_forecaster` turns windowed arrays into Ray Datasets (read by the workers with
``get_dataset_shard``), trains with the ``ScalingConfig`` from :class:`~raytrade.config.TrainConfig`
(``num_workers``, ``use_gpu``, ``resources_per_worker``), keeps a checkpoint per epoch under
``storage_dir/name`` (each a loadable :class:`~raytrade.models.bundle.ForecasterBundle`), restarts
failed worker groups from the last checkpoint (``FailureConfig(max_failures)``) and returns the
best epoch's bundle (lowest ``val_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raytrade.config import FeatureConfig, LabelConfig, ModelConfig, TrainConfig
from raytrade.dataset.windows import Windows
from raytrade.errors import InsufficientDataError
from raytrade.features.scaler import FeatureScaler
from raytrade.models.bundle import ForecasterBundle, bundle_metadata
from raytrade.models.registry import model_kwargs_from_config
from raytrade.training.loop import LoopConfig, train_loop_per_worker

#: Per-epoch metrics kept in :attr:`TrainOutcome.history` (see :func:`train_loop_per_worker`).
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_nll", "val_accuracy", "val_macro_f1", "val_return_mse",
                   "val_ic", "best_val_loss", "best_epoch", "resumed_from_epoch", "stopped_early", "epoch_time_s",
                   "train_samples_per_s", "world_size", "peak_rss_mb")


@dataclass
class TrainOutcome:
    """Result of :func:`fit_forecaster`.

    Attributes:
        bundle: the best epoch's forecaster (lowest val_loss), loaded from its checkpoint, on CPU.
        history: one row of metrics per epoch reported (after a restart, resumed epochs appear once more).
        best_metrics: the metrics row of the best epoch.
        checkpoint_path: directory of the best checkpoint in Ray Train storage (a bundle directory).
        class_weights: the cross-entropy class weights used (sell, hold, buy), or None.
    """

    bundle: ForecasterBundle
    history: pd.DataFrame
    best_metrics: dict[str, float]
    checkpoint_path: str
    class_weights: list[float] | None

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.bundle.model_kwargs


def windows_to_dataset(windows: Windows):
    """Labelled windows -> Ray Dataset with columns ``x`` (tensor), ``y_class``, ``y_return``.

    Raises InsufficientDataError when no window has a label.
    """
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    keep = windows.y_class >= 0
    if not keep.any():
        raise InsufficientDataError("no labelled windows to train on")
    table = pa.table({
        "x": ArrowTensorArray.from_numpy(np.ascontiguousarray(windows.x[keep])),
        "y_class": windows.y_class[keep],
        "y_return": windows.y_return[keep].astype(np.float32),
    })
    return ray.data.from_arrow(table)


def balanced_class_weights(y_class: np.ndarray) -> list[float]:
    """Cross-entropy weights ``n / (n_classes * count_c)`` for sell/hold/buy (scikit-learn's "balanced"
    heuristic, King & Zeng 2001) from TRAIN labels; a class absent from train gets weight 0."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(y_class)
    y = y[y >= 0]
    present = np.unique(y)
    weights = dict(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=y), strict=True))
    return [float(weights.get(k, 0.0)) for k in range(3)]


def loop_config(train: Windows, model_cfg: ModelConfig, train_cfg: TrainConfig, scaler: FeatureScaler,
                features: FeatureConfig, labels: LabelConfig, epochs: int | None = None) -> LoopConfig:
    """The :class:`~raytrade.training.loop.LoopConfig` of :func:`~raytrade.training.loop.run_training_loop`
    (Ray Train gets it as ``train_loop_config=config.to_dict()``)."""
    labelled = train.y_return[train.y_class >= 0]
    return_scale = float(np.std(labelled)) or 1.0
    return LoopConfig(
        model_name=model_cfg.name,
        model_kwargs=model_kwargs_from_config(model_cfg, int(train.x.shape[2]), return_scale),
        bundle_meta=bundle_metadata(scaler, features, labels, model_cfg.lookback, model_cfg.mc_samples),
        epochs=int(epochs or train_cfg.epochs),
        batch_size=train_cfg.batch_size,
        learning_rate=train_cfg.learning_rate,
        weight_decay=train_cfg.weight_decay,
        class_loss_weight=train_cfg.class_loss_weight,
        return_loss_weight=train_cfg.return_loss_weight,
        class_weights=balanced_class_weights(train.y_class) if train_cfg.class_weights == "balanced" else None,
        patience=train_cfg.early_stopping_patience,
        min_delta=train_cfg.early_stopping_min_delta,
        seed=train_cfg.seed,
        torch_threads=None if train_cfg.use_gpu else max(1, int(train_cfg.cpus_per_worker)),
        mixed_precision=train_cfg.mixed_precision,
        data_loading=train_cfg.data_loading,
    )


def scaling_config(train_cfg: TrainConfig):
    """Ray Train ``ScalingConfig`` from the config (CPU per worker plus any extra resources)."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
                         resources_per_worker={"CPU": train_cfg.cpus_per_worker, **train_cfg.resources_per_worker})


def fit_forecaster(
    train: Windows, val: Windows, model_cfg: ModelConfig, train_cfg: TrainConfig, *, scaler: FeatureScaler,
    features: FeatureConfig, labels: LabelConfig, storage_dir: str | Path, name: str, epochs: int | None = None,
    callbacks: list[Any] | None = None,
) -> TrainOutcome:
    """Train the forecaster with Ray Train on CPU or GPU workers.

    Args:
        train, val: scaled windows ``x (n, lookback, n_features)`` with labels.
        scaler, features, labels: saved inside every checkpoint so each one is a complete bundle.
        storage_dir: Ray Train storage path, a directory or a URI such as ``s3://bucket/prefix`` (checkpoints land
            in ``storage_dir/name/checkpoint_*/epoch_NNNN``); on a multi-node cluster every node must reach it.
        epochs: overrides ``train_cfg.epochs`` (Tune trials).
        callbacks: Ray Train ``UserCallback`` objects, e.g. Ray Tune's ``TuneReportCallback``.

    Returns:
        :class:`TrainOutcome` with the best epoch's bundle.

    Raises:
        InsufficientDataError: no labelled train or val window.
        ray.train.TrainingFailedError: the workers failed more than ``train_cfg.max_failures`` times.
    """
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    config = loop_config(train, model_cfg, train_cfg, scaler, features, labels, epochs)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),  # Ray Train takes a dict; the workers rebuild the LoopConfig
        scaling_config=scaling_config(train_cfg),
        datasets={"train": windows_to_dataset(train), "val": windows_to_dataset(val)},
        # rows reach the workers in a fixed order, so seeded CPU runs are reproducible
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=name,
            storage_path=storage_dir if "://" in str(storage_dir) else str(Path(storage_dir).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            callbacks=callbacks or None,
        ),
    )
    result = trainer.fit()
    history = result.metrics_dataframe
    # the loop's own best epoch: an epoch is best only if it beat the previous best by min_delta (as for patience)
    best_epoch = int(history["best_epoch"].iloc[-1])
    best_ckpt, best_metrics = next(
        ((ckpt, m) for ckpt, m in result.best_checkpoints if int(m["epoch"]) == best_epoch),
        min(result.best_checkpoints, key=lambda cm: (cm[1]["val_loss"], cm[1]["epoch"])))
    keep = [c for c in HISTORY_COLUMNS if c in history.columns]
    with best_ckpt.as_directory() as local:  # the checkpoint itself, or a download of it from remote storage
        bundle = ForecasterBundle.load(local)
    return TrainOutcome(
        bundle=bundle,
        history=history[keep].reset_index(drop=True),
        best_metrics={k: float(v) for k, v in best_metrics.items() if k in keep},
        checkpoint_path=best_ckpt.path,
        class_weights=None if config.class_weights is None else list(config.class_weights),
    )
