"""TD3's torch Learner (RLlib new API stack), built on RLlib's DQN/SAC learner machinery.

Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018,
Algorithm 1. Per gradient update (one ``Learner.update`` call on a replayed batch of ``B`` transitions):

* critics (every update), clipped double-Q target with target policy smoothing::

      a' = clip(mu_target(s') + clip(N(0, target_noise), -target_noise_clip, target_noise_clip), -1, 1)
      y  = r + gamma^n * (1 - terminated) * min(Q1_target(s', a'), Q2_target(s', a'))
      L_critic = mean(w * (Q1(s, a) - y)^2) + mean(w * (Q2(s, a) - y)^2)

  (``n`` = the replay buffer's n-step, 1 by default; ``w`` = prioritized-replay weights, 1 for the
  default uniform ``EpisodeReplayBuffer``);
* actor and targets (every ``policy_delay``-th update, counted per module from 1): ``L_actor = -mean(Q1(s,
  mu(s)))``, then Polyak averaging ``theta_target <- tau * theta + (1 - tau) * theta_target`` of the
  actor and both critics. On the other updates the actor's gradients stay ``None``, so its Adam
  optimizer skips its parameters (no step, no moment update) and the targets are left alone.

What is reused from RLlib: ``DQNLearner.build`` (target networks via the module's ``TargetNetworkAPI``
and the NEXT_OBS learner connector), the optimizer registry/LR schedules, grad clipping
(``config.grad_clip``), ``update_target_network`` and SAC's one-backward-per-optimizer gradient pattern.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import POLICY_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import update_target_network
from ray.rllib.utils.metrics import ALL_MODULES, NUM_TARGET_UPDATES, TD_ERROR_KEY

from raytrade.rl.td3.module import Q_ACTOR, QF_PREDS, QF_TWIN_PREDS, TD3TorchRLModule

QF_LOSS_KEY = "qf_loss"
CRITIC_OPTIMIZER = "qf"
ACTOR_OPTIMIZER = "policy"
NUM_CRITIC_UPDATES = "num_critic_updates"
NUM_ACTOR_UPDATES = "num_actor_updates"
_STATE_KEY = "td3_num_critic_updates"


class TD3TorchLearner(DQNTorchLearner):
    """Loss, delayed actor updates and delayed soft target updates of TD3 (see the module docstring).

    Reads from the (per-module) ``TD3Config``: ``gamma``, ``tau``, ``policy_delay``, ``target_noise``,
    ``target_noise_clip``, ``actor_lr``, ``critic_lr`` (floats or RLlib LR schedules), ``grad_clip``.
    Optimizers: ``"qf"`` (Adam over both critics) and ``"policy"`` (Adam over the actor).
    """

    def build(self) -> None:
        super().build()
        # Critic updates done so far, per module (the TD3 iteration counter t of Algorithm 1).
        self._num_critic_updates: dict[str, int] = defaultdict(int)
        # Whether the update in progress also updates the actor (and then the targets), per module.
        self._actor_step: dict[str, bool] = {}
        # Loss tensors per (module_id, optimizer name), consumed by compute_gradients.
        self._temp_losses: dict[tuple[str, str], torch.Tensor] = {}

    def configure_optimizers_for_module(self, module_id: str, config=None) -> None:
        module = self._module[module_id].unwrapped()
        params_critic = self.get_parameters(module.qf) + self.get_parameters(module.qf_twin)
        self.register_optimizer(module_id=module_id, optimizer_name=CRITIC_OPTIMIZER,
                                optimizer=torch.optim.Adam(params_critic), params=params_critic,
                                lr_or_lr_schedule=config.critic_lr)
        params_actor = self.get_parameters(module.pi)
        self.register_optimizer(module_id=module_id, optimizer_name=ACTOR_OPTIMIZER,
                                optimizer=torch.optim.Adam(params_actor), params=params_actor,
                                lr_or_lr_schedule=config.actor_lr)

    def compute_loss_for_module(self, *, module_id: str, config=None, batch: dict[str, Any],
                                fwd_out: dict[str, torch.Tensor]) -> torch.Tensor:
        module: TD3TorchRLModule = self.module[module_id].unwrapped()
        self._num_critic_updates[module_id] += 1
        actor_step = self._num_critic_updates[module_id] % int(config.policy_delay) == 0
        self._actor_step[module_id] = actor_step

        rewards = batch[Columns.REWARDS].float()
        with torch.no_grad():
            next_obs = batch[Columns.NEXT_OBS]
            next_actions = module.target_actions(next_obs, float(config.target_noise),
                                                 float(config.target_noise_clip))
            q_next = module.forward_target({Columns.OBS: next_obs, Columns.ACTIONS: next_actions})
            not_done = 1.0 - batch[Columns.TERMINATEDS].float()
            discount = config.gamma ** batch["n_step"].float() if "n_step" in batch else config.gamma
            target = rewards + discount * not_done * q_next

        weights = batch["weights"].float() if "weights" in batch else torch.ones_like(rewards)
        q1, q2 = fwd_out[QF_PREDS], fwd_out[QF_TWIN_PREDS]
        critic_loss = torch.mean(weights * (q1 - target) ** 2) + torch.mean(weights * (q2 - target) ** 2)
        actor_loss = -torch.mean(fwd_out[Q_ACTOR])
        td_error = 0.5 * (torch.abs(q1 - target) + torch.abs(q2 - target)).detach()

        self._temp_losses[(module_id, CRITIC_OPTIMIZER)] = critic_loss
        if actor_step:
            self._temp_losses[(module_id, ACTOR_OPTIMIZER)] = actor_loss
        # Per-sample TD errors (for a PrioritizedEpisodeReplayBuffer, popped by DQN.training_step).
        self.metrics.log_value(key=(module_id, TD_ERROR_KEY), value=td_error, reduce="item_series")
        stats = {
            QF_LOSS_KEY: critic_loss,
            "qf_mean": torch.mean(q1),
            "qf_max": torch.max(q1),
            "qf_min": torch.min(q1),
            "target_mean": torch.mean(target),
            "td_error_mean": torch.mean(td_error),
        }
        if actor_step:
            stats[POLICY_LOSS_KEY] = actor_loss
        self.metrics.log_dict(stats, key=module_id, window=1)
        self.metrics.log_value((module_id, NUM_CRITIC_UPDATES), 1, reduce="lifetime_sum")
        if actor_step:
            self.metrics.log_value((module_id, NUM_ACTOR_UPDATES), 1, reduce="lifetime_sum")
            return critic_loss + actor_loss
        return critic_loss

    def compute_gradients(self, loss_per_module: dict[str, torch.Tensor], **kwargs) -> dict[Any, torch.Tensor]:
        """One backward pass per optimizer (SAC's pattern); the actor's only on delayed-update steps.

        Every optimizer's gradients are reset to ``None`` first, so parameters of an optimizer without a
        loss this step keep ``grad=None`` and ``torch.optim.Adam.step`` leaves them untouched.
        """
        grads: dict[Any, torch.Tensor] = {}
        for module_id in set(loss_per_module) - {ALL_MODULES}:
            for optim_name, optim in self.get_optimizers_for_module(module_id):
                optim.zero_grad(set_to_none=True)
                loss = self._temp_losses.pop((module_id, optim_name), None)
                if loss is None:
                    continue
                loss.backward(retain_graph=True)
                grads.update(self.filter_param_dict_for_optimizer(
                    {pid: p.grad for pid, p in self._params.items()}, optim))
        self._temp_losses.clear()
        return grads

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Soft target updates (actor and both critics, ``tau``) after each delayed actor update.

        Replaces ``DQNLearner``'s ``target_network_update_freq``-based schedule by the paper's one.
        """
        TorchLearner.after_gradient_based_update(self, timesteps=timesteps)
        for module_id, module in self.module._rl_modules.items():
            if not self._actor_step.pop(module_id, False):
                continue
            tau = self.config.get_config_for_module(module_id).tau
            for main_net, target_net in module.unwrapped().get_target_network_pairs():
                update_target_network(main_net=main_net, target_net=target_net, tau=tau)
            self.metrics.log_value((module_id, NUM_TARGET_UPDATES), 1, reduce="lifetime_sum")

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[_STATE_KEY] = dict(self._num_critic_updates)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if _STATE_KEY in state:
            self._num_critic_updates = defaultdict(int, state[_STATE_KEY])
