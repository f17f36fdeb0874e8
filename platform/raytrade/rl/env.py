"""The trading env's inputs from a split, its registration with RLlib/Tune, and the env_config it takes."""

from __future__ import annotations

from typing import Any

import numpy as np

from raytrade_envs import TradingEnv

RLLIB_ENV_NAME = "raytrade_trading"


def make_env(env_config: dict[str, Any]) -> TradingEnv:
    """RLlib/SB3 env creator: ``env_config`` holds TradingEnv's keyword arguments (the fields of
    :class:`raytrade_envs.TradingEnvConfig`, arrays included)."""
    return TradingEnv(**dict(env_config))


def register_trading_env() -> str:
    """Register the env creator under :data:`RLLIB_ENV_NAME` (idempotent) and return that name."""
    from ray.tune.registry import register_env

    register_env(RLLIB_ENV_NAME, make_env)
    return RLLIB_ENV_NAME


def env_config(
    features: np.ndarray,
    returns: np.ndarray,
    forecasts: np.ndarray | None,
    window: int,
    cost_bps: float,
    episode_length: int | None = None,
    random_start: bool = False,
    max_position: float = 1.0,
    **options: Any,
) -> dict[str, Any]:
    """Keyword arguments of :class:`TradingEnv`: fields of :class:`raytrade_envs.TradingEnvConfig` (documented
    there: shapes, units, defaults).

    ``options`` passes the env's other keywords through (``gap_returns``, ``volatility``,
    ``slippage_vol_mult``, ``reward``, ``reward_params``, ``account_observation``, ...).
    """
    return {
        "features": np.asarray(features, dtype=np.float32),
        "returns": np.asarray(returns, dtype=np.float64),
        "forecasts": None if forecasts is None or np.asarray(forecasts).shape[-1] == 0
        else np.asarray(forecasts, dtype=np.float32),
        "window": window,
        "cost_bps": cost_bps,
        "episode_length": episode_length,
        "random_start": random_start,
        "max_position": max_position,
        **options,
    }


#: TradingEnv arguments that hold one row per bar.
PER_BAR_KEYS = ("features", "returns", "forecasts", "gap_returns", "volatility")


def slice_env(env_kwargs: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """``env_kwargs`` over bars ``[start, stop)`` only (every per-bar array sliced; ``episode_length`` capped
    to what fits). The first decision is at bar ``start + window - 1``, the last at ``stop - 2``.

    Raises:
        ValueError: fewer than ``window + 1`` bars in the slice.
    """
    out = dict(env_kwargs)
    for key in PER_BAR_KEYS:
        if out.get(key) is not None:
            out[key] = out[key][start:stop]
    n, window = len(out["returns"]), int(out["window"])
    if n < window + 1:
        raise ValueError(f"bars [{start}, {stop}) hold {n} bars; an env needs window + 1 = {window + 1}")
    if out.get("episode_length") is not None:
        out["episode_length"] = max(1, min(int(out["episode_length"]), n - window - 1))
    return out
