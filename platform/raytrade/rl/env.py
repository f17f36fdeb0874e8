"""The trading env's inputs from a split, its registration with RLlib/Tune, and the env_config it takes."""

from __future__ import annotations

from typing import Any

import numpy as np

from raytrade_envs import TradingEnv, VecTradingEnv

RLLIB_ENV_NAME = "raytrade_trading"


def make_env(env_config: dict[str, Any]) -> TradingEnv | VecTradingEnv:
    """RLlib/SB3 env creator: ``env_config`` holds TradingEnv's keyword arguments (the fields of
    :class:`raytrade_envs.TradingEnvConfig`, arrays included).

    With a ``num_envs`` key (what RLlib's env runners add under ``gym_env_vectorize_mode="vector_entry_point"``,
    :func:`register_trading_env`) it returns a :class:`raytrade_envs.VecTradingEnv` of that many envs over the
    same data, stepped with numpy; otherwise one :class:`TradingEnv`."""
    config = dict(env_config)
    num_envs = config.pop("num_envs", None)
    if num_envs is not None:
        return VecTradingEnv(int(num_envs), **config)
    return TradingEnv(**config)


def register_trading_env() -> str:
    """Register the env creator under :data:`RLLIB_ENV_NAME` (idempotent) and return that name.

    RLlib's env runners register it with gymnasium both as the entry point (one env) and as the vector entry
    point (``num_envs`` added to the config), so ``num_envs_per_env_runner > 1`` with
    ``gym_env_vectorize_mode="vector_entry_point"`` steps a :class:`raytrade_envs.VecTradingEnv`."""
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


#: TradingEnv arguments that hold one row per bar (one asset's env inputs; see also :data:`SLICED_KEYS`).
PER_BAR_KEYS = ("features", "returns", "forecasts", "gap_returns", "volatility")

#: Every TradingEnv argument with one row per bar, the portfolio env's ``tradable`` mask included.
SLICED_KEYS = (*PER_BAR_KEYS, "tradable")


def slice_env(env_kwargs: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """``env_kwargs`` over bars ``[start, stop)`` only (every per-bar array sliced; ``episode_length`` capped
    to what fits). The first decision is at bar ``start + window - 1``, the last at ``stop - 2``.

    Raises:
        ValueError: fewer than ``window + 1`` bars in the slice.
    """
    out = dict(env_kwargs)
    for key in SLICED_KEYS:
        if out.get(key) is not None:
            out[key] = out[key][start:stop]
    n, window = len(out["returns"]), int(out["window"])
    if n < window + 1:
        raise ValueError(f"bars [{start}, {stop}) hold {n} bars; an env needs window + 1 = {window + 1}")
    if out.get("episode_length") is not None:
        out["episode_length"] = max(1, min(int(out["episode_length"]), n - window - 1))
    return out
