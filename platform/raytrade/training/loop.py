"""The Ray Train loop run on every worker (``TorchTrainer(train_loop_per_worker, ...)``).

Reads its shard of the ``train`` and ``val`` Ray Datasets (columns ``x`` (lookback, n_features)
float32, ``y_class`` int64, ``y_return`` float32), trains the forecaster with cross-entropy on the
buy/hold/sell class plus ``return_loss_weight`` x MSE on the return divided by ``return_scale``, and
reports metrics with a checkpoint (``model.pt`` state dict) every epoch. Works unchanged on CPU
and GPU workers (``ray.train.torch.prepare_model`` places the model and wraps it in DDP).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from raytrade.models import build_model

MODEL_FILE = "model.pt"


def _batches(shard: Any, batch_size: int, shuffle: bool, device: torch.device):
    return shard.iter_torch_batches(
        batch_size=batch_size,
        dtypes={"x": torch.float32, "y_class": torch.int64, "y_return": torch.float32},
        device=device,
        local_shuffle_buffer_size=batch_size * 8 if shuffle else None,
    )


def _evaluate(model: nn.Module, shard: Any, batch_size: int, device: torch.device, w: float, scale: float) -> dict:
    model.eval()
    totals = {"loss": 0.0, "correct": 0.0, "n": 0.0, "se": 0.0}
    preds, targets = [], []
    with torch.no_grad():
        for batch in _batches(shard, batch_size, False, device):
            logits, ret_z = model(batch["x"])
            y_z = batch["y_return"] / scale
            n = len(batch["x"])
            loss = nn.functional.cross_entropy(logits, batch["y_class"]) + w * nn.functional.mse_loss(ret_z, y_z)
            totals["loss"] += float(loss) * n
            totals["correct"] += float((logits.argmax(-1) == batch["y_class"]).sum())
            totals["se"] += float(((ret_z - y_z) ** 2).sum())
            totals["n"] += n
            preds.append(ret_z.cpu())
            targets.append(y_z.cpu())
    n = max(totals["n"], 1.0)
    ic = 0.0
    if preds:
        p, t = torch.cat(preds), torch.cat(targets)
        if len(p) > 2 and p.std() > 0 and t.std() > 0:
            ic = float(torch.corrcoef(torch.stack([p, t]))[0, 1])
    return {"val_loss": totals["loss"] / n, "val_accuracy": totals["correct"] / n,
            "val_return_mse": totals["se"] / n, "val_ic": ic}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point.

    ``config`` keys: ``model_name``, ``model_kwargs`` (constructor kwargs incl. ``n_features`` and
    ``return_scale``), ``epochs``, ``batch_size``, ``learning_rate``, ``weight_decay``,
    ``return_loss_weight``, ``seed``, ``torch_threads`` (CPU threads per worker, optional).
    """
    torch.manual_seed(config["seed"] + ray.train.get_context().get_world_rank())
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    model = build_model(config["model_name"], **config["model_kwargs"])
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    raw_model = model.module if hasattr(model, "module") else model
    scale = float(config["model_kwargs"].get("return_scale", 1.0))
    w = float(config["return_loss_weight"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    rank = ray.train.get_context().get_world_rank()

    for epoch in range(config["epochs"]):
        model.train()
        running, seen = 0.0, 0
        for batch in _batches(train_shard, config["batch_size"], True, device):
            logits, ret_z = model(batch["x"])
            loss = nn.functional.cross_entropy(logits, batch["y_class"]) + w * nn.functional.mse_loss(
                ret_z, batch["y_return"] / scale
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += float(loss) * len(batch["x"])
            seen += len(batch["x"])
        metrics = {"epoch": epoch + 1, "train_loss": running / max(seen, 1),
                   **_evaluate(model, val_shard, config["batch_size"], device, w, scale)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save(raw_model.state_dict(), os.path.join(tmp, MODEL_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")
