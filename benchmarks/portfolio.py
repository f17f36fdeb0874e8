"""The portfolio env at 30 assets: env steps/s against a FinRL-style multi-stock env, and RLlib PPO against
stable-baselines3 PPO training on it (env steps/s on the same CPUs).

Data: the 29 Dow stocks of ``../shared/data/stooq_dow30_1d.parquet`` and SPY of
``../shared/data/lean_us_equity_etf_1d.parquet`` (daily, 2009-01-02 -> 2017-11-10), 30 assets on their union
calendar (:func:`universe_30`). Per asset, 4 causal features at ``t`` from closes ``<= t`` (1-, 5- and 21-bar log
returns over their 21-bar volatility, and the volatility's 63-bar z-score; 0 before an asset has them); next-bar log
returns and gaps; a ``tradable`` mask where the asset has no bar at ``t`` or ``t + 1`` (stooq misses a day of CVX, CRM,
TRV and V; a return is never bridged across a missing bar). Env: :class:`raytrade_envs.TradingEnv` in
portfolio mode as a universe run builds it (:func:`raytrade.rl.portfolio_inputs.portfolio_env_kwargs`): window 8
of the 120 asset-major features (+ current weights and account state), fills at the next open, 10 bps costs,
volatility slippage, ``weight_limits`` (long-only, gross <= 1), random starts and 500-bar episodes.

* **Env steps/s** (single process, no wrappers, the same pre-drawn seeded uniform actions in [-1, 1]^30):
  ``TradingEnv`` over a whole episode; :class:`raytrade_envs.VecTradingEnv` with 8, 32 (what each RLlib env
  runner steps, :data:`raytrade.rl.rllib_agents.PORTFOLIO_ENVS_PER_RUNNER`) and 64 envs; baseline
  :class:`benchmarks.env.FinRLStyleEnv` with ``stock_dim=30`` (FinRL's ``StockTradingEnv`` on its multi-stock
  branches), on the same 30 closes and
  features (FinRL's layout needs every ticker on every day, so its frame is the calendar's rows where all 30
  trade). Round-robin repeats, medians compared.
* **PPO training throughput**: the same PPO (2,048 env steps per iteration, minibatch 256, 5 epochs, MLP 64x64,
  1 torch thread per process): SB3 PPO on one env (how the SB3 agents train) and on a ``DummyVecEnv`` of 8 and of
  :data:`~raytrade.rl.rllib_agents.PORTFOLIO_ENVS_PER_RUNNER` (32); RLlib PPO (new API stack,
  :func:`raytrade.rl.rllib_agents.algo_config` as the agents stage builds it) with a local env runner stepping 8
  and 32 vectorised envs (1 process), and with one env-runner actor of 32 (2 processes, 2 CPUs). Throughput = env
  steps of an iteration / its wall time (sampling + learning), median after a warm-up iteration.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import SHARED_DATA, busy_note, load_average, write_results
from benchmarks.env import FinRLStyleEnv, interleaved, run_episode, run_vec

NAME = "portfolio"
TITLE = "Portfolio env at 30 assets: env steps/s vs a FinRL-style env; RLlib PPO vs SB3 PPO on it"
DOW_FILE = SHARED_DATA / "stooq_dow30_1d.parquet"
SPY_FILE = SHARED_DATA / "lean_us_equity_etf_1d.parquet"
WINDOW = 8
COST_BPS = 10.0
EPISODE = 500
SEED = 20240601
REPEATS = 5
WARMUP = 1
VEC_SIZES = (8, 32, 64)
VEC_STEPS = {8: 500, 32: 200, 64: 100}
FINRL_STEPS = 200
RL_ITERATIONS = 9  # the first is a warm-up
RL_STEPS = 2048


# -------------------------------------------------------------------- data
def universe_30() -> pd.DataFrame:
    """Long-format daily bars of 30 assets: the 29 Dow stocks of :data:`DOW_FILE` and SPY of :data:`SPY_FILE`
    within the Dow file's dates; columns timestamp (UTC), symbol, open, high, low, close, volume."""
    dow = pd.read_parquet(DOW_FILE)
    spy = pd.read_parquet(SPY_FILE)
    spy = spy[(spy["symbol"] == "SPY") & spy["timestamp"].between(dow["timestamp"].min(), dow["timestamp"].max())]
    bars = pd.concat([dow, spy], ignore_index=True)
    bars["symbol"] = bars["symbol"].astype(str)
    return bars.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


def portfolio_arrays(bars: pd.DataFrame) -> dict[str, Any]:
    """The portfolio env's arrays on the union calendar: ``features`` (T, 30 * 4) float32 asset-major,
    ``returns`` / ``gap_returns`` / ``volatility`` (T, 30), ``tradable`` (T, 30) bool, and the frames the FinRL
    baseline needs (``close``, per-feature ``(T, 30)`` frames), ``symbols``, ``timestamps``."""
    close = bars.pivot(index="timestamp", columns="symbol", values="close").sort_index()
    open_ = bars.pivot(index="timestamp", columns="symbol", values="open").reindex_like(close)
    log_close = np.log(close)
    r1 = log_close.diff()  # NaN where the asset has no bar at t or t-1: never bridged
    vol = r1.rolling(21, min_periods=10).std()
    feats = {"r1": r1 / vol, "r5": r1.rolling(5).sum() / vol, "r21": r1.rolling(21, min_periods=10).sum() / vol,
             "vol_z": (vol - vol.rolling(63, min_periods=20).mean()) / vol.rolling(63, min_periods=20).std()}
    feats = {k: f.replace([np.inf, -np.inf], np.nan).fillna(0.0) for k, f in feats.items()}
    nxt = (log_close.shift(-1) - log_close).to_numpy()
    gap = (np.log(open_).shift(-1) - log_close).to_numpy()
    tradable = np.isfinite(nxt) & np.isfinite(gap)
    features = np.stack([feats[k].to_numpy() for k in feats], axis=2).reshape(len(close), -1).astype(np.float32)
    return {"features": features, "returns": np.where(tradable, nxt, 0.0), "gap_returns": np.where(tradable, gap, 0.0),
            "volatility": vol.fillna(0.0).to_numpy(), "tradable": tradable, "close": close, "feature_frames": feats,
            "symbols": list(close.columns), "timestamps": close.index}


def env_kwargs(data: dict[str, Any], *, episode: int | None = EPISODE) -> dict[str, Any]:
    """TradingEnv keyword arguments of a universe run's portfolio env (module docstring)."""
    return {"features": data["features"], "returns": data["returns"], "gap_returns": data["gap_returns"],
            "volatility": data["volatility"], "slippage_vol_mult": 0.1, "tradable": data["tradable"],
            "window": WINDOW, "cost_bps": COST_BPS, "max_position": 1.0, "episode_length": episode,
            "random_start": episode is not None,
            "weight_limits": {"long_only": True, "max_weight": 1.0, "max_gross": 1.0, "max_net": 1.0}}


# ------------------------------------------------------------- FinRL-style
def finrl_frame(data: dict[str, Any]) -> pd.DataFrame:
    """FinRL's layout: index = day number (repeated per ticker), columns date, tic, close, indicators; only the
    calendar's days on which every ticker trades (FinRL's data pipeline requires a full panel)."""
    close = data["close"]
    full = close.notna().all(axis=1).to_numpy()
    days = close.index[full]
    frames = []
    for symbol in data["symbols"]:
        frames.append(pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "tic": symbol,
                                    "close": close.loc[days, symbol].to_numpy(),
                                    **{k: f.loc[days, symbol].to_numpy() for k, f in data["feature_frames"].items()},
                                    "day": np.arange(len(days))}))
    df = pd.concat(frames).sort_values(["day", "tic"], kind="stable")
    return df.set_index("day").rename_axis(None)


def env_throughput(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from raytrade_envs import TradingEnv, VecTradingEnv

    n_assets = len(data["symbols"])
    rng = np.random.default_rng(SEED)
    one_episode = env_kwargs(data, episode=None)
    env = TradingEnv(**one_episode)
    actions = rng.uniform(-1, 1, size=(len(data["returns"]), n_assets)).astype(np.float32)
    variants: dict[str, tuple[Callable[[], int], None]] = {
        "TradingEnv (portfolio, whole calendar)": (lambda: run_episode(env, actions), None)}
    for n in VEC_SIZES:
        vec = VecTradingEnv(n, **env_kwargs(data))
        vec.reset(seed=SEED)
        vec_actions = rng.uniform(-1, 1, size=(VEC_STEPS[n], n, n_assets)).astype(np.float32)
        variants[f"VecTradingEnv, {n} envs"] = (lambda vec=vec, a=vec_actions: run_vec(vec, a), None)
    finrl = FinRLStyleEnv(finrl_frame(data), hmax=100, initial_amount=1_000_000.0, cost_pct=COST_BPS * 1e-4,
                          reward_scaling=1e-4, tech_indicator_list=list(data["feature_frames"]), stock_dim=n_assets)
    finrl_actions = actions[:FINRL_STEPS]
    variants["FinRL-style StockTradingEnv, 30 stocks (baseline)"] = (lambda: run_episode(finrl, finrl_actions), None)
    return interleaved(variants, repeats=REPEATS, warmup=WARMUP)


# ------------------------------------------------------------------- RL
def _sb3(kwargs: dict[str, Any], n_envs: int) -> list[float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from raytrade_envs import TradingEnv

    env = DummyVecEnv([lambda: TradingEnv(**kwargs) for _ in range(n_envs)])
    model = PPO("MlpPolicy", env, n_steps=RL_STEPS // n_envs, batch_size=256, n_epochs=5, learning_rate=3e-4,
                policy_kwargs={"net_arch": [64, 64]}, device="cpu", seed=0, verbose=0)
    rates = []
    for _ in range(RL_ITERATIONS):
        before, t0 = model.num_timesteps, time.perf_counter()
        model.learn(total_timesteps=RL_STEPS, reset_num_timesteps=False)
        rates.append((model.num_timesteps - before) / (time.perf_counter() - t0))
    return rates


def _rllib(kwargs: dict[str, Any], runners: int, n_envs: int) -> list[float]:
    from raytrade.config import RLConfig
    from raytrade.rl.rllib_agents import algo_config

    cfg = RLConfig(agents=("ppo",), train_batch_size=RL_STEPS, minibatch_size=256, num_epochs=5, hidden=(64, 64),
                   window=WINDOW, num_env_runners=runners)
    algo = algo_config("ppo", cfg, kwargs, num_envs_per_env_runner=n_envs).build_algo()
    rates, last = [], 0
    try:
        for _ in range(RL_ITERATIONS):
            t0 = time.perf_counter()
            steps = int(algo.train()["num_env_steps_sampled_lifetime"])
            rates.append((steps - last) / (time.perf_counter() - t0))
            last = steps
    finally:
        algo.stop()
    return rates


def rl_throughput(data: dict[str, Any]) -> dict[str, list[float]]:
    import ray
    import torch

    from raytrade.rl.rllib_agents import PORTFOLIO_ENVS_PER_RUNNER

    torch.set_num_threads(1)
    kwargs = env_kwargs(data)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    n = PORTFOLIO_ENVS_PER_RUNNER
    return {
        "stable-baselines3 PPO, 1 env (baseline), 1 process": _sb3(kwargs, 1),
        "stable-baselines3 PPO, DummyVecEnv of 8, 1 process": _sb3(kwargs, 8),
        f"stable-baselines3 PPO, DummyVecEnv of {n}, 1 process": _sb3(kwargs, n),
        "RLlib PPO, local env runner (8 vectorised envs) + local learner, 1 process": _rllib(kwargs, 0, 8),
        f"RLlib PPO, local env runner ({n} vectorised envs, the agents' default) + local learner, 1 process":
            _rllib(kwargs, 0, n),
        f"RLlib PPO, 1 env-runner actor ({n} vectorised envs) + local learner, 2 CPUs": _rllib(kwargs, 1, n),
    }


# ------------------------------------------------------------------- run
def run() -> str:
    load_start = load_average()
    data = portfolio_arrays(universe_30())
    n_bars, n_assets = data["returns"].shape
    untradable = int((~data["tradable"]).sum())
    env = env_throughput(data)
    rl = rl_throughput(data)

    finrl_key = "FinRL-style StockTradingEnv, 30 stocks (baseline)"
    base_env = env[finrl_key]["steps_per_s"]
    medians = {k: statistics.median(v[1:]) for k, v in rl.items()}
    base_rl = next(iter(medians.values()))
    obs_dim = n_assets * 4 * WINDOW + n_assets + 3
    payload = {"data": {"files": [DOW_FILE.name, SPY_FILE.name], "bars": n_bars, "assets": n_assets,
                        "untradable_cells": untradable, "window": WINDOW, "episode_length": EPISODE},
               "env": {k: {**v, "ratio_over_finrl": v["steps_per_s"] / base_env} for k, v in env.items()},
               "rl": {k: {"env_steps_per_s": v, "median_env_steps_per_s": medians[k],
                          "ratio_over_sb3_1env": medians[k] / base_rl} for k, v in rl.items()}}
    lines = [f"# {TITLE}", "",
             f"{n_assets} assets (29 Dow stocks + SPY, daily) on a {n_bars:,}-bar union calendar, {untradable} "
             f"asset-bars untradable (no bar at t or t+1); observation about {obs_dim:,} floats (window {WINDOW} x "
             f"{n_assets} assets x 4 features + weights + account); next-open fills, 10 bps, slippage, long-only.", "",
             "## Env steps/s", "",
             f"Median of {REPEATS} round-robin repeats after {WARMUP} warm-up round; seeded uniform actions.", "",
             "| env | env steps per repeat | median | env steps/s | vs FinRL-style |", "|---|---:|---:|---:|---:|"]
    for k, v in env.items():
        lines.append(f"| {k} | {v['steps']:,} | {v['median_s'] * 1e3:.1f} ms | {v['steps_per_s']:,.0f} | "
                     f"{v['steps_per_s'] / base_env:.1f}x |")
    lines += ["", "## PPO training throughput", "",
              f"{RL_STEPS} env steps per iteration, minibatch 256, 5 epochs, MLP 64x64, 1 torch thread per process; "
              f"{RL_ITERATIONS} iterations per run, the first a warm-up.", "",
              "| run | median env steps/s | vs SB3 PPO (1 env) | each iteration (steps/s) |", "|---|---:|---:|---|"]
    for k, v in rl.items():
        lines.append(f"| {k} | {medians[k]:.0f} | {medians[k] / base_rl:.2f}x | {', '.join(f'{x:.0f}' for x in v)} |")
    lines += ["", busy_note(load_start)]
    markdown = "\n".join(lines)
    write_results(NAME, payload, markdown)
    return markdown
