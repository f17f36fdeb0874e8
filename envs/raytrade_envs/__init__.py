"""Gymnasium trading environments and the shared per-bar accounting of raytrade.

Depends only on numpy, pandas and gymnasium. Importing this package registers
``"raytrade_envs/Trading-v0"`` (entry point :class:`TradingEnv`) with gymnasium,
so ``gymnasium.make("raytrade_envs/Trading-v0", features=..., returns=...)`` works.
"""

from __future__ import annotations

import gymnasium

from raytrade_envs.accounting import bar_net_return, net_returns
from raytrade_envs.trading_env import TradingEnv

__all__ = ["ENV_ID", "TradingEnv", "bar_net_return", "net_returns"]

#: Gymnasium id under which :class:`TradingEnv` is registered.
ENV_ID = "raytrade_envs/Trading-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="raytrade_envs.trading_env:TradingEnv")
