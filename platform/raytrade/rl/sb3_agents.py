"""stable-baselines3 agents (PPO, SAC, TD3, A2C, DDPG) behind the same training interface as the RLlib ones.

Raffin et al., "Stable-Baselines3: Reliable Reinforcement Learning Implementations", JMLR 2021. Each agent
learns ``train_batch_size`` env steps per iteration (``learn(..., reset_num_timesteps=False)``) in one
:class:`raytrade_envs.TradingEnv`; :func:`raytrade.rl.agents.fit_agent` runs it as a Ray task so several
agents train in parallel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raytrade.config import RLConfig
from raytrade.rl.env import make_env
from raytrade.rl.policy import SB3_ALGORITHMS, SB3_FILE, Policy


def sb3_update_schedule(cfg: RLConfig) -> dict[str, Any]:
    """SB3's ``train_freq`` (env steps) and ``gradient_steps`` for ``cfg.updates_per_step`` updates per env step."""
    if cfg.updates_per_step >= 1:
        return {"train_freq": 1, "gradient_steps": round(cfg.updates_per_step)}
    return {"train_freq": max(1, round(1 / cfg.updates_per_step)), "gradient_steps": 1}


def sb3_model(algorithm: str, cfg: RLConfig, env: Any) -> Any:
    """The SB3 model of ``algorithm`` for ``cfg`` on ``env`` (MLP ``cfg.hidden``, CPU, seeded)."""
    cls = SB3_ALGORITHMS[algorithm]
    common = {"learning_rate": cfg.learning_rate, "gamma": cfg.gamma, "seed": cfg.seed, "device": "cpu",
              "verbose": 0, "policy_kwargs": {"net_arch": list(cfg.hidden)}}
    if algorithm == "ppo":
        extra = {"n_steps": cfg.train_batch_size, "batch_size": min(cfg.minibatch_size, cfg.train_batch_size),
                 "n_epochs": cfg.num_epochs}
    elif algorithm == "a2c":
        extra = {"n_steps": 5}
    else:  # off-policy: sac, td3, ddpg
        from stable_baselines3.common.noise import NormalActionNoise

        extra = {"buffer_size": cfg.buffer_size, "batch_size": cfg.minibatch_size, "tau": cfg.tau,
                 "learning_starts": min(cfg.learning_starts, cfg.train_batch_size), **sb3_update_schedule(cfg)}
        if algorithm in ("td3", "ddpg"):
            n = env.action_space.shape[0]
            extra["action_noise"] = NormalActionNoise(np.zeros(n), 0.1 * np.ones(n))
    model = cls("MlpPolicy", env, **common, **extra)
    # SB3's default logger makes an empty SB3-<date> folder in the temp dir on every learn(); log nowhere.
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


class SB3Trainer:
    """One SB3 model behind the agent-training interface of :func:`raytrade.rl.agents.fit_agent`."""

    backend = "sb3"

    def __init__(self, algorithm: str, cfg: RLConfig, env_config: dict[str, Any], policy_meta: dict[str, Any]):
        from stable_baselines3.common.monitor import Monitor

        self.algorithm = algorithm
        self.cfg = cfg
        self.env = Monitor(make_env(env_config))
        self.model = sb3_model(algorithm, cfg, self.env)
        self.obs_dim = int(self.env.observation_space.shape[0])
        self.policy_meta = policy_meta

    def train_iteration(self) -> dict[str, float]:
        """``learn(train_batch_size)``; returns env steps so far and the mean return of recent training episodes."""
        self.model.learn(total_timesteps=self.cfg.train_batch_size, reset_num_timesteps=False)
        episodes = list(self.model.ep_info_buffer or [])[-5:]
        mean = float(np.mean([e["r"] for e in episodes])) if episodes else float("nan")
        return {"env_steps": int(self.model.num_timesteps), "train_episode_return_mean": mean}

    def set_train_env(self, env_config: dict[str, Any]) -> None:
        """Keep training (weights, optimiser and replay buffer kept) in a new env, e.g. on more bars."""
        from stable_baselines3.common.monitor import Monitor

        self.env = Monitor(make_env(env_config))
        self.model.set_env(self.env, force_reset=True)
        # set_env wraps the env in a fresh VecEnv whose first reset is unseeded (random start from OS entropy);
        # seed it as the first env was (SB3 seeds only the env it is built with), as RLlib reseeds a rebuilt env
        self.model.get_env().seed(self.cfg.seed)

    def policy(self) -> Policy:
        """The current policy (a copy of the model, detached from training)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save(Path(tmp) / SB3_FILE)
            model = SB3_ALGORITHMS[self.algorithm].load(Path(tmp) / SB3_FILE, device="cpu")
        return Policy(model, backend="sb3", obs_dim=self.obs_dim, **self.policy_meta)

    def save_checkpoint(self, path: Path) -> Path:
        """The SB3 model zip (weights + optimizer state) for resuming training."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / SB3_FILE)
        return path

    def stop(self) -> None:
        self.env.close()
