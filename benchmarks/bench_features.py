"""Per-symbol feature preprocessing: Ray Data ``groupby("symbol").map_groups`` vs serial pandas.

Candidate: :func:`raytrade.data.preprocess.preprocess` (Ray Data shuffle by symbol, features + labels
per group, back to one pandas frame). Baseline: the same per-symbol function,
:func:`raytrade.data.preprocess.symbol_features`, applied serially over ``bars.groupby("symbol")``
and concatenated with pandas. Both run on the real 10-symbol alt/BTC 5-minute file.

A second, tiny input (a few hundred bars of one symbol) shows Ray Data's fixed per-call overhead,
which is what dominates on a single small machine.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import SHARED_DATA, fmt_rate, fmt_s, relpath, summarize_times, time_repeats, write_results

NAME = "features"
TITLE = "per-symbol feature preprocessing"
DATA_FILE = SHARED_DATA / "freqtrade_binance_altbtc_5m.parquet"
REPEATS = 5
WARMUP = 1
TINY_BARS = 200  # bars of one symbol for the fixed-overhead measurement (> the feature warm-up)

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

    fcfg, lcfg = FeatureConfig(), LabelConfig()
    names = feature_columns(fcfg)
    bars = load_bars(DATA_FILE)
    n_rows, n_symbols = len(bars), int(bars["symbol"].nunique())
    first_symbol = bars["symbol"].iloc[0]
    tiny = bars[bars["symbol"] == first_symbol].head(TINY_BARS).reset_index(drop=True)

    started_ray, ray_init_s = _start_ray()
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU")
    try:
        # correctness first (these calls also warm both paths up)
        base_out = _baseline(bars, fcfg, lcfg)
        cand_out = _candidate(bars, fcfg, lcfg)
        check = check_equal(base_out, cand_out, names)
        tiny_check = check_equal(_baseline(tiny, fcfg, lcfg), _candidate(tiny, fcfg, lcfg), names)

        base = _block(time_repeats(lambda: _baseline(bars, fcfg, lcfg), REPEATS, WARMUP), n_rows)
        cand = _block(time_repeats(lambda: _candidate(bars, fcfg, lcfg), REPEATS, WARMUP), n_rows)
        tiny_base = _block(time_repeats(lambda: _baseline(tiny, fcfg, lcfg), REPEATS, WARMUP), len(tiny))
        tiny_cand = _block(time_repeats(lambda: _candidate(tiny, fcfg, lcfg), REPEATS, WARMUP), len(tiny))
    finally:
        if started_ray:
            ray.shutdown()

    ratio = base["median_s"] / cand["median_s"]
    tiny_ratio = tiny_base["median_s"] / tiny_cand["median_s"]
    overhead_s = tiny_cand["median_s"] - tiny_base["median_s"]
    payload: dict[str, Any] = {
        "title": TITLE,
        "data": {
            "file": relpath(DATA_FILE),
            "input_rows": n_rows,
            "symbols": n_symbols,
            "output_rows": check["candidate_rows"],
            "feature_warmup_bars_per_symbol": warmup_bars(fcfg),
        },
        "config": {"repeats": REPEATS, "warmup": WARMUP, "feature_config": fcfg.model_dump(mode="json"),
                   "label_config": lcfg.model_dump(mode="json")},
        "ray": {"cluster_cpus": cluster_cpus, "init_s": ray_init_s if started_ray else None,
                "started_by_benchmark": started_ray},
        "baseline": {"name": BASELINE, **base},
        "candidate": {"name": CANDIDATE, **cand},
        "ratio_baseline_over_candidate": ratio,
        "fixed_overhead": {
            "input": f"first {len(tiny)} bars of {first_symbol}",
            "input_rows": len(tiny),
            "baseline": {"name": BASELINE, **tiny_base},
            "candidate": {"name": CANDIDATE, **tiny_cand},
            "ratio_baseline_over_candidate": tiny_ratio,
            "candidate_minus_baseline_s": overhead_s,
        },
        "check": check,
        "tiny_check": tiny_check,
    }

    verdict = "faster" if ratio > 1 else "slower"
    speed = ratio if ratio > 1 else 1 / ratio
    md = [
        f"## {TITLE} (`{NAME}`)",
        "",
        f"Data: `{DATA_FILE.name}`: {n_rows:,} bars, {n_symbols} symbols (5-minute alt/BTC) -> "
        f"{check['candidate_rows']:,} feature rows ({len(names)} features + labels). "
        f"Median of {REPEATS} repeats after {WARMUP} warm-up; Ray with {cluster_cpus:g} CPUs"
        + (f" (`ray.init` took {ray_init_s:.2f} s once, not included)." if started_ray else "."),
        "",
        "| input | variant | role | median | min | max | rows/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for label, rows, b, c in ((f"full ({n_rows:,} rows)", n_rows, base, cand),
                              (f"tiny ({len(tiny)} rows, 1 symbol)", len(tiny), tiny_base, tiny_cand)):
        for variant, role, s in ((BASELINE, "baseline", b), (CANDIDATE, "candidate", c)):
            md.append(f"| {label} | {variant} | {role} | {fmt_s(s['median_s'])} | {fmt_s(s['min_s'])} | "
                      f"{fmt_s(s['max_s'])} | {fmt_rate(s['rows_per_s'])} |")
    md += [
        "",
        f"**Ratio baseline/candidate (full input): {ratio:.3f}** -- Ray Data is {speed:.1f}x {verdict} "
        f"than serial pandas here. On the tiny input the ratio is {tiny_ratio:.4f}: Ray Data's fixed "
        f"per-call overhead (plan, shuffle, task scheduling, Arrow round-trip) is about "
        f"{fmt_s(overhead_s)} whatever the input size.",
        "",
        f"Check (sorted by symbol, timestamp): same rows/symbols/timestamps = "
        f"{check['same_rows_symbols_timestamps']}, features `np.allclose` = {check['features_allclose']} "
        f"(max abs diff {check['features_max_abs_diff']:.3g}), labels allclose = {check['labels_allclose']}.",
        "",
        "Ray Data's benefit is scale-out: the per-symbol work is spread over the cores of many nodes and "
        "inputs larger than one machine's memory are streamed. On this small input on one 2-core machine "
        "the serial pandas loop has no scheduling, serialisation or shuffle cost, so it is expected to win; "
        "the tiny-input rows show the fixed cost that Ray only amortises on much larger data.",
    ]
    markdown = "\n".join(md)
    write_results(NAME, payload, markdown)
    return markdown
