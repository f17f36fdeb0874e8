"""RLlib PPO (new API stack: RLModule + Learner + EnvRunner) on the trading environment.

``train_ppo`` builds the algorithm from :class:`~raytrade.config.RLConfig`, trains it for
``iterations`` iterations on the TRAIN split (random episode starts), and returns the trained
policy (:class:`~raytrade.rl.policy.Policy`) plus one row of metrics per iteration.
Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import RLConfig
from raytrade.rl.env import make_env, register_trading_env
from raytrade.rl.policy import Policy


@dataclass
class RLOutcome:
    policy: Policy
    history: pd.DataFrame


def ppo_config(cfg: RLConfig, env_config: dict[str, Any]):
    """The ``PPOConfig`` for ``cfg`` (new API stack, torch)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .environment(env=register_trading_env(), env_config=env_config)
        .framework("torch")
        .env_runners(num_env_runners=cfg.num_env_runners, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(
            lr=cfg.learning_rate,
            gamma=cfg.gamma,
            train_batch_size_per_learner=cfg.train_batch_size,
            minibatch_size=min(cfg.minibatch_size, cfg.train_batch_size),
            num_epochs=cfg.num_epochs,
            entropy_coeff=0.0,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(cfg.hidden), fcnet_activation="tanh"))
        .debugging(seed=cfg.seed)
        .reporting(metrics_num_episodes_for_smoothing=5)
    )


def train_ppo(
    cfg: RLConfig, env_config: dict[str, Any], on_iteration: Callable[[int, dict[str, float]], None] | None = None,
    feature_names: list[str] | None = None,
) -> RLOutcome:
    """Train PPO for ``cfg.iterations`` iterations and return the policy and per-iteration metrics."""
    algo = ppo_config(cfg, env_config).build_algo()
    rows = []
    try:
        for i in range(cfg.iterations):
            result = algo.train()
            runners = result.get("env_runners", {})
            row = {
                "iteration": i + 1,
                "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
                "env_steps": int(result.get("num_env_steps_sampled_lifetime", runners.get(
                    "num_env_steps_sampled_lifetime", 0))),
            }
            rows.append(row)
            if on_iteration is not None:
                on_iteration(i + 1, row)
        with tempfile.TemporaryDirectory() as tmp:
            algo.get_module().save_to_path(Path(tmp) / "module")
            obs_dim = int(make_env(env_config).observation_space.shape[0])
            policy = Policy.from_module_dir(Path(tmp) / "module", algorithm="ppo", obs_dim=obs_dim,
                                            window=cfg.window, feature_names=feature_names)
    finally:
        algo.stop()
    return RLOutcome(policy=policy, history=pd.DataFrame(rows))
