"""A trained agent's policy for inference, whatever trained it: an RLlib ``RLModule`` or a stable-baselines3 model.

Used by the backtest (rolling through a split), MLflow (saved as a directory) and Ray Serve (loaded by
name@alias). The action is deterministic: RLlib's inference distribution made deterministic (the Gaussian
mean for PPO, the squashed mean for SAC, the actor output for TD3), SB3's ``predict(deterministic=True)``,
clipped to the action space [-1, 1] (target position as a fraction of ``max_position`` of equity).

Saved layout: ``policy.json`` (backend, algorithm, observation spec) + ``module/`` (RLlib) or
``model.zip`` (SB3).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from raytrade_envs import TradingEnv, observation_vector

MODULE_DIR = "module"
SB3_FILE = "model.zip"
META_FILE = "policy.json"


def _algorithms() -> dict[str, Any]:
    """stable-baselines3's algorithm classes by our name (imported here so loading a policy never imports the
    training code in :mod:`raytrade.rl.sb3_agents`)."""
    from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3

    return {"ppo": PPO, "sac": SAC, "td3": TD3, "a2c": A2C, "ddpg": DDPG}


class _Algorithms(dict):
    """name -> SB3 class, imported on first use (no import-time side effects)."""

    def __missing__(self, key: str) -> Any:
        self.update(_algorithms())
        if key not in self.keys():
            raise KeyError(f"stable-baselines3 backend has no algorithm {key!r}; choose from {sorted(self)}")
        return dict.__getitem__(self, key)


SB3_ALGORITHMS: dict[str, Any] = _Algorithms()


class Policy:
    """Deterministic wrapper of a trained agent.

    Attributes:
        model: the RLlib RLModule (``backend="rllib"``) or SB3 model (``backend="sb3"``).
        backend, algorithm: e.g. ``"rllib"``, ``"td3"``.
        obs_dim: observation length it expects; window: bars of features per observation;
        feature_names: the scaled feature columns of the window, in order;
        forecast_inputs: forecaster outputs in the observation (:mod:`raytrade.rl.inputs`);
        account_observation: whether unrealised P&L and drawdown end the observation.
    """

    def __init__(self, model: Any, backend: str = "rllib", algorithm: str = "ppo", obs_dim: int | None = None,
                 window: int | None = None, feature_names: Sequence[str] | None = None,
                 forecast_inputs: Sequence[str] = ("probs", "expected_return"), account_observation: bool = True):
        self.model = model
        self.backend = backend
        self.algorithm = algorithm
        self.obs_dim = obs_dim
        self.window = window
        self.feature_names = list(feature_names or [])
        self.forecast_inputs = list(forecast_inputs)
        self.account_observation = bool(account_observation)

    # ------------------------------------------------------------ observation
    def observation(self, window: np.ndarray, columns: list[str], forecast_row: np.ndarray, position: float,
                    unrealised_pnl: float = 0.0, drawdown: float = 0.0) -> np.ndarray:
        """The env observation ``(obs_dim,)`` float32 (layout of :func:`raytrade_envs.observation_vector`).

        Args:
            window: scaled features ``(>= self.window, len(columns))`` ending at bar t.
            columns: names of ``window``'s columns; ``self.feature_names`` are picked from them.
            forecast_row: :func:`raytrade.rl.inputs.forecast_inputs` row for bar t ``(K,)``.
            position: current holding in [-1, 1] (fraction of equity).
            unrealised_pnl, drawdown: account state (fractions) when the policy was trained with it.
        """
        idx = [columns.index(name) for name in self.feature_names] if self.feature_names else list(range(len(columns)))
        rows = np.asarray(window)[-int(self.window):, idx]
        return observation_vector(rows, np.asarray(forecast_row, dtype=np.float32).ravel(),
                                  np.atleast_1d(np.asarray(position, dtype=np.float64)), unrealised_pnl, drawdown,
                                  account=self.account_observation)

    # ------------------------------------------------------------------- act
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Target positions ``(n,)`` in [-1, 1] for observations ``(n, obs_dim)`` (or one ``(obs_dim,)``);
        ``(n, n_assets)`` for a portfolio policy.

        Raises:
            ValueError: the observation length differs from the one the policy was trained on.
        """
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float32))
        if self.obs_dim is not None and obs.shape[1] != self.obs_dim:
            raise ValueError(f"observation has {obs.shape[1]} values, the policy expects {self.obs_dim}")
        if self.backend == "sb3":
            actions, _ = self.model.predict(obs, deterministic=True)
        else:
            import torch
            from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian

            with torch.no_grad():
                out = self.model.forward_inference({"obs": torch.from_numpy(obs)})
                dist = self.model.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"])
                actions = dist.to_deterministic().sample()
                if isinstance(dist, TorchSquashedGaussian):  # SAC: RLlib's deterministic sample is pre-tanh
                    actions = torch.tanh(actions)
                actions = actions.cpu().numpy()
        actions = np.clip(np.asarray(actions, dtype=np.float64).reshape(len(obs), -1), -1.0, 1.0)
        return actions[:, 0] if actions.shape[1] == 1 else actions

    def predict(self, obs: Any) -> np.ndarray:
        """pyfunc entry point (MLflow): same as :meth:`act`."""
        return self.act(np.asarray(obs, dtype=np.float32))

    def evaluate(self, env: TradingEnv, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """One deterministic episode from ``env.reset(seed=seed)``: ``(positions, net_returns)``.

        ``positions[k]`` is the target position env step ``k`` traded to (fraction of equity, the env's
        ``info["target"]``) and ``net_returns[k]`` the simple net return of that bar after costs (fraction).
        """
        obs, _ = env.reset(seed=seed)
        positions, returns = [], []
        done = False
        while not done:
            action = np.atleast_1d(self.act(obs)[0]).astype(np.float32)
            obs, _, terminated, truncated, info = env.step(action)
            positions.append(info["target"])
            returns.append(info["net_return"])
            done = terminated or truncated
        return np.asarray(positions, dtype=np.float64), np.asarray(returns, dtype=np.float64)

    def rollout(self, env: TradingEnv) -> np.ndarray:
        """Positions of one deterministic episode (see :meth:`evaluate`)."""
        return self.evaluate(env)[0]

    # ------------------------------------------------------------- save/load
    def meta(self) -> dict[str, Any]:
        return {"backend": self.backend, "algorithm": self.algorithm, "obs_dim": self.obs_dim, "window": self.window,
                "feature_names": self.feature_names, "forecast_inputs": self.forecast_inputs,
                "account_observation": self.account_observation}

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.backend == "sb3":
            self.model.save(directory / SB3_FILE)
        else:
            self.model.save_to_path((directory / MODULE_DIR).resolve())
        (directory / META_FILE).write_text(json.dumps(self.meta()))
        return directory

    @classmethod
    def from_module_dir(cls, path: str | Path, **meta: Any) -> Policy:
        """A policy around the RLlib module saved at ``path`` (``RLModule.save_to_path``)."""
        from ray.rllib.core.rl_module.rl_module import RLModule

        return cls(RLModule.from_checkpoint(Path(path).resolve()), **{**meta, "backend": "rllib"})

    @classmethod
    def load(cls, directory: str | Path) -> Policy:
        directory = Path(directory)
        meta: Mapping[str, Any] = json.loads((directory / META_FILE).read_text())
        backend = meta.get("backend", "rllib")
        if backend == "sb3":

            model = SB3_ALGORITHMS[meta["algorithm"]].load(directory / SB3_FILE, device="cpu")
            return cls(model, **{**meta, "backend": backend})
        return cls.from_module_dir(directory / MODULE_DIR, **meta)


def load_policy(directory: str) -> Policy:
    """Loader used by the MLflow pyfunc wrapper (``raytrade.rl.policy:load_policy``)."""
    return Policy.load(directory)


def switching_rollout(env: TradingEnv, policies: Sequence[Policy], switch_at: Sequence[int],
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic episode in which ``policies[k]`` acts from env step ``switch_at[k]`` until the next
    switch (FinRL's rolling ensemble: each window traded by the agent chosen, as retrained, for it).

    The acting policy sees the episode's real account state (the position left by the previous one).
    Returns ``(positions, net_returns)`` as :meth:`Policy.evaluate`.

    Raises:
        ValueError: ``switch_at`` does not start at 0, is not increasing, or its length differs from ``policies``.
    """
    starts = [int(s) for s in switch_at]
    increasing = all(b > a for a, b in zip(starts, starts[1:], strict=False))
    if len(starts) != len(policies) or not starts or starts[0] != 0 or not increasing:
        raise ValueError(f"switch_at must be increasing from 0 with one step per policy, got {starts} "
                         f"for {len(policies)} policies")
    obs, _ = env.reset(seed=seed)
    positions, returns = [], []
    k, step, done = 0, 0, False
    while not done:
        while k + 1 < len(starts) and step >= starts[k + 1]:
            k += 1
        action = np.atleast_1d(policies[k].act(obs)[0]).astype(np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        positions.append(info["target"])
        returns.append(info["net_return"])
        step += 1
        done = terminated or truncated
    return np.asarray(positions, dtype=np.float64), np.asarray(returns, dtype=np.float64)
