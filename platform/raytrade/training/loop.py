"""The Ray Train loop run on every worker (``TorchTrainer(train_loop_per_worker, ...)``).

Each worker reads its shard of the ``train`` and ``val`` Ray Datasets (``ray.train.get_dataset_shard``;
columns ``x`` float32 ``(lookback, n_features)``, ``y_class`` int64, ``y_return`` float32) and trains
the forecaster on the multi-task loss

    class_loss_weight x cross-entropy(logits, y_class; class weights)
    + return_loss_weight x MSE(return_z, y_return / return_scale)

with DDP across workers (``ray.train.torch.prepare_model``), mixed precision on GPU workers
(``torch.autocast`` + ``GradScaler`` for float16), early stopping on the validation loss (all
workers decide together from all-reduced sums) and one checkpoint per epoch. A checkpoint is a
complete :class:`~raytrade.models.bundle.ForecasterBundle` directory (weights + scaler + feature/label
config) plus ``train_state.pt`` (optimizer, grad scaler, epoch, early-stopping state, RNG state), so
after a worker failure (``FailureConfig(max_failures=...)``) training resumes from the last epoch,
not from epoch 0, and any epoch's checkpoint serves forecasts directly.

The loop's settings are a :class:`LoopConfig`. Ray Train's ``train_loop_config`` must be a dict, so
the trainer passes :meth:`LoopConfig.to_dict` and each worker rebuilds the config with
:meth:`LoopConfig.from_dict`; Tune trials call :func:`run_training_loop` with the ``LoopConfig`` itself.

Data loading: ``data_loading="cached"`` (default) reads the shard from Ray Data once into worker
memory and reshuffles it every epoch with a seeded generator (fast for windows that fit in memory);
``"streaming"`` iterates the shard every epoch with Ray Data's local shuffle buffer.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Literal

import numpy as np
import ray.train
import ray.train.torch
import torch
from torch import nn

from raytrade.evaluation.forecast import macro_f1_from_confusion
from raytrade.models import build_model
from raytrade.models.bundle import META_FILE, STATE_FILE

TRAIN_STATE_FILE = "train_state.pt"
_DTYPES = {"x": torch.float32, "y_class": torch.int64, "y_return": torch.float32}


@dataclass(frozen=True)
class LoopConfig:
    """Everything :func:`run_training_loop` needs besides the data (built by
    :func:`raytrade.training.trainer.loop_config` from the pipeline config).

    Attributes:
        model_name: registry name of the forecaster class (:func:`raytrade.models.build_model`).
        model_kwargs: its JSON-ready constructor keyword arguments, incl. ``n_features`` and
            ``return_scale`` (std of the labelled train ``y_return``, log-return units; the return
            head is trained on ``y_return / return_scale``). Saved in every checkpoint.
        bundle_meta: JSON-ready bundle metadata (scaler state, feature and label config, ``lookback``
            in bars, ``mc_samples``; see :func:`raytrade.models.bundle.bundle_metadata`). Saved in
            every checkpoint.
        epochs: number of passes over the training data (total, counting epochs before a restart).
        batch_size: windows per mini-batch on each worker.
        learning_rate: AdamW learning rate (per optimizer step).
        weight_decay: AdamW decoupled weight decay (fraction of each weight removed per step, times
            the learning rate).
        class_loss_weight: weight of the cross-entropy term of the loss (dimensionless).
        return_loss_weight: weight of the return MSE term (the MSE is in ``return_scale`` units squared).
        seed: base seed: worker ``r`` seeds Python/NumPy/torch with ``seed + r`` and shuffles epoch ``e``
            with ``seed * 100003 + e * 1009 + r``.
        class_weights: cross-entropy weights for (sell, hold, buy), or ``None`` for unweighted.
        patience: epochs without a ``val_loss`` improvement (by more than ``min_delta``) before stopping
            early; ``None`` never stops early.
        min_delta: smallest ``val_loss`` decrease that counts as an improvement (loss units).
        torch_threads: torch intra-op threads per worker; ``None`` keeps torch's default.
        mixed_precision: autocast (bfloat16, or float16 with a ``GradScaler``) on CUDA workers; ignored on CPU.
        data_loading: ``"cached"`` (the shard read once into worker memory) or ``"streaming"`` (Ray Data
            every epoch).
    """

    model_name: str
    model_kwargs: dict[str, Any]
    bundle_meta: dict[str, Any]
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    class_loss_weight: float
    return_loss_weight: float
    seed: int
    class_weights: tuple[float, float, float] | None = None
    patience: int | None = None
    min_delta: float = 0.0
    torch_threads: int | None = None
    mixed_precision: bool = True
    data_loading: Literal["cached", "streaming"] = "cached"

    def __post_init__(self) -> None:
        if self.class_weights is not None:  # a list from JSON, Tune or sklearn -> an immutable tuple
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (Ray Train's ``train_loop_config``); :meth:`from_dict` inverts it."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> LoopConfig:
        """The config from :meth:`to_dict`'s dict. A key set in the dict after :meth:`to_dict` (e.g. a
        hyperparameter put into ``train_loop_config`` under a field's name) becomes that field.

        Raises:
            TypeError: a key that is not a field (named in the message), or a missing required field.
        """
        names = [f.name for f in fields(cls)]
        unknown = [k for k in config if k not in names]
        if unknown:
            raise TypeError(f"LoopConfig got unexpected key(s) {unknown}; its fields are {names}")
        return cls(**config)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load_shard(shard: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """The whole shard as tensors on ``device`` (rows in Ray Data's order)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in _DTYPES}
    for batch in shard.iter_batches(batch_size=8192, batch_format="numpy"):
        for k in _DTYPES:
            parts[k].append(np.asarray(batch[k]))
    return {k: torch.as_tensor(np.concatenate(v) if v else np.empty(0), dtype=_DTYPES[k]).to(device)
            for k, v in parts.items()}


class _ShardBatches:
    """Mini-batches of one dataset shard, cached in memory or streamed from Ray Data."""

    def __init__(self, shard: Any, device: torch.device, cached: bool,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.shard, self.device = shard, device
        self.tensors = tensors if tensors is not None else (_load_shard(shard, device) if cached else None)

    def __call__(self, batch_size: int, shuffle_seed: int | None) -> Iterator[dict[str, torch.Tensor]]:
        if self.tensors is not None:
            n = len(self.tensors["y_class"])
            if shuffle_seed is None:
                order = torch.arange(n)
            else:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
            order = order.to(self.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield {k: v[idx] for k, v in self.tensors.items()}
            return
        yield from self.shard.iter_torch_batches(
            batch_size=batch_size, dtypes=_DTYPES, device=self.device,
            local_shuffle_buffer_size=batch_size * 8 if shuffle_seed is not None else None,
            local_shuffle_seed=shuffle_seed,
        )


def multitask_loss(logits: torch.Tensor, return_z: torch.Tensor, y_class: torch.Tensor, y_z: torch.Tensor,
                   class_weights: torch.Tensor | None, class_loss_weight: float,
                   return_loss_weight: float) -> torch.Tensor:
    """Weighted multi-task loss (scalar): ``wc * CE(logits, y_class; class_weights) + wr * MSE(return_z, y_z)``.

    ``logits`` (batch, 3), ``return_z``/``y_z`` (batch,) in units of ``return_scale``; computed in float32.
    """
    ce = nn.functional.cross_entropy(logits.float(), y_class, weight=class_weights)
    mse = nn.functional.mse_loss(return_z.float(), y_z.float())
    return class_loss_weight * ce + return_loss_weight * mse


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over the Train workers (no-op with one worker)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend_device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        out = values.to(backend_device)
        torch.distributed.all_reduce(out)
        return out.cpu()
    return values


def _evaluate(model: nn.Module, batches: _ShardBatches, cfg: LoopConfig, device: torch.device,
              class_weights: torch.Tensor | None, scale: float, autocast: dict[str, Any]) -> dict[str, float]:
    """Validation metrics over ALL workers' shards (sums are all-reduced before the ratios)."""
    model.eval()
    # loss*n, nll*n, se, n, sum p, sum t, sum p^2, sum t^2, sum p*t, then the 9 confusion counts
    acc = torch.zeros(18, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches(cfg.batch_size, None):
            with torch.autocast(**autocast):
                logits, ret_z = model(batch["x"])
            logits, ret_z = logits.float(), ret_z.float()
            y, y_z = batch["y_class"], batch["y_return"] / scale
            n = len(y)
            loss = multitask_loss(logits, ret_z, y, y_z, class_weights, cfg.class_loss_weight,
                                  cfg.return_loss_weight)
            nll = nn.functional.cross_entropy(logits, y)
            p, t = ret_z.double().cpu(), y_z.double().cpu()
            conf = torch.bincount((y * 3 + logits.argmax(-1)).cpu(), minlength=9).double()
            acc += torch.cat([torch.tensor([float(loss) * n, float(nll) * n, float(((p - t) ** 2).sum()), n,
                                            float(p.sum()), float(t.sum()), float((p * p).sum()),
                                            float((t * t).sum()), float((p * t).sum())], dtype=torch.float64),
                              conf])
    acc = _all_reduce(acc)
    loss_sum, nll_sum, se, n, sp, st, spp, stt, spt = acc[:9].tolist()
    confusion = acc[9:].numpy().reshape(3, 3)
    n = max(n, 1.0)
    cov = spt / n - (sp / n) * (st / n)
    var_p, var_t = spp / n - (sp / n) ** 2, stt / n - (st / n) ** 2
    ic = cov / math.sqrt(var_p * var_t) if var_p > 1e-18 and var_t > 1e-18 else 0.0
    return {"val_loss": loss_sum / n, "val_nll": nll_sum / n, "val_accuracy": float(np.trace(confusion) / n),
            "val_macro_f1": macro_f1_from_confusion(confusion), "val_return_mse": se / n, "val_ic": float(ic)}


def _autocast_args(device: torch.device, enabled: bool) -> dict[str, Any]:
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"device_type": "cuda", "dtype": dtype, "enabled": True}
    return {"device_type": device.type, "enabled": False}


def _save_checkpoint(directory: str, raw_model: nn.Module, cfg: LoopConfig, state: dict[str, Any],
                     metrics: dict[str, float]) -> None:
    torch.save(raw_model.state_dict(), os.path.join(directory, STATE_FILE))
    meta = {**cfg.bundle_meta, "model_name": cfg.model_name, "model_kwargs": cfg.model_kwargs,
            "epoch": state["epoch"], "metrics": metrics}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    torch.save(state, os.path.join(directory, TRAIN_STATE_FILE))


class _RayTrainSession:
    """What the loop needs from Ray Train (a worker of a ``TorchTrainer``)."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def checkpoint(self) -> Any:
        return ray.train.get_checkpoint()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def batches(self, name: str, cached: bool) -> _ShardBatches:
        return _ShardBatches(ray.train.get_dataset_shard(name), self.device, cached)

    def report(self, metrics: dict[str, float], write_checkpoint: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.rank == 0:
                write_checkpoint(tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)


class TuneTrialSession:
    """The loop inside a Ray Tune trial: one process, arrays in memory, every epoch reported to Tune
    (so ASHA can stop the trial); no checkpoints (the best configuration is retrained afterwards).

    ``data``: ``{"train"|"val": {"x", "y_class", "y_return"}}`` numpy arrays of LABELLED windows.
    """

    def __init__(self, data: dict[str, dict[str, np.ndarray]]) -> None:
        self.rank, self.world_size, self.device = 0, 1, torch.device("cpu")
        self.data = data

    def checkpoint(self) -> None:
        return None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def batches(self, name: str, cached: bool) -> _ShardBatches:
        tensors = {k: torch.as_tensor(self.data[name][k], dtype=dt) for k, dt in _DTYPES.items()}
        return _ShardBatches(None, self.device, True, tensors=tensors)

    def report(self, metrics: dict[str, float], write_checkpoint: Any, name: str) -> None:
        from ray import tune

        tune.report(metrics)


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """Ray Train worker entry point: :func:`run_training_loop` with this worker's Ray Train session.

    ``config``: Ray Train's ``train_loop_config``, :meth:`LoopConfig.to_dict` (see :meth:`LoopConfig.from_dict`).
    """
    run_training_loop(LoopConfig.from_dict(config), _RayTrainSession())


def run_training_loop(config: LoopConfig, session: Any) -> None:
    """Train the forecaster described by ``config`` (see :class:`LoopConfig`) in ``session`` (a Ray Train
    worker, or :class:`TuneTrialSession`).

    Reports per epoch: ``epoch``, ``train_loss``, ``val_loss`` (the training objective on val),
    ``val_nll`` (unweighted cross-entropy, nats), ``val_accuracy``, ``val_macro_f1``,
    ``val_return_mse``, ``val_ic``, ``best_val_loss``, ``best_epoch``, ``resumed_from_epoch``
    (0 = fresh start), ``stopped_early`` (0/1), ``epoch_time_s``, ``train_samples_per_s``, ``world_size``,
    ``peak_rss_mb`` (this worker's peak resident memory, MiB).
    """
    rank, world_size = session.rank, session.world_size
    seed_everything(int(config.seed) + rank)
    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    device = session.device
    model = build_model(config.model_name, **config.model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    autocast = _autocast_args(device, bool(config.mixed_precision))
    grad_scaler = torch.amp.GradScaler("cuda", enabled=autocast["enabled"] and autocast["dtype"] == torch.float16)

    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "bad_epochs": 0}
    resumed_from = 0
    checkpoint = session.checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True))
            saved = torch.load(os.path.join(d, TRAIN_STATE_FILE), map_location="cpu", weights_only=False)
        optimizer.load_state_dict(saved.pop("optimizer"))
        grad_scaler.load_state_dict(saved.pop("grad_scaler"))
        torch.set_rng_state(saved.pop("torch_rng"))
        state.update(saved)
        resumed_from = state["epoch"]

    model = session.prepare_model(model)
    raw_model = model.module if hasattr(model, "module") else model
    scale = float(config.model_kwargs.get("return_scale", 1.0))
    weights = config.class_weights
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    cached = config.data_loading == "cached"
    train_batches = session.batches("train", cached)
    val_batches = session.batches("val", cached)
    patience = config.patience

    for epoch in range(state["epoch"], int(config.epochs)):
        model.train()
        started = time.perf_counter()
        running, seen = 0.0, 0
        shuffle_seed = int(config.seed) * 100_003 + epoch * 1009 + rank  # new order every epoch, reproducible
        for batch in train_batches(config.batch_size, shuffle_seed=shuffle_seed):
            with torch.autocast(**autocast):
                logits, ret_z = model(batch["x"])
            loss = multitask_loss(logits, ret_z, batch["y_class"], batch["y_return"] / scale, class_weights,
                                  config.class_loss_weight, config.return_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            grad_scaler.step(optimizer)
            grad_scaler.update()
            running += float(loss) * len(batch["y_class"])
            seen += len(batch["y_class"])
        train_time = time.perf_counter() - started
        metrics = _evaluate(model, val_batches, config, device, class_weights, scale, autocast)
        if metrics["val_loss"] < state["best_val_loss"] - float(config.min_delta):
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        stop = patience is not None and state["bad_epochs"] >= int(patience)
        metrics.update({
            "epoch": epoch + 1, "train_loss": running / max(seen, 1), "best_val_loss": state["best_val_loss"],
            "best_epoch": state["best_epoch"], "resumed_from_epoch": resumed_from, "stopped_early": int(stop),
            "epoch_time_s": time.perf_counter() - started, "train_samples_per_s": seen * world_size / train_time,
            "world_size": world_size, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
        train_state = {**state, "optimizer": optimizer.state_dict(), "grad_scaler": grad_scaler.state_dict(),
                       "torch_rng": torch.get_rng_state()}
        session.report(metrics, partial(_save_checkpoint, raw_model=raw_model, cfg=config, state=train_state,
                                        metrics=metrics), f"epoch_{epoch + 1:04d}")
        if stop:
            break
