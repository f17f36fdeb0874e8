"""Forecaster training throughput: Ray Train (1 worker; 2 workers x 1 CPU, DDP) vs a plain PyTorch loop.

Same model (the demo CNN+LSTM: 4 conv branches, 2-layer BiLSTM, attention), same windows from the
bundled BTC/USD 1h bars, same batch size, loss, optimizer and per-epoch reshuffle, same torch threads
per process (1). Throughput = training samples per second of each epoch's training pass (the
validation pass is excluded on both sides); the first epoch is a warm-up and the median of the rest is
compared. Ray Train's fixed start-up (controller, worker actors, process group) is reported apart.
Peak memory: the peak resident set of the process doing the training (the plain loop runs in its own
spawned process so its figure is its own).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raytrade.training.loop import LoopConfig

NAME = "training"
TITLE = "Forecaster training: Ray Train vs plain PyTorch (samples/s per epoch)"
EPOCHS = 4
ROUNDS = 2
TRAIN_WINDOWS = 4096
VAL_WINDOWS = 512


def _data() -> tuple[Any, Any, Any, Any]:
    import ray

    from benchmarks.common import ROOT
    from raytrade.config import load_config
    from raytrade.dataset.prepare import load_market_data, prepare_data
    from raytrade.dataset.windows import Windows

    cfg = load_config(ROOT / "jobs/configs/demo.yaml", {"train": {"cpus_per_worker": 1, "epochs": EPOCHS,
                                                                   "early_stopping_patience": None}})
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)  # no dashboard: less background CPU
    prepared = prepare_data(cfg, load_market_data(cfg))
    w = prepared.windows(cfg.model.lookback)

    def head(win: Windows, n: int) -> Windows:
        keep = slice(len(win) - n, len(win))  # the most recent labelled windows
        return Windows(*(getattr(win, f)[keep] for f in ("x", "y_class", "y_return", "next_return", "timestamp",
                                                          "symbol")))
    return cfg, prepared, head(w["train"], TRAIN_WINDOWS), head(w["val"], VAL_WINDOWS)


def plain_loop(loop_cfg: LoopConfig, x, y_class, y_return) -> dict[str, Any]:
    """The baseline: the same training step in a plain in-process PyTorch loop (no Ray)."""
    import torch

    from raytrade.models import build_model
    from raytrade.training.loop import multitask_loss, seed_everything

    torch.set_num_threads(1)
    seed_everything(loop_cfg.seed)
    model = build_model(loop_cfg.model_name, **loop_cfg.model_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=loop_cfg.learning_rate, weight_decay=loop_cfg.weight_decay)
    x, y_class, y_return = (torch.as_tensor(a) for a in (x, y_class, y_return))
    weights = torch.tensor(loop_cfg.class_weights, dtype=torch.float32)
    scale = float(loop_cfg.model_kwargs["return_scale"])
    rates = []
    for epoch in range(loop_cfg.epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        start = time.perf_counter()
        for i in range(0, len(x), loop_cfg.batch_size):
            idx = order[i : i + loop_cfg.batch_size]
            logits, ret_z = model(x[idx])
            loss = multitask_loss(logits, ret_z, y_class[idx], y_return[idx] / scale, weights,
                                  loop_cfg.class_loss_weight, loop_cfg.return_loss_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        rates.append(len(x) / (time.perf_counter() - start))
    return {"samples_per_s": rates, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _ray_train(cfg, prepared, train, val, storage: str, name: str, **overrides) -> dict[str, Any]:
    from raytrade.training.trainer import fit_forecaster

    train_cfg = cfg.train.model_copy(update=overrides)
    start = time.perf_counter()
    out = fit_forecaster(train, val, cfg.model, train_cfg, scaler=prepared.scaler, features=cfg.features,
                         labels=cfg.labels, storage_dir=storage, name=name)
    wall = time.perf_counter() - start
    h = out.history
    epoch_time = float(h["epoch_time_s"].sum())
    return {"samples_per_s": h["train_samples_per_s"].tolist(), "peak_rss_mb": float(h["peak_rss_mb"].max()),
            "wall_s": wall, "fixed_overhead_s": wall - epoch_time}


def _median_after_warmup(rates: list[float]) -> float:
    return statistics.median(rates[1:]) if len(rates) > 1 else rates[0]


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one configuration as one record: ``samples_per_s`` = the warm-up epoch of round 1, then
    every round's epochs after its own warm-up (so :func:`_median_after_warmup` drops exactly the warm-ups)."""
    merged: dict[str, Any] = {"rounds": runs, "samples_per_s": [runs[0]["samples_per_s"][0]]
                              + [v for r in runs for v in r["samples_per_s"][1:]],
                              "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    if "fixed_overhead_s" in runs[0]:
        merged["fixed_overhead_s"] = statistics.median(r["fixed_overhead_s"] for r in runs)
    return merged


def run() -> str:
    import tempfile

    from benchmarks.common import busy_note, load_average, write_results
    from raytrade.training.trainer import loop_config

    load_start = load_average()
    cfg, prepared, train, val = _data()
    loop_cfg = loop_config(train, cfg.model, cfg.train, prepared.scaler, cfg.features, cfg.labels)
    keep = train.y_class >= 0
    def plain_run() -> dict[str, Any]:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(plain_loop, loop_cfg, train.x[keep], train.y_class[keep], train.y_return[keep]).result()

    # interleaved rounds (plain, cached, streaming) so drifting background load hits every run alike
    rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "cached": [], "streaming": []}
    with tempfile.TemporaryDirectory() as storage:
        for r in range(ROUNDS):
            rounds["plain"].append(plain_run())
            rounds["cached"].append(_ray_train(cfg, prepared, train, val, storage, f"w1-{r}", num_workers=1,
                                               cpus_per_worker=1))
            rounds["streaming"].append(_ray_train(cfg, prepared, train, val, storage, f"w1s-{r}", num_workers=1,
                                                  cpus_per_worker=1, data_loading="streaming"))
        two = _ray_train(cfg, prepared, train, val, storage, "w2", num_workers=2, cpus_per_worker=1)
    plain, one, streaming = (_merge(rounds[k]) for k in ("plain", "cached", "streaming"))
    runs = {"plain PyTorch loop (baseline)": plain, "Ray Train, 1 worker x 1 CPU (cached shard)": one,
            "Ray Train, 1 worker x 1 CPU (streaming Ray Data)": streaming,
            "Ray Train, 2 workers x 1 CPU, DDP (cached shard)": two}
    base = _median_after_warmup(plain["samples_per_s"])
    for r in runs.values():
        r["median_samples_per_s"] = _median_after_warmup(r["samples_per_s"])
        r["ratio_over_plain"] = r["median_samples_per_s"] / base
    payload = {
        "model": cfg.model.model_dump(mode="json"), "batch_size": cfg.train.batch_size, "epochs": EPOCHS,
        "train_windows": int(keep.sum()), "val_windows": len(val), "torch_threads_per_process": 1,
        "data": str(cfg.data.path), "runs": runs,
        "ray_train_1_worker_over_plain": one["ratio_over_plain"],
        "ray_train_2_workers_over_1_worker": two["median_samples_per_s"] / one["median_samples_per_s"],
    }
    lines = [f"# {TITLE}", "",
             f"Model `{cfg.model.name}` (lookback {cfg.model.lookback}, {train.x.shape[2]} features), "
             f"{int(keep.sum())} training windows of the bundled BTC/USD 1h bars, batch {cfg.train.batch_size}, "
             f"{EPOCHS} epochs per run (first = warm-up, dropped), {ROUNDS} interleaved rounds of the 1-worker runs "
             "and the plain loop (median over all kept epochs), 1 torch thread per process.", "",
             "| run | median samples/s | vs plain loop | samples/s of each epoch (first = warm-up) | peak RSS (MiB) | "
             "fixed start-up (s) |",
             "|---|---:|---:|---|---:|---:|"]
    for name, r in runs.items():
        overhead = f"{r['fixed_overhead_s']:.1f}" if "fixed_overhead_s" in r else "—"
        lines.append(f"| {name} | {r['median_samples_per_s']:.0f} | {r['ratio_over_plain']:.2f}x | "
                     f"{', '.join(f'{v:.0f}' for v in r['samples_per_s'])} | {r['peak_rss_mb']:.0f} | {overhead} |")
    lines += ["", f"Ray Train 1 worker / plain loop: **{payload['ray_train_1_worker_over_plain']:.2f}x**; "
              f"2 workers / 1 worker: **{payload['ray_train_2_workers_over_1_worker']:.2f}x**.", "",
              "Fixed start-up = wall time of `fit_forecaster` minus the epochs (controller, worker actors, "
              "process group, shard load, checkpoints).", busy_note(load_start)]
    markdown = "\n".join(lines)
    write_results(NAME, payload, markdown)
    return markdown
