"""TD3 (Twin Delayed DDPG) on RLlib's new API stack (RLModule + Learner + EnvRunner).

Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in Actor-Critic Methods", ICML 2018:
a deterministic actor with Gaussian exploration noise, twin critics whose minimum forms the target
(clipped double Q-learning), target policy smoothing, and actor/target updates delayed to every
``policy_delay``-th critic update. RLlib 2.x dropped its TD3 (with rllib_contrib); this one reuses RLlib's
SAC algorithm/config (replay, training loop) and DQN learner machinery (target networks).

* :class:`TD3Config` / :class:`TD3` (:mod:`.algorithm`): ``TD3Config().environment("Pendulum-v1").build_algo()``;
* :class:`TD3TorchRLModule` (:mod:`.module`): actor ``(B, obs_dim) -> (B, A)`` in [-1, 1], twin critics;
* :class:`TD3TorchLearner` (:mod:`.learner`): the TD3 losses and the delayed updates.

For any trained module, ``module.get_inference_action_dist_cls().from_logits(
module.forward_inference({"obs": obs})["action_dist_inputs"]).to_deterministic().sample()`` is the
deterministic action ``mu(s)`` in the normalized box [-1, 1] (scale it to the env's bounds).
"""

from raytrade.rl.td3.algorithm import TD3, TD3Config
from raytrade.rl.td3.learner import TD3TorchLearner
from raytrade.rl.td3.module import (
    TD3TorchRLModule,
    TorchClippedGaussian,
    TorchDeterministicAction,
)

__all__ = [
    "TD3",
    "TD3Config",
    "TD3TorchLearner",
    "TD3TorchRLModule",
    "TorchClippedGaussian",
    "TorchDeterministicAction",
]
