"""``TD3Config``/``TD3``: TD3 as a thin specialisation of RLlib's SAC (new API stack only).

Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018.

Reused from SAC/DQN unchanged: the training loop (``DQN.training_step``: sample from the EnvRunners,
add episodes to the ``EpisodeReplayBuffer``, once ``num_steps_sampled_before_learning_starts`` env steps
are collected replay ``train_batch_size`` transitions per ``Learner.update``, sync weights to the
EnvRunners), n-step sampling, ``training_intensity``, the NEXT_OBS learner connector, the
``actor_lr``/``critic_lr``/``tau``/``grad_clip`` settings and checkpointing. TD3-specific: the module
(:class:`~raytrade.rl.td3.module.TD3TorchRLModule`), the learner
(:class:`~raytrade.rl.td3.learner.TD3TorchLearner`) and the knobs below.

Defaults follow the authors' reference implementation (github.com/sfujim/TD3): Adam 3e-4 for actor and
critics, ``tau=0.005``, ``gamma=0.99``, batch 256, 256-256 ReLU MLPs, exploration noise 0.1,
target noise 0.2 clipped at 0.5, policy delay 2, uniform replay of 1e6 transitions; uniform-random
actions until learning starts (``random_steps``). SAC's ``num_steps_sampled_before_learning_starts``
default (1500 env steps) is kept; the paper uses 25e3 (1e4 in the ICML version) on MuJoCo.

Usage::

    from raytrade.rl.td3 import TD3Config

    algo = TD3Config().environment("Pendulum-v1").training(policy_delay=2).build_algo()
    result = algo.train()
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.algorithms.sac.sac import SAC, SACConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec


class TD3Config(SACConfig):
    """Configuration of :class:`TD3` (``SACConfig`` plus the TD3 knobs of :meth:`training`).

    Attributes set here (besides SAC's): ``policy_delay`` (2), ``target_noise`` (0.2),
    ``target_noise_clip`` (0.5), ``exploration_noise`` (0.1), ``random_steps`` (None: same as
    ``num_steps_sampled_before_learning_starts``). ``train_batch_size`` (256) is the replay batch per update
    (``train_batch_size_per_learner`` overrides it per Learner); the replay buffer is a uniform
    ``EpisodeReplayBuffer`` of ``int(1e6)`` env steps; ``twin_q`` is always True.
    """

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or TD3)
        self.twin_q = True
        self.tau = 0.005
        self.actor_lr = 3e-4
        self.critic_lr = 3e-4
        self.gamma = 0.99
        # SAC sets train_batch_size_per_learner=256; leave it unset so `train_batch_size` is honoured too.
        self._train_batch_size_per_learner = None
        self.train_batch_size = 256
        self.replay_buffer_config = {"type": "EpisodeReplayBuffer", "capacity": int(1e6)}
        self.policy_delay = 2
        self.target_noise = 0.2
        self.target_noise_clip = 0.5
        self.exploration_noise = 0.1
        self.random_steps: int | None = None

    def training(
        self,
        *,
        policy_delay: int | None = NotProvided,
        target_noise: float | None = NotProvided,
        target_noise_clip: float | None = NotProvided,
        exploration_noise: float | None = NotProvided,
        random_steps: int | None = NotProvided,
        buffer_capacity: int | None = NotProvided,
        model_config: dict[str, Any] | None = NotProvided,
        **kwargs,
    ) -> TD3Config:
        """SAC's ``training()`` settings (``actor_lr``, ``critic_lr``, ``tau``, ``gamma``, ``train_batch_size``,
        ``train_batch_size_per_learner``, ``replay_buffer_config``, ``n_step``, ``grad_clip``,
        ``training_intensity``, ``num_steps_sampled_before_learning_starts``, ...) plus:

        Args:
            policy_delay: critic updates per actor (and target) update, ``d`` in the paper (>= 1).
            target_noise: std of the target policy smoothing noise, normalized action units (>= 0).
            target_noise_clip: the smoothing noise is clipped to ``[-c, c]`` (>= 0).
            exploration_noise: std of the Gaussian exploration noise, normalized action units (>= 0);
                normalized actions are in [-1, 1], so 0.1 is 5% of the action range.
            random_steps: env steps at the start sampled uniformly from the action box (the paper's
                ``start_timesteps``); None: ``num_steps_sampled_before_learning_starts``; 0 disables.
            buffer_capacity: replay buffer capacity in env steps (shortcut for
                ``replay_buffer_config={"capacity": ...}``).
            model_config: network settings, e.g. ``{"fcnet_hiddens": [64, 64], "fcnet_activation":
                "relu"}`` (shortcut for ``.rl_module(model_config=...)``).
        """
        super().training(**kwargs)
        if policy_delay is not NotProvided:
            self.policy_delay = policy_delay
        if target_noise is not NotProvided:
            self.target_noise = target_noise
        if target_noise_clip is not NotProvided:
            self.target_noise_clip = target_noise_clip
        if exploration_noise is not NotProvided:
            self.exploration_noise = exploration_noise
        if random_steps is not NotProvided:
            self.random_steps = random_steps
        if buffer_capacity is not NotProvided:
            self.replay_buffer_config = {**self.replay_buffer_config, "capacity": int(buffer_capacity)}
        if model_config is not NotProvided:
            self.rl_module(model_config=model_config)
        return self

    def validate(self) -> None:
        super().validate()
        if not self.enable_rl_module_and_learner or not self.enable_env_runner_and_connector_v2:
            raise ValueError("TD3 runs on RLlib's new API stack only (RLModule + Learner + EnvRunner)")
        if self.framework_str != "torch":
            raise ValueError(f"TD3 is implemented for torch only, got framework={self.framework_str!r}")
        if not self.normalize_actions:
            raise ValueError("TD3's actor outputs normalized actions in [-1, 1]: keep normalize_actions=True")
        if int(self.policy_delay) != self.policy_delay or self.policy_delay < 1:
            raise ValueError(f"policy_delay must be an int >= 1, got {self.policy_delay!r}")
        for name in ("target_noise", "target_noise_clip", "exploration_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.random_steps is not None and self.random_steps < 0:
            raise ValueError(f"random_steps must be >= 0 or None, got {self.random_steps!r}")

    @property
    def effective_random_steps(self) -> int:
        """Uniform-random warm-up env steps actually used (``random_steps`` with None resolved)."""
        if self.random_steps is None:
            return int(self.num_steps_sampled_before_learning_starts or 0)
        return int(self.random_steps)

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from raytrade.rl.td3.module import TD3TorchRLModule

        return RLModuleSpec(module_class=TD3TorchRLModule)

    def get_default_learner_class(self):
        from raytrade.rl.td3.learner import TD3TorchLearner

        return TD3TorchLearner

    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {
            "exploration_noise": float(self.exploration_noise),
            "random_steps": self.effective_random_steps,
        }


class TD3(SAC):
    """Twin Delayed DDPG (Fujimoto et al., 2018) on RLlib's new API stack; SAC's/DQN's training loop.

    Only addition to ``SAC``: with ``config.debugging(seed=...)`` the replay buffer's sampling RNG is seeded
    too (RLlib leaves it unseeded), so runs are reproducible; with remote env runners also set
    ``env_runners(sample_timeout_s=None)`` (RLlib drops samples that come later than 60 s by default).
    """

    def setup(self, config: AlgorithmConfig) -> None:
        super().setup(config)
        buffer = getattr(self, "local_replay_buffer", None)
        if self.config.seed is not None and buffer is not None and hasattr(buffer, "rng"):
            buffer.rng = np.random.default_rng(self.config.seed)

    @classmethod
    def get_default_config(cls) -> AlgorithmConfig:
        return TD3Config()

    @classmethod
    def get_default_policy_class(cls, config: AlgorithmConfig):
        return None
