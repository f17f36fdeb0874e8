"""TD3's RLModule (torch, RLlib new API stack): deterministic tanh actor, twin Q critics, target copies.

Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018.

All actions here live in RLlib's *normalized* action space ``[-1, 1]^A`` (``config.normalize_actions=True``,
the default): the EnvRunner's ``NormalizeAndClipActions`` connector maps them linearly onto the env's
``Box`` bounds (``low + (a + 1) * (high - low) / 2``, then clips), and the replay buffer stores them
normalized, so the critics are trained on normalized actions too.

Networks (paper architecture, sizes from ``model_config["fcnet_hiddens"]``):

* actor ``mu(s) = tanh(MLP(s))``, ``(B, obs_dim) -> (B, A)`` in ``[-1, 1]``;
* critics ``Q_i(s, a) = MLP(concat(s, a))``, ``(B, obs_dim + A) -> (B,)``, ``i = 1, 2``;
* learner-only target copies of all three, made by :meth:`make_target_networks` (``TargetNetworkAPI``).

Action distributions (what the EnvRunner's ``GetActions`` connector samples from):

* exploration: :class:`TorchClippedGaussian` around ``mu(s)`` with a constant std
  ``model_config["exploration_noise"]`` (normalized units), samples clipped to ``[-1, 1]``; during the
  first ``model_config["random_steps"]`` env steps (``t`` passed by the EnvRunner) the mean is drawn
  uniformly from ``[-1, 1]`` instead (the paper's ``start_timesteps`` warm-up);
* inference: :class:`TorchDeterministicAction`, i.e. ``mu(s)`` itself; its ``action_dist_inputs`` are
  the ``(B, A)`` actions, so ``dist_cls.from_logits(out["action_dist_inputs"]).to_deterministic().sample()``
  returns ``mu(s)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDeterministic, TorchDiagGaussian
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.models.configs import MLPHeadConfig
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule

#: forward_train output keys (see :meth:`TD3TorchRLModule._forward_train`)
QF_PREDS = "qf_preds"
QF_TWIN_PREDS = "qf_twin_preds"
Q_ACTOR = "q_actor"

#: TD3 defaults for the keys of ``model_config`` this module reads (Fujimoto et al.'s reference code).
TD3_MODEL_DEFAULTS: dict[str, Any] = {
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "relu",
    "exploration_noise": 0.1,
    "random_steps": 0,
}

_MIN_NOISE = 1e-6


class TorchDeterministicAction(TorchDeterministic):
    """RLlib's ``TorchDeterministic`` made constructible from module outputs.

    ``from_logits(x)`` takes the ``(B, A)`` actions themselves as "logits" (``TorchDeterministic`` has no
    ``from_logits`` in RLlib 2.x); ``sample()`` returns them, ``logp()`` is zero.
    """

    @classmethod
    def from_logits(cls, logits: torch.Tensor, **kwargs) -> TorchDeterministicAction:
        return cls(loc=logits)


class TorchClippedGaussian(TorchDiagGaussian):
    """``N(loc, scale)`` whose samples are clipped to the normalized action box ``[-1, 1]``.

    ``from_logits`` takes ``(B, 2A)`` = ``[loc, log_std]`` like ``TorchDiagGaussian``. Clipping here (TD3:
    ``a = clip(mu(s) + eps, low, high)``) makes the action stored in the episode/replay buffer the one the
    env executes; without it RLlib would store e.g. ``1.07`` but step the env with the clipped ``1.0``.
    ``to_deterministic()`` gives :class:`TorchDeterministicAction` of ``loc``.
    """

    def sample(self, *, sample_shape=None) -> torch.Tensor:
        return torch.clamp(super().sample(sample_shape=sample_shape), -1.0, 1.0)

    def rsample(self, *, sample_shape=None) -> torch.Tensor:
        return torch.clamp(super().rsample(sample_shape=sample_shape), -1.0, 1.0)

    def to_deterministic(self) -> TorchDeterministicAction:
        return TorchDeterministicAction(loc=self.loc)


def _model_config_dict(model_config: Any) -> dict[str, Any]:
    if model_config is None:
        return {}
    if dataclasses.is_dataclass(model_config):
        return dataclasses.asdict(model_config)
    return dict(model_config)


class TD3TorchRLModule(TorchRLModule, InferenceOnlyAPI, TargetNetworkAPI, QNetAPI):
    """TD3 actor, twin critics and their targets (see the module docstring for shapes and units).

    ``model_config`` keys: ``fcnet_hiddens`` (default ``[256, 256]``), ``fcnet_activation`` (``"relu"``),
    optional ``fcnet_kernel_initializer``/``fcnet_bias_initializer`` (+ ``_kwargs``),
    ``exploration_noise`` (std of the Gaussian exploration noise in normalized action units, ``0.1``),
    ``random_steps`` (env steps of uniform-random exploration at the start, ``0``). ``TD3Config`` fills the
    last two from its training settings. With ``inference_only=True`` (EnvRunners) only the actor is built.

    Attributes: ``pi`` (actor), ``qf``/``qf_twin`` (critics); after :meth:`make_target_networks` also
    ``target_pi``, ``target_qf``, ``target_qf_twin``.
    """

    framework: str = "torch"

    def setup(self) -> None:
        if not isinstance(self.action_space, gym.spaces.Box):
            raise ValueError(f"TD3 needs a continuous (Box) action space, got {self.action_space}")
        if not isinstance(self.observation_space, gym.spaces.Box):
            raise ValueError(f"TD3 needs a Box observation space, got {self.observation_space}")
        cfg = {**TD3_MODEL_DEFAULTS, **{k: v for k, v in _model_config_dict(self.model_config).items()
                                          if v is not None or k not in TD3_MODEL_DEFAULTS}}
        self._obs_dim = int(np.prod(self.observation_space.shape))
        self._action_dim = int(np.prod(self.action_space.shape))
        self.exploration_noise = float(cfg["exploration_noise"])
        self.random_steps = int(cfg["random_steps"] or 0)
        hidden = [int(h) for h in cfg["fcnet_hiddens"]]
        activation = cfg["fcnet_activation"]
        init = {
            "hidden_layer_weights_initializer": cfg.get("fcnet_kernel_initializer"),
            "hidden_layer_weights_initializer_config": cfg.get("fcnet_kernel_initializer_kwargs"),
            "hidden_layer_bias_initializer": cfg.get("fcnet_bias_initializer"),
            "hidden_layer_bias_initializer_config": cfg.get("fcnet_bias_initializer_kwargs"),
        }

        def mlp(in_dim: int, out_dim: int, out_activation: str) -> torch.nn.Module:
            return MLPHeadConfig(
                input_dims=[in_dim], hidden_layer_dims=hidden, hidden_layer_activation=activation,
                output_layer_dim=out_dim, output_layer_activation=out_activation, **init,
            ).build(framework="torch")

        self.pi = mlp(self._obs_dim, self._action_dim, "tanh")
        if not self.inference_only:
            self.qf = mlp(self._obs_dim + self._action_dim, 1, "linear")
            self.qf_twin = mlp(self._obs_dim + self._action_dim, 1, "linear")

    # ----------------------------------------------------------------- helpers
    def _flat_obs(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.reshape(obs.shape[0], self._obs_dim).float()

    def actor(self, obs: torch.Tensor, target: bool = False) -> torch.Tensor:
        """``mu(s)`` (or the target actor's), ``(B, *obs_shape) -> (B, A)`` in ``[-1, 1]``."""
        net = self.target_pi if target else self.pi
        return net(self._flat_obs(obs))

    def _q(self, net: torch.nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self._flat_obs(obs), actions.reshape(actions.shape[0], -1).float()], dim=-1)
        return net(x).squeeze(-1)

    def target_actions(self, next_obs: torch.Tensor, noise_std: float, noise_clip: float) -> torch.Tensor:
        """Target policy smoothing: ``clip(mu_target(s') + clip(N(0, noise_std), -c, c), -1, 1)``, ``(B, A)``."""
        actions = self.actor(next_obs, target=True)
        if noise_std > 0.0:
            noise = torch.clamp(torch.randn_like(actions) * noise_std, -noise_clip, noise_clip)
            actions = actions + noise
        return torch.clamp(actions, -1.0, 1.0)

    # --------------------------------------------------------------- forwards
    def _forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        with torch.no_grad():
            return {Columns.ACTION_DIST_INPUTS: self.actor(batch[Columns.OBS])}

    def _forward_exploration(self, batch: dict[str, Any], t: int | None = None, **kwargs) -> dict[str, Any]:
        with torch.no_grad():
            mu = self.actor(batch[Columns.OBS])
            if t is not None and self.random_steps > 0 and t < self.random_steps:
                mu = torch.rand_like(mu) * 2.0 - 1.0
            log_std = torch.full_like(mu, math.log(max(self.exploration_noise, _MIN_NOISE)))
            return {Columns.ACTION_DIST_INPUTS: torch.cat([mu, log_std], dim=-1)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Critic values of the replayed actions and ``Q1(s, mu(s))`` for the actor loss.

        Returns ``qf_preds``/``qf_twin_preds`` ``(B,)`` = ``Q_1/2(s, a)`` (gradients to the critics only)
        and ``q_actor`` ``(B,)`` = ``Q_1(s, mu(s))`` computed with the critic's parameters frozen, so its
        gradient reaches only the actor (straight-through, as in RLlib's SAC module).
        """
        if self.inference_only:
            raise RuntimeError("forward_train needs the critics; this TD3 module is inference_only")
        obs = batch[Columns.OBS]
        actions = torch.clamp(batch[Columns.ACTIONS].float(), -1.0, 1.0)
        out = {QF_PREDS: self._q(self.qf, obs, actions), QF_TWIN_PREDS: self._q(self.qf_twin, obs, actions)}
        mu = self.actor(obs)
        out[Columns.ACTION_DIST_INPUTS] = mu
        frozen = list(self.qf.parameters())
        for p in frozen:
            p.requires_grad_(False)
        try:
            out[Q_ACTOR] = self._q(self.qf, obs, mu)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return out

    # ------------------------------------------------------------------- APIs
    def make_target_networks(self) -> None:
        self.target_pi = make_target_network(self.pi)
        self.target_qf = make_target_network(self.qf)
        self.target_qf_twin = make_target_network(self.qf_twin)

    def get_target_network_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.pi, self.target_pi), (self.qf, self.target_qf), (self.qf_twin, self.target_qf_twin)]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> torch.Tensor:
        """``min(Q1_target, Q2_target)(s, a)`` ``(B,)`` for ``batch = {obs, actions}`` (clipped double Q)."""
        obs, actions = batch[Columns.OBS], batch[Columns.ACTIONS]
        return torch.min(self._q(self.target_qf, obs, actions), self._q(self.target_qf_twin, obs, actions))

    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"qf_preds": Q1(s, a), "qf_twin_preds": Q2(s, a)}``, each ``(B,)``, for ``batch = {obs, actions}``."""
        obs, actions = batch[Columns.OBS], batch[Columns.ACTIONS]
        return {QF_PREDS: self._q(self.qf, obs, actions), QF_TWIN_PREDS: self._q(self.qf_twin, obs, actions)}

    def get_non_inference_attributes(self) -> list[str]:
        return ["qf", "qf_twin", "target_pi", "target_qf", "target_qf_twin"]

    def get_initial_state(self) -> dict:
        return {}

    # ---------------------------------------------------- action distributions
    def get_inference_action_dist_cls(self) -> type[TorchDeterministicAction]:
        return TorchDeterministicAction

    def get_exploration_action_dist_cls(self) -> type[TorchClippedGaussian]:
        return TorchClippedGaussian

    def get_train_action_dist_cls(self) -> type[TorchDeterministicAction]:
        return TorchDeterministicAction
