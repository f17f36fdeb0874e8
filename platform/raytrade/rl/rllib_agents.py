"""RLlib agents on the new API stack (RLModule + Learner + EnvRunner): PPO, SAC and TD3.

* PPO: Schulman et al., "Proximal Policy Optimization Algorithms", 2017 (``ray.rllib.algorithms.ppo``).
* SAC: Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018 (``ray.rllib.algorithms.sac``).
* TD3: Fujimoto et al., 2018, implemented on RLlib's SAC machinery in :mod:`raytrade.rl.td3`.

:func:`algo_config` builds the ``AlgorithmConfig`` from :class:`~raytrade.config.RLConfig`;
:func:`train_rllib` runs it iteration by iteration, scoring the policy on the VAL split after each
(see :func:`raytrade.rl.agents.fit_agent`, which owns the loop shared with the SB3 backend).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raytrade.config import RLConfig
from raytrade.rl.env import make_env, register_trading_env
from raytrade.rl.policy import Policy

OFF_POLICY_FRAGMENT = 8  # env steps sampled per off-policy training step

#: Envs each RLlib env runner steps at once on a PORTFOLIO env (2-D returns): one
#: :class:`raytrade_envs.VecTradingEnv` per runner (numpy-stepped, one batched forward pass per step for all of
#: them). One-asset envs keep one env per runner (their seeded results are pinned by tests/test_determinism.py).
#: 32, not 8: on the 30-asset env of ``benchmarks/portfolio.py`` RLlib PPO sampled 2,048 env steps in 0.18 s with
#: 32 envs and 0.42 s with 8 (learning took 0.22-0.28 s either way); at 32 it ran 1.00-1.30x SB3 PPO on a
#: DummyVecEnv of 32 in two runs of that benchmark (benchmarks/results/portfolio.md).
PORTFOLIO_ENVS_PER_RUNNER = 32


def envs_per_runner(env_config: dict[str, Any]) -> int:
    """Envs per RLlib env runner for ``env_config``: :data:`PORTFOLIO_ENVS_PER_RUNNER` for a portfolio (2-D
    ``returns``), 1 for one asset."""
    import numpy as np

    return PORTFOLIO_ENVS_PER_RUNNER if np.ndim(env_config["returns"]) == 2 else 1


def algo_config(algorithm: str, cfg: RLConfig, env_config: dict[str, Any], num_envs_per_env_runner: int | None = None):
    """The RLlib ``AlgorithmConfig`` of ``algorithm`` (``ppo`` | ``sac`` | ``td3``) for ``cfg`` (torch, new stack).

    One training iteration samples about ``cfg.train_batch_size`` env steps; off-policy agents make
    ``cfg.updates_per_step`` updates per sampled step from a replay buffer of ``cfg.buffer_size`` steps with
    batches of ``cfg.minibatch_size``.

    ``num_envs_per_env_runner`` (default :func:`envs_per_runner`: 32 for a portfolio env, 1 for one asset): above
    1, each env runner steps one :class:`raytrade_envs.VecTradingEnv` of that many envs (gymnasium's
    ``vector_entry_point`` mode, :func:`raytrade.rl.env.make_env`), so the policy runs one batched forward pass
    per step for all of them.
    """
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    n_envs = envs_per_runner(env_config) if num_envs_per_env_runner is None else int(num_envs_per_env_runner)
    if n_envs < 1:
        raise ValueError(f"num_envs_per_env_runner must be >= 1, got {num_envs_per_env_runner!r}")
    hidden = list(cfg.hidden)
    if algorithm == "ppo":
        from ray.rllib.algorithms.ppo import PPOConfig

        config = PPOConfig().training(
            lr=cfg.learning_rate, gamma=cfg.gamma, train_batch_size_per_learner=cfg.train_batch_size,
            minibatch_size=min(cfg.minibatch_size, cfg.train_batch_size), num_epochs=cfg.num_epochs,
            entropy_coeff=0.0,
        ).rl_module(model_config=DefaultModelConfig(fcnet_hiddens=hidden, fcnet_activation="tanh"))
    elif algorithm in ("sac", "td3"):
        if algorithm == "sac":
            from ray.rllib.algorithms.sac import SACConfig as OffPolicyConfig
        else:
            from raytrade.rl.td3 import TD3Config as OffPolicyConfig

        config = OffPolicyConfig().training(
            actor_lr=cfg.learning_rate, critic_lr=cfg.learning_rate, gamma=cfg.gamma, tau=cfg.tau,
            train_batch_size_per_learner=cfg.minibatch_size,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": cfg.buffer_size},
            num_steps_sampled_before_learning_starts=min(cfg.learning_starts, cfg.train_batch_size),
        ).rl_module(model_config=DefaultModelConfig(fcnet_hiddens=hidden, fcnet_activation="relu"))
        if algorithm == "sac":
            config = config.training(alpha_lr=cfg.learning_rate)
        # sample OFF_POLICY_FRAGMENT steps per training step, then make updates_per_step updates per sampled step
        # (training_intensity = replayed / sampled steps), with the per-call overhead paid once per fragment
        config = config.env_runners(rollout_fragment_length=OFF_POLICY_FRAGMENT).training(
            training_intensity=float(cfg.minibatch_size * cfg.updates_per_step))
        config = config.reporting(min_sample_timesteps_per_iteration=cfg.train_batch_size, min_time_s_per_iteration=0)
    else:
        raise ValueError(f"RLlib backend has no algorithm {algorithm!r}; choose ppo, sac or td3")
    # Reproducible (README "Reproducibility"): `seed` seeds random/numpy/torch in the env runners (seed + runner
    # index) and the learner, and each env's first reset; samples of remote env runners are waited for (RLlib's
    # default sample_timeout_s=60 drops late ones, so a slow runner changed the batch), their torch threads pinned.
    if n_envs > 1:
        config = config.env_runners(gym_env_vectorize_mode="vector_entry_point")
    return (
        config.environment(env=register_trading_env(), env_config=env_config)
        .framework("torch")
        .env_runners(num_env_runners=cfg.num_env_runners, num_envs_per_env_runner=n_envs, sample_timeout_s=None,
                     custom_resources_per_env_runner=dict(cfg.resources_per_env_runner))
        .learners(num_learners=0)
        .callbacks(on_environment_created=pin_env_runner_threads)
        .debugging(seed=cfg.seed)
        .reporting(metrics_num_episodes_for_smoothing=5)
    )


def pin_env_runner_threads(env_runner: Any = None, **_: Any) -> None:
    """RLlib ``on_environment_created`` callback: a remote env runner's torch uses ``num_cpus_per_env_runner``
    intra-op threads (at least 1).

    A Ray worker's torch otherwise keeps the thread count of whatever first initialised torch in that process
    (Ray reuses worker processes), and the thread count can change float results. The local env runner (index 0)
    is left alone: it shares the agent's process, whose threads :func:`raytrade.rl.agents.train_agents` sets.
    """
    if env_runner is None or not getattr(env_runner, "worker_index", 0):
        return
    import torch

    torch.set_num_threads(max(1, int(env_runner.config.num_cpus_per_env_runner)))


def seed_replay_buffer(algo: Any, seed: int | None) -> None:
    """Seed the replay sampling of an off-policy ``algo`` (SAC, TD3; no-op without a replay buffer).

    RLlib's ``EpisodeReplayBuffer`` draws its sample indices from ``np.random.default_rng(seed=None)``, i.e.
    from OS entropy, whatever ``config.debugging(seed=...)`` says: two SAC runs of one seed replayed different
    transitions and ended with different policies. (:class:`raytrade.rl.td3.TD3` seeds its buffer the same way.)
    """
    import numpy as np

    buffer = getattr(algo, "local_replay_buffer", None)
    if seed is not None and buffer is not None and hasattr(buffer, "rng"):
        buffer.rng = np.random.default_rng(seed)


class RLlibTrainer:
    """One RLlib algorithm behind the agent-training interface of :func:`raytrade.rl.agents.fit_agent`."""

    backend = "rllib"

    def __init__(self, algorithm: str, cfg: RLConfig, env_config: dict[str, Any], policy_meta: dict[str, Any]):
        self.algorithm = algorithm
        self.algo = algo_config(algorithm, cfg, env_config).build_algo()
        seed_replay_buffer(self.algo, cfg.seed)
        self.obs_dim = int(make_env(env_config).observation_space.shape[0])
        self.policy_meta = policy_meta

    def train_iteration(self) -> dict[str, float]:
        """One ``Algorithm.train()``; returns env steps so far and the mean training episode return."""
        result = self.algo.train()
        runners = result.get("env_runners", {})
        return {"env_steps": int(result.get("num_env_steps_sampled_lifetime",
                                            runners.get("num_env_steps_sampled_lifetime", 0))),
                "train_episode_return_mean": float(runners.get("episode_return_mean", float("nan")))}

    def set_train_env(self, env_config: dict[str, Any]) -> None:
        """Keep training (module, optimisers, replay buffer kept) in a new env, e.g. on more bars: every env
        runner swaps its ``env_config`` and rebuilds its env (``SingleAgentEnvRunner.make_env``)."""
        def swap(runner) -> None:
            runner.config.env_config.clear()
            runner.config.env_config.update(env_config)
            runner.make_env()

        self.algo.env_runner_group.foreach_env_runner(swap, local_env_runner=True)

    def policy(self) -> Policy:
        """The current policy (a copy of the module, detached from the algorithm)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.algo.get_module().save_to_path(Path(tmp) / "module")
            return Policy.from_module_dir(Path(tmp) / "module", obs_dim=self.obs_dim, **self.policy_meta)

    def save_checkpoint(self, path: Path) -> Path:
        """Full algorithm checkpoint (``Algorithm.save_to_path``) for resuming training."""
        return Path(self.algo.save_to_path(str(Path(path).resolve())))

    def stop(self) -> None:
        self.algo.stop()
