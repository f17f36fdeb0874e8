"""Gymnasium trading environments and the shared per-bar accounting of raytrade.

Depends only on numpy, pandas and gymnasium (never on Ray or ``raytrade``). Importing this
package registers ``"raytrade_envs/Trading-v0"`` (entry point :class:`TradingEnv`) with
gymnasium, so ``gymnasium.make("raytrade_envs/Trading-v0", features=..., returns=...)`` works.

Modules (one seam each):

* :mod:`raytrade_envs.accounting`: the book (units held between trades, rebalanced to the target
  every bar and charged for it; exact compounding across next-open fills; costs and slippage per
  asset): :func:`bar_step`, :func:`simulate`, :func:`net_returns`, shared with the backtester;
* :mod:`raytrade_envs.market`: :class:`MarketSimulator` (fills, costs, slippage);
* :mod:`raytrade_envs.observation`: :class:`ObservationBuilder` and :func:`observation_vector`
  (the single definition of the observation layout);
* :mod:`raytrade_envs.actions`: :class:`ActionMapper` (single asset and portfolio);
* :mod:`raytrade_envs.rewards`: reward schemes by name (:data:`REWARDS`);
* :mod:`raytrade_envs.env_config`: :class:`TradingEnvConfig` (the env's data and settings, defined once);
* :mod:`raytrade_envs.trading_env`: :class:`TradingEnv`;
* :mod:`raytrade_envs.vector_env`: :class:`VecTradingEnv` (``N`` envs stepped with numpy).
"""

from __future__ import annotations

import gymnasium

from raytrade_envs.accounting import BarStep, BookPath, bar_net_return, bar_step, net_log_return, net_returns, simulate
from raytrade_envs.actions import ActionMapper
from raytrade_envs.env_config import TradingEnvConfig
from raytrade_envs.market import MarketSimulator, ohlcv_arrays
from raytrade_envs.observation import ObservationBuilder, observation_size, observation_vector
from raytrade_envs.rewards import REWARDS, make_reward
from raytrade_envs.trading_env import TradingEnv
from raytrade_envs.vector_env import VecTradingEnv

__all__ = [
    "ENV_ID",
    "BarStep",
    "BookPath",
    "REWARDS",
    "ActionMapper",
    "MarketSimulator",
    "ObservationBuilder",
    "TradingEnv",
    "TradingEnvConfig",
    "VecTradingEnv",
    "bar_net_return",
    "bar_step",
    "make_reward",
    "net_log_return",
    "net_returns",
    "observation_size",
    "observation_vector",
    "ohlcv_arrays",
    "simulate",
]

#: Gymnasium id under which :class:`TradingEnv` is registered.
ENV_ID = "raytrade_envs/Trading-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="raytrade_envs.trading_env:TradingEnv")
