"""Per-symbol feature preprocessing: Ray Data ``groupby("symbol").map_groups`` vs serial pandas.

Candidate: :func:`raytrade.data.preprocess.preprocess` (Ray Data shuffle by symbol, features + labels
per group, back to one pandas frame). Baseline: the same per-symbol function,
:func:`raytrade.data.preprocess.symbol_features`, applied serially over ``bars.groupby("symbol")``
and concatenated with pandas. Both run on the real 10-symbol alt/BTC 5-minute file.

A second, tiny input (the first 200 bars of every symbol: same groups, ~29x fewer rows) shows Ray
Data's fixed per-call overhead, which is what dominates on a single small machine.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    SHARED_DATA,
    busy_note,
    fmt_rate,
    fmt_s,
    load_average,
    relpath,
    summarize_times,
    time_repeats,
    write_results,
)

NAME = "features"
TITLE = "per-symbol feature preprocessing"
DATA_FILE = SHARED_DATA / "freqtrade_binance_altbtc_5m.parquet"
REPEATS = 5
WARMUP = 1
TINY_BARS = 200  # bars per symbol for the fixed-overhead measurement (> the feature warm-up)
TINY_REPEATS = 3  # extra measurement, kept short: each Ray call costs seconds on a busy 2-CPU machine

BASELINE = "serial pandas: groupby(symbol) + symbol_features + pd.concat"
CANDIDATE = "Ray Data: preprocess() = groupby(symbol).map_groups(symbol_features)"


def _baseline(bars: pd.DataFrame, features: Any, labels: Any) -> pd.DataFrame:
    from raytrade.data.preprocess import symbol_features

    return pd.concat([symbol_features(g, features, labels) for _, g in bars.groupby("symbol", sort=False)])


def _candidate(bars: pd.DataFrame, features: Any, labels: Any) -> pd.DataFrame:
    from raytrade.data.preprocess import preprocess

    return preprocess(bars, features, labels).frame


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def check_equal(baseline: pd.DataFrame, candidate: pd.DataFrame, feature_names: list[str]) -> dict[str, Any]:
    """Compare the two outputs after sorting by (symbol, timestamp)."""
    b, c = _sorted(baseline), _sorted(candidate)
    same_rows = len(b) == len(c)
    same_keys = bool(
        same_rows
        and (b["symbol"].astype(str).to_numpy() == c["symbol"].astype(str).to_numpy()).all()
        and (b["timestamp"].to_numpy() == c["timestamp"].to_numpy()).all()
    )
    bf = b[feature_names].to_numpy(dtype=np.float64)
    cf = c[feature_names].to_numpy(dtype=np.float64) if same_rows else None
    features_allclose = bool(same_keys and np.allclose(bf, cf))
    max_abs_diff = float(np.max(np.abs(bf - cf))) if same_rows and len(b) else None
    label_cols = [col for col in b.columns if col.startswith("label_")]
    labels_allclose = bool(
        same_keys
        and label_cols == [col for col in c.columns if col.startswith("label_")]
        and np.allclose(b[label_cols].to_numpy(np.float64), c[label_cols].to_numpy(np.float64), equal_nan=True)
    )
    return {
        "baseline_rows": len(b),
        "candidate_rows": len(c),
        "same_rows_symbols_timestamps": same_keys,
        "feature_columns": feature_names,
        "features_allclose": features_allclose,
        "features_max_abs_diff": max_abs_diff,
        "label_columns": label_cols,
        "labels_allclose": labels_allclose,
        "passed": bool(same_keys and features_allclose and labels_allclose),
    }


def _start_ray() -> tuple[bool, float]:
    """Start Ray if needed; returns (started here, seconds taken)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started, t0 = False, time.perf_counter()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
        started = True
    seconds = time.perf_counter() - t0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return started, seconds


def _block(times: list[float], rows: int) -> dict[str, Any]:
    stats = summarize_times(times)
    stats["rows_per_s"] = rows / stats["median_s"]
    return stats


def run() -> str:
    """Run the benchmark, write ``results/features.{json,md}`` and return the markdown."""
    from raytrade.config import FeatureConfig, LabelConfig
    from raytrade.data import load_bars
    from raytrade.features import feature_columns, warmup_bars

    load_at_start = load_average()
    fcfg, lcfg = FeatureConfig(), LabelConfig()
    names = feature_columns(fcfg)
    bars = load_bars(DATA_FILE)
    n_rows, n_symbols = len(bars), int(bars["symbol"].nunique())
    # same symbols, hence the same Ray plan, shuffle partitions and tasks, but ~29x fewer rows
    tiny = bars.groupby("symbol", sort=False).head(TINY_BARS).reset_index(drop=True)

    started_ray, ray_init_s = _start_ray()
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    try:
        # The correctness check's call of each variant is also its (single, untimed) warm-up call.
        check = check_equal(_baseline(bars, fcfg, lcfg), _candidate(bars, fcfg, lcfg), names)
        base = _block(time_repeats(lambda: _baseline(bars, fcfg, lcfg), REPEATS, warmup=0), n_rows)
        cand = _block(time_repeats(lambda: _candidate(bars, fcfg, lcfg), REPEATS, warmup=0), n_rows)
        # both paths are warm from the full-input runs: no further warm-up call
        tiny_base = _block(time_repeats(lambda: _baseline(tiny, fcfg, lcfg), TINY_REPEATS, warmup=0), len(tiny))
        tiny_cand = _block(time_repeats(lambda: _candidate(tiny, fcfg, lcfg), TINY_REPEATS, warmup=0), len(tiny))
    finally:
        if started_ray:
            ray.shutdown()

    ratio = base["median_s"] / cand["median_s"]
    tiny_ratio = tiny_base["median_s"] / tiny_cand["median_s"]
    overhead_s = tiny_cand["median_s"] - tiny_base["median_s"]
    fixed_share = tiny_cand["median_s"] / cand["median_s"]
    payload: dict[str, Any] = {
        "title": TITLE,
        "data": {
            "file": relpath(DATA_FILE),
            "input_rows": n_rows,
            "symbols": n_symbols,
            "output_rows": check["candidate_rows"],
            "feature_warmup_bars_per_symbol": warmup_bars(fcfg),
        },
        "config": {
            "repeats": REPEATS,
            "warmup": WARMUP,
            "warmup_note": "the untimed correctness-check call of each variant is its warm-up",
            "feature_config": fcfg.model_dump(mode="json"),
            "label_config": lcfg.model_dump(mode="json"),
        },
        "load_average_at_start": load_at_start,
        "ray": {"version": ray.__version__, "cluster_cpus": cluster_cpus,
                "init_s": ray_init_s if started_ray else None, "started_by_benchmark": started_ray},
        "baseline": {"name": BASELINE, **base},
        "candidate": {"name": CANDIDATE, **cand},
        "ratio_baseline_over_candidate": ratio,
        "fixed_overhead": {
            "input": f"first {TINY_BARS} bars of each of the {n_symbols} symbols",
            "input_rows": len(tiny),
            "repeats": TINY_REPEATS,
            "warmup": 0,
            "baseline": {"name": BASELINE, **tiny_base},
            "candidate": {"name": CANDIDATE, **tiny_cand},
            "ratio_baseline_over_candidate": tiny_ratio,
            "candidate_minus_baseline_s": overhead_s,
            "candidate_tiny_over_full_median": fixed_share,
        },
        "check": check,
    }

    verdict = "faster" if ratio > 1 else "slower"
    speed = ratio if ratio > 1 else 1 / ratio
    md = [
        f"## {TITLE} (`{NAME}`)",
        "",
        f"Data: `{DATA_FILE.name}`: {n_rows:,} bars of {n_symbols} symbols (5-minute alt/BTC) -> "
        f"{check['candidate_rows']:,} rows of {len(names)} features + labels. "
        f"Median of {REPEATS} repeats after {WARMUP} warm-up call; local Ray with {cluster_cpus:g} CPUs"
        + (f" (`ray.init` took {ray_init_s:.2f} s once, not included)." if started_ray else "."),
        "",
        "| input | variant | role | median | min | max | rows/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    inputs = ((f"full: {n_rows:,} rows", base, cand),
              (f"tiny: {len(tiny):,} rows ({TINY_BARS}/symbol)", tiny_base, tiny_cand))
    for label, b, c in inputs:
        for variant, role, s in ((BASELINE, "baseline", b), (CANDIDATE, "candidate", c)):
            md.append(f"| {label} | {variant} | {role} | {fmt_s(s['median_s'])} | {fmt_s(s['min_s'])} | "
                      f"{fmt_s(s['max_s'])} | {fmt_rate(s['rows_per_s'])} |")
    md += [
        "",
        f"**Ratio baseline/candidate (full input): {ratio:.4f}**, i.e. Ray Data is {speed:.1f}x {verdict} "
        f"than the serial pandas loop on this input. Fixed overhead: on the tiny input (same "
        f"{n_symbols} groups, so the same plan, shuffle and tasks, {n_rows // len(tiny)}x fewer rows; median of "
        f"{TINY_REPEATS} repeats) Ray Data still takes {fmt_s(tiny_cand['median_s'])} against "
        f"{fmt_s(tiny_base['median_s'])} for pandas (ratio {tiny_ratio:.4f}). That is about "
        f"{fmt_s(overhead_s)} of fixed cost per call (planning, hash shuffle, task scheduling including the "
        "Ray worker processes started for the call, Arrow/pandas conversion). Ray Data's tiny-input median "
        f"is {fixed_share:.0%} of its full-input median"
        + (": at this size its time is mostly fixed overhead." if fixed_share >= 0.5 else "."),
        "",
        f"Check (both outputs sorted by symbol, timestamp): same rows, symbols and timestamps = "
        f"{check['same_rows_symbols_timestamps']}; feature columns `np.allclose` = {check['features_allclose']} "
        f"(max abs diff {check['features_max_abs_diff']:.3g}); labels allclose = {check['labels_allclose']}; "
        f"passed = {check['passed']}.",
        "",
        "Ray Data's benefit is scale-out: per-symbol work spread over the CPUs of many nodes, and inputs "
        "larger than one machine's memory streamed through the cluster. On this small input on one "
        f"{os.cpu_count()}-CPU machine the serial pandas loop pays no scheduling, serialisation or shuffle "
        "cost, so it is expected to win; Ray only amortises its fixed cost on much larger data or clusters.",
    ]
    note = busy_note(load_at_start)
    if note:
        md += ["", note]
    markdown = "\n".join(md)
    write_results(NAME, payload, markdown)
    return markdown
