"""Build and run the Ray Train ``TorchTrainer`` for the forecaster.

``fit_forecaster`` turns windowed arrays into Ray Datasets, trains with the ScalingConfig from
:class:`~raytrade.config.TrainConfig` (``num_workers``, ``use_gpu``), keeps a checkpoint per epoch
under ``storage_dir`` and returns the best epoch's weights (lowest ``val_loss``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from raytrade.config import ModelConfig, TrainConfig
from raytrade.data.windows import Windows
from raytrade.errors import InsufficientDataError
from raytrade.training.loop import MODEL_FILE, train_loop_per_worker


@dataclass
class TrainOutcome:
    """Result of :func:`fit_forecaster`.

    Attributes:
        state_dict: weights of the best epoch (lowest val_loss), on CPU.
        model_kwargs: constructor kwargs of the model (incl. n_features and return_scale).
        history: one row of metrics per epoch.
        best_metrics: the metrics row of the best epoch.
        checkpoint_path: directory of the best checkpoint in Ray Train storage.
    """

    state_dict: dict[str, torch.Tensor]
    model_kwargs: dict[str, Any]
    history: pd.DataFrame
    best_metrics: dict[str, float]
    checkpoint_path: str


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


def fit_forecaster(
    train: Windows, val: Windows, model_cfg: ModelConfig, train_cfg: TrainConfig, storage_dir: Path, name: str
) -> TrainOutcome:
    """Train the forecaster with Ray Train on CPU or GPU workers.

    Args:
        train, val: scaled windows ``x (n, lookback, n_features)`` with labels.
        storage_dir: Ray Train storage path (checkpoints land in ``storage_dir/name``).

    Returns:
        :class:`TrainOutcome` with the best epoch's weights.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    labelled = train.y_return[train.y_class >= 0]
    return_scale = float(np.std(labelled)) or 1.0
    model_kwargs = {
        "n_features": int(train.x.shape[2]),
        "conv_channels": model_cfg.conv_channels,
        "kernel_sizes": tuple(model_cfg.kernel_sizes),
        "lstm_hidden": model_cfg.lstm_hidden,
        "lstm_layers": model_cfg.lstm_layers,
        "dropout": model_cfg.dropout,
        "return_scale": return_scale,
    }
    loop_config = {
        "model_name": model_cfg.name,
        "model_kwargs": model_kwargs,
        "epochs": train_cfg.epochs,
        "batch_size": train_cfg.batch_size,
        "learning_rate": train_cfg.learning_rate,
        "weight_decay": train_cfg.weight_decay,
        "return_loss_weight": train_cfg.return_loss_weight,
        "seed": train_cfg.seed,
        "torch_threads": None if train_cfg.use_gpu else max(1, int(train_cfg.cpus_per_worker)),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker},
        ),
        datasets={"train": windows_to_dataset(train), "val": windows_to_dataset(val)},
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage_dir).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=1),
        ),
    )
    result = trainer.fit()
    history = result.metrics_dataframe
    best_ckpt, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"])
    with best_ckpt.as_directory() as d:
        state_dict = torch.load(os.path.join(d, MODEL_FILE), map_location="cpu", weights_only=True)
    keep_cols = [c for c in history.columns if c in {"epoch", "train_loss", "val_loss", "val_accuracy",
                                                     "val_return_mse", "val_ic"}]
    return TrainOutcome(
        state_dict=state_dict,
        model_kwargs=model_kwargs,
        history=history[keep_cols].reset_index(drop=True),
        best_metrics={k: float(v) for k, v in best_metrics.items() if k in keep_cols},
        checkpoint_path=best_ckpt.path,
    )
