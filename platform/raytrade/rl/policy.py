"""A trained RL policy for inference: an RLlib ``RLModule`` acting deterministically.

Used by the backtest (rolling through the test split), MLflow (saved as a directory) and Ray Serve
(loaded by name@alias). Deterministic action = mean of the Gaussian action distribution, clipped
to the action space [-1, 1] (a target position, fraction of equity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raytrade_envs import TradingEnv

MODULE_DIR = "module"
META_FILE = "policy.json"


class Policy:
    """Deterministic wrapper of an RLlib RLModule (torch).

    Attributes:
        module: the RLModule; algorithm: e.g. ``"ppo"``; obs_dim: observation length it expects;
        window: bars of features per observation (as trained); feature_names: the (scaled) feature
        columns of the observation window, in order.
    """

    def __init__(self, module: Any, algorithm: str = "ppo", obs_dim: int | None = None, window: int | None = None,
                 feature_names: list[str] | None = None):
        self.module = module
        self.algorithm = algorithm
        self.obs_dim = obs_dim
        self.window = window
        self.feature_names = list(feature_names or [])

    def observation(self, window: np.ndarray, columns: list[str], forecasts: np.ndarray, position: float) -> np.ndarray:
        """The env observation from a scaled feature window ``(>= window, len(columns))`` ending at t, the
        forecaster outputs at t and the current position (same layout as :class:`TradingEnv`)."""
        idx = [columns.index(name) for name in self.feature_names] if self.feature_names else list(range(len(columns)))
        rows = np.asarray(window)[-int(self.window) :, idx]
        return np.concatenate([rows.ravel(), np.asarray(forecasts).ravel(), [position]]).astype(np.float32)

    @classmethod
    def from_module_dir(cls, path: str | Path, **kwargs: Any) -> Policy:
        from ray.rllib.core.rl_module.rl_module import RLModule

        return cls(RLModule.from_checkpoint(Path(path).resolve()), **kwargs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Target positions ``(n,)`` in [-1, 1] for observations ``(n, obs_dim)`` (or one ``(obs_dim,)``)."""
        obs = np.atleast_2d(np.asarray(obs, dtype=np.float32))
        if self.obs_dim is not None and obs.shape[1] != self.obs_dim:
            raise ValueError(f"observation has {obs.shape[1]} values, the policy expects {self.obs_dim}")
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.from_numpy(obs)})
        dist_inputs = out["action_dist_inputs"].cpu().numpy()
        mean = dist_inputs[:, : dist_inputs.shape[1] // 2]
        return np.clip(mean[:, 0], -1.0, 1.0)

    def predict(self, obs: Any) -> np.ndarray:
        """pyfunc entry point (MLflow): same as :meth:`act`."""
        return self.act(np.asarray(obs, dtype=np.float32))

    def rollout(self, env: TradingEnv) -> np.ndarray:
        """Run one episode from ``env.reset()`` acting deterministically; returns the positions taken.

        Position ``k`` is the target chosen at env step ``k`` (bar ``window-1+k`` of the env data).
        """
        obs, _ = env.reset(seed=0)
        positions = []
        done = False
        while not done:
            action = self.act(obs)
            obs, _, terminated, truncated, info = env.step(action.astype(np.float32))
            positions.append(info["position"])
            done = terminated or truncated
        return np.asarray(positions)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.module.save_to_path((directory / MODULE_DIR).resolve())
        meta = {"algorithm": self.algorithm, "obs_dim": self.obs_dim, "window": self.window,
                "feature_names": self.feature_names}
        (directory / META_FILE).write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Policy:
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        return cls.from_module_dir(directory / MODULE_DIR, **meta)


def load_policy(directory: str) -> Policy:
    """Loader used by the MLflow pyfunc wrapper (``raytrade.rl.policy:load_policy``)."""
    return Policy.load(directory)
