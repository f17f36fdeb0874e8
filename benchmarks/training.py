"""Forecaster training throughput: Ray Train (1 worker; 2 workers x 1 CPU, DDP) vs a plain PyTorch loop.

Two inputs, each with the plain loop as the named baseline in the same run:

1. The most recent 4,096 training windows of the bundled BTC/USD 1h bars (one symbol): Ray Train with 1
   worker (cached shard, and streaming from Ray Data) and 2 workers x 1 CPU (DDP).
2. The pooled universe (issue 16): every training window of every symbol of the bundled 13-symbol daily
   US stocks/ETFs file (``data/lean_us_equity_etf_1d.parquet``), made as the universe pipeline makes them
   (:func:`raytrade.dataset.prepare.load_universe_data` + :func:`~raytrade.dataset.prepare.prepare_data`:
   per-symbol and cross-sectional features, one chronological split on one calendar): Ray Train with 1
   worker and 2 workers x 1 CPU (DDP), the pipeline's ``fit_forecaster`` on the same windows.

Same model (the demo CNN+LSTM: 4 conv branches, 2-layer BiLSTM, attention), same batch size, loss,
optimizer and per-epoch reshuffle, same torch threads per process (1). Throughput = training samples per
second of each epoch's training pass (the validation pass is excluded on both sides); the first epoch is
a warm-up and the median of the rest is compared. Ray Train's fixed start-up (controller, worker actors,
process group) is reported apart. Peak memory: the peak resident set of the process doing the training
(the plain loop runs in its own spawned process so its figure is its own).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from benchmarks.common import load_average

if TYPE_CHECKING:
    from raytrade.training.loop import LoopConfig

NAME = "training"
TITLE = "Forecaster training: Ray Train vs plain PyTorch (samples/s per epoch)"
EPOCHS = 3  # per run; the first is a warm-up
ROUNDS = 2
TRAIN_WINDOWS = 4096
VAL_WINDOWS = 512
UNIVERSE_FILE = "data/lean_us_equity_etf_1d.parquet"  # relative to the repository root
UNIVERSE_LABELS = {"horizon": 5, "threshold": 0.01}  # daily bars: jobs/configs/universe_smoke.yaml's labels


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


def _universe_data() -> tuple[Any, Any, Any, Any, Any]:
    """The pooled universe: demo config with ``data.path`` = :data:`UNIVERSE_FILE` (every symbol) and daily labels;
    all train and val windows of every symbol. Needs a running Ray (started by :func:`_data`)."""
    from benchmarks.common import ROOT
    from raytrade.config import load_config
    from raytrade.dataset.prepare import load_universe_data, prepare_data

    cfg = load_config(ROOT / "jobs/configs/demo.yaml", {
        "data": {"path": str(ROOT / UNIVERSE_FILE)}, "labels": UNIVERSE_LABELS,
        "train": {"cpus_per_worker": 1, "epochs": EPOCHS, "early_stopping_patience": None}})
    universe = load_universe_data(cfg)
    start = time.perf_counter()
    prepared = prepare_data(cfg, universe)
    prepare_s = time.perf_counter() - start
    w = prepared.windows(cfg.model.lookback)
    return cfg, universe, prepared, (w["train"], w["val"]), prepare_s


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


def _plain_run(loop_cfg: Any, x, y_class, y_return) -> dict[str, Any]:
    """:func:`plain_loop` in a fresh spawned process (its own peak memory, no Ray in it)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(plain_loop, loop_cfg, x, y_class, y_return).result()


def _finish(runs: dict[str, dict[str, Any]]) -> None:
    """Median samples/s after the warm-up and its ratio to the plain loop (the first run), in place."""
    base = _median_after_warmup(next(iter(runs.values()))["samples_per_s"])
    for r in runs.values():
        r["median_samples_per_s"] = _median_after_warmup(r["samples_per_s"])
        r["ratio_over_plain"] = r["median_samples_per_s"] / base


def _table(runs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| run | median samples/s | vs plain loop | samples/s of each epoch (first = warm-up) | peak RSS (MiB) | "
             "fixed start-up (s) |",
             "|---|---:|---:|---|---:|---:|"]
    for name, r in runs.items():
        overhead = f"{r['fixed_overhead_s']:.1f}" if "fixed_overhead_s" in r else "—"
        lines.append(f"| {name} | {r['median_samples_per_s']:.0f} | {r['ratio_over_plain']:.2f}x | "
                     f"{', '.join(f'{v:.0f}' for v in r['samples_per_s'])} | {r['peak_rss_mb']:.0f} | {overhead} |")
    return lines


def _btc_section(storage: str) -> tuple[dict[str, Any], list[str]]:
    from raytrade.training.trainer import loop_config

    cfg, prepared, train, val = _data()
    loop_cfg = loop_config(train, cfg.model, cfg.train, prepared.scaler, cfg.features, cfg.labels)
    keep = train.y_class >= 0
    # interleaved rounds (plain, cached, streaming) so drifting background load hits every run alike
    rounds: dict[str, list[dict[str, Any]]] = {"plain": [], "cached": [], "streaming": []}
    for r in range(ROUNDS):
        rounds["plain"].append(_plain_run(loop_cfg, train.x[keep], train.y_class[keep], train.y_return[keep]))
        rounds["cached"].append(_ray_train(cfg, prepared, train, val, storage, f"w1-{r}", num_workers=1,
                                           cpus_per_worker=1))
        rounds["streaming"].append(_ray_train(cfg, prepared, train, val, storage, f"w1s-{r}", num_workers=1,
                                              cpus_per_worker=1, data_loading="streaming"))
    two = _ray_train(cfg, prepared, train, val, storage, "w2", num_workers=2, cpus_per_worker=1)
    plain, one, streaming = (_merge(rounds[k]) for k in ("plain", "cached", "streaming"))
    runs = {"plain PyTorch loop (baseline)": plain, "Ray Train, 1 worker x 1 CPU (cached shard)": one,
            "Ray Train, 1 worker x 1 CPU (streaming Ray Data)": streaming,
            "Ray Train, 2 workers x 1 CPU, DDP (cached shard)": two}
    _finish(runs)
    payload = {
        "model": cfg.model.model_dump(mode="json"), "batch_size": cfg.train.batch_size, "epochs": EPOCHS,
        "rounds": ROUNDS, "train_windows": int(keep.sum()), "val_windows": len(val), "torch_threads_per_process": 1,
        "data": str(cfg.data.path), "runs": runs,
        "ray_train_1_worker_over_plain": one["ratio_over_plain"],
        "ray_train_2_workers_over_1_worker": two["median_samples_per_s"] / one["median_samples_per_s"],
    }
    lines = [f"## 1. One symbol: the bundled BTC/USD 1h bars ({int(keep.sum())} training windows)", "",
             f"Model `{cfg.model.name}` (lookback {cfg.model.lookback}, {train.x.shape[2]} features), "
             f"the {int(keep.sum())} most recent training windows of the bundled BTC/USD 1h bars, batch "
             f"{cfg.train.batch_size}, {EPOCHS} epochs per run (first = warm-up, dropped), {ROUNDS} interleaved rounds "
             "of the 1-worker runs and the plain loop (median over all kept epochs), 1 torch thread per process.", "",
             *_table(runs), "",
             f"Ray Train 1 worker / plain loop: **{payload['ray_train_1_worker_over_plain']:.2f}x**; "
             f"2 workers / 1 worker: **{payload['ray_train_2_workers_over_1_worker']:.2f}x**."]
    return payload, lines


def _universe_section(storage: str) -> tuple[dict[str, Any], list[str]]:
    import collections

    from raytrade.training.trainer import loop_config

    cfg, universe, prepared, (train, val), prepare_s = _universe_data()
    loop_cfg = loop_config(train, cfg.model, cfg.train, prepared.scaler, cfg.features, cfg.labels)
    keep = train.y_class >= 0
    per_symbol = collections.Counter(str(s) for s in train.symbol[keep])
    load_before = load_average()
    plain = _plain_run(loop_cfg, train.x[keep], train.y_class[keep], train.y_return[keep])
    one = _ray_train(cfg, prepared, train, val, storage, "u-w1", num_workers=1, cpus_per_worker=1)
    two = _ray_train(cfg, prepared, train, val, storage, "u-w2", num_workers=2, cpus_per_worker=1)
    runs = {"plain PyTorch loop (baseline)": plain, "Ray Train, 1 worker x 1 CPU (cached shard)": one,
            "Ray Train, 2 workers x 1 CPU, DDP (cached shard)": two}
    _finish(runs)
    split = prepared.split
    n_xs = sum(c.startswith("xs_") for c in prepared.feature_columns)
    payload = {
        "data": UNIVERSE_FILE, "symbols": list(universe.symbols), "labels": UNIVERSE_LABELS,
        "model": cfg.model.model_dump(mode="json"), "batch_size": cfg.train.batch_size, "epochs": EPOCHS, "rounds": 1,
        "features": len(prepared.feature_columns), "cross_sectional_features": n_xs,
        "rows_train_val_test": [len(split.train), len(split.val), len(split.test)],
        "train_windows": int(keep.sum()), "train_windows_per_symbol": dict(per_symbol), "val_windows": len(val),
        "train_window_first_last": [str(train.timestamp[keep].min()), str(train.timestamp[keep].max())],
        "prepare_data_s": prepare_s, "torch_threads_per_process": 1, "runs": runs,
        "load_average_1_5_15m": {"before": load_before, "after": load_average()},
        "ray_train_1_worker_over_plain": one["ratio_over_plain"],
        "ray_train_2_workers_over_1_worker": two["median_samples_per_s"] / one["median_samples_per_s"],
        "ray_train_2_workers_over_plain": two["ratio_over_plain"],
    }
    lo, hi = (t[:10] for t in payload["train_window_first_last"])
    lines = [f"## 2. Pooled universe: every training window of {len(universe.symbols)} symbols "
             f"(`{UNIVERSE_FILE}`)", "",
             f"The universe pipeline's data path on the bundled daily US stocks and ETFs "
             f"({', '.join(universe.symbols)}): `load_universe_data` + `prepare_data` (Ray Data per-symbol features, "
             f"then {n_xs} cross-sectional `xs_` features; {len(prepared.feature_columns)} features in all; one "
             "chronological split on one calendar; labels horizon "
             f"{UNIVERSE_LABELS['horizon']} days, threshold {UNIVERSE_LABELS['threshold']}), took "
             f"{prepare_s:.1f} s, not timed below. **All {int(keep.sum()):,} training windows** (ends {lo} -> {hi}; "
             f"{min(per_symbol.values())}-{max(per_symbol.values())} per symbol) pooled into one forecaster, as the "
             f"pipeline's `_run_universe` trains it; {len(val):,} validation windows. Same model, batch, threads and "
             f"plain-loop baseline as section 1; {EPOCHS} epochs per run (first = warm-up, dropped), one round "
             "(plain, 1 worker, 2 workers, back to back).", "",
             *_table(runs), "",
             f"Ray Train 1 worker / plain loop: **{payload['ray_train_1_worker_over_plain']:.2f}x**; "
             f"2 workers / 1 worker: **{payload['ray_train_2_workers_over_1_worker']:.2f}x**; "
             f"2 workers / plain loop: **{payload['ray_train_2_workers_over_plain']:.2f}x**.",
             "1-minute load average before / after this section: "
             f"{_load1(load_before)} / {_load1(payload['load_average_1_5_15m']['after'])} (2 CPUs; the 2-worker run "
             "needs both, so a load above 2 means other processes took part of them)."]
    return payload, lines


def _load1(load: list[float] | None) -> str:
    return "n/a" if not load else f"{load[0]:.1f}"


def run() -> str:
    """Run both sections, write ``results/training.{json,md}`` and return the markdown."""
    import tempfile

    from benchmarks.common import busy_note, write_results

    load_start = load_average()
    with tempfile.TemporaryDirectory() as storage:
        btc, btc_lines = _btc_section(storage)
        uni, uni_lines = _universe_section(storage)
    payload = {**btc, "load_average_at_start": load_start, "universe": uni}
    lines = [f"# {TITLE}", "", *btc_lines, "", *uni_lines, "",
             "Fixed start-up = wall time of `fit_forecaster` minus the epochs (controller, worker actors, "
             "process group, shard load, checkpoints).", busy_note(load_start)]
    markdown = "\n".join(lines)
    write_results(NAME, payload, markdown)
    return markdown
