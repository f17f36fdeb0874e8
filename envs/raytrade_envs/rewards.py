"""Reward schemes, selectable by name through :data:`REWARDS`.

Every scheme sees, per bar, the portfolio's net log return ``r = log1p(net)`` (floored at
``log(1e-12)``, see :func:`raytrade_envs.accounting.net_log_return`), the cost paid ``c``
(transaction cost + slippage, fraction of equity) and the increase in drawdown
``dd_inc = max(drawdown_t - drawdown_{t-1}, 0)`` (fractions). Schemes with state (the
differential Sharpe ratio) are reset at the start of every episode.

==========================  =====================================================  ====================
name                        reward                                                 ``reward_params``
==========================  =====================================================  ====================
``"log_return"``            ``r``                                                  none
``"differential_sharpe"``   ``D_t`` of Moody & Saffell (see below) on ``R_t = r``  ``eta`` (0.01),
                                                                                   ``var_floor`` (1e-8)
``"drawdown_penalty"``      ``r - penalty * dd_inc``                               ``penalty`` (1.0)
``"cost_penalty"``          ``r - penalty * c`` (costs count ``1 + penalty`` times) ``penalty`` (1.0)
==========================  =====================================================  ====================

Differential Sharpe ratio (J. Moody, L. Wu, Y. Liao, M. Saffell, "Performance functions and
reinforcement learning for trading systems and portfolios", J. Forecasting 17, 1998; J. Moody
and M. Saffell, "Learning to trade via direct reinforcement", IEEE Trans. Neural Networks 12(4),
2001, eq. 14-15). With exponential moving estimates ``A`` (first moment) and ``B`` (second
moment) of the returns, both starting at 0 each episode, and adaptation rate ``eta``::

    dA  = R_t - A_{t-1}                dB = R_t**2 - B_{t-1}
    D_t = (B_{t-1} * dA - 0.5 * A_{t-1} * dB) / max(B_{t-1} - A_{t-1}**2, var_floor) ** 1.5
    A_t = A_{t-1} + eta * dA           B_t = B_{t-1} + eta * dB

``var_floor`` (a variance, in squared return units) keeps the ratio finite while the variance
estimate is still ~0 (the first bar always gives ``D_1 = 0`` because ``A_0 = B_0 = 0``).

Each scheme has a scalar path (``reset()``, ``__call__``) used by :class:`TradingEnv` and a
batch path (``reset_batch(n)``, ``reset_where(mask)``, ``batch``) used by :class:`VecTradingEnv`;
both compute the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "REWARDS",
    "CostPenaltyReward",
    "DifferentialSharpeReward",
    "DrawdownPenaltyReward",
    "LogReturnReward",
    "RewardScheme",
    "make_reward",
]


class RewardScheme:
    """Base class: validates ``reward_params`` against :attr:`defaults`.

    Args:
        params: overrides of :attr:`defaults` (``None`` = all defaults).

    Raises:
        ValueError: naming unknown keys, or a value that is not a finite number (subclasses
            check their ranges).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    #: True when the reward is exactly the net log return (the env can skip the call).
    plain_log_return: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"unknown reward_params for reward {self.name!r}: {', '.join(map(repr, unknown))} (allowed: {allowed})"
            )
        self.params: dict[str, float] = {}
        for key, default in self.defaults.items():
            value = params.get(key, default)
            try:
                value = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"reward_params[{key!r}] must be a number, got {value!r}") from exc
            if not math.isfinite(value):
                raise ValueError(f"reward_params[{key!r}] must be finite, got {value!r}")
            self.params[key] = value
        self._check()

    def _check(self) -> None:
        """Range checks of the parameters (override)."""

    def _require(self, key: str, ok: bool, rule: str) -> None:
        if not ok:
            raise ValueError(f"reward_params[{key!r}] must be {rule}, got {self.params[key]!r}")

    # scalar path
    def reset(self) -> None:
        """Start of an episode (scalar path)."""

    def __call__(self, log_return: float, cost: float, drawdown_increase: float) -> float:
        raise NotImplementedError

    # batch path
    def reset_batch(self, n: int) -> None:
        """Allocate/clear the state of ``n`` envs (batch path)."""

    def reset_where(self, mask: np.ndarray) -> None:
        """Clear the state of the envs where ``mask`` ``(n,)`` is True."""

    def batch(self, log_return: np.ndarray, cost: np.ndarray, drawdown_increase: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


class LogReturnReward(RewardScheme):
    """Reward = net log return of the bar, ``log1p(net)`` (additive over an episode: the sum is
    the log growth of equity)."""

    name = "log_return"
    plain_log_return = True

    def __call__(self, log_return: float, cost: float, drawdown_increase: float) -> float:
        return log_return

    def batch(self, log_return: np.ndarray, cost: np.ndarray, drawdown_increase: np.ndarray) -> np.ndarray:
        return log_return


class DifferentialSharpeReward(RewardScheme):
    """Differential Sharpe ratio of Moody & Saffell (1998, 2001) on the net log returns.

    Params: ``eta`` in (0, 1] (adaptation rate of the moving moments, default 0.01);
    ``var_floor`` > 0 (floor of the variance estimate in the denominator, default 1e-8).
    """

    name = "differential_sharpe"
    defaults: ClassVar[dict[str, float]] = {"eta": 0.01, "var_floor": 1e-8}

    def _check(self) -> None:
        self._require("eta", 0.0 < self.params["eta"] <= 1.0, "in (0, 1]")
        self._require("var_floor", self.params["var_floor"] > 0.0, "> 0")
        self._eta = self.params["eta"]
        self._floor = self.params["var_floor"]
        self._a = 0.0
        self._b = 0.0
        self._a_vec = np.zeros(0)
        self._b_vec = np.zeros(0)

    def reset(self) -> None:
        self._a = 0.0
        self._b = 0.0

    def __call__(self, log_return: float, cost: float, drawdown_increase: float) -> float:
        a, b = self._a, self._b
        da = log_return - a
        db = log_return * log_return - b
        var = b - a * a
        d = (b * da - 0.5 * a * db) / max(var, self._floor) ** 1.5
        self._a = a + self._eta * da
        self._b = b + self._eta * db
        return d

    def reset_batch(self, n: int) -> None:
        self._a_vec = np.zeros(n)
        self._b_vec = np.zeros(n)

    def reset_where(self, mask: np.ndarray) -> None:
        self._a_vec[mask] = 0.0
        self._b_vec[mask] = 0.0

    def batch(self, log_return: np.ndarray, cost: np.ndarray, drawdown_increase: np.ndarray) -> np.ndarray:
        a, b = self._a_vec, self._b_vec
        da = log_return - a
        db = log_return * log_return - b
        var = b - a * a
        d = (b * da - 0.5 * a * db) / np.maximum(var, self._floor) ** 1.5
        self._a_vec = a + self._eta * da
        self._b_vec = b + self._eta * db
        return d


class DrawdownPenaltyReward(RewardScheme):
    """Net log return minus ``penalty`` times the increase in drawdown (fractions) over the bar.

    Params: ``penalty`` >= 0 (default 1.0). Recovering from a drawdown is not rewarded beyond
    the log return itself.
    """

    name = "drawdown_penalty"
    defaults: ClassVar[dict[str, float]] = {"penalty": 1.0}

    def _check(self) -> None:
        self._require("penalty", self.params["penalty"] >= 0.0, ">= 0")
        self._penalty = self.params["penalty"]

    def __call__(self, log_return: float, cost: float, drawdown_increase: float) -> float:
        return log_return - self._penalty * drawdown_increase

    def batch(self, log_return: np.ndarray, cost: np.ndarray, drawdown_increase: np.ndarray) -> np.ndarray:
        return log_return - self._penalty * drawdown_increase


class CostPenaltyReward(RewardScheme):
    """Net log return minus ``penalty`` times the cost paid in the bar (fraction of equity).

    The net log return already includes the cost once; the penalty discourages turnover further.
    Params: ``penalty`` >= 0 (default 1.0).
    """

    name = "cost_penalty"
    defaults: ClassVar[dict[str, float]] = {"penalty": 1.0}

    def _check(self) -> None:
        self._require("penalty", self.params["penalty"] >= 0.0, ">= 0")
        self._penalty = self.params["penalty"]

    def __call__(self, log_return: float, cost: float, drawdown_increase: float) -> float:
        return log_return - self._penalty * cost

    def batch(self, log_return: np.ndarray, cost: np.ndarray, drawdown_increase: np.ndarray) -> np.ndarray:
        return log_return - self._penalty * cost


#: Reward schemes by name (the ``reward`` argument of the environments).
REWARDS: dict[str, type[RewardScheme]] = {
    cls.name: cls
    for cls in (LogReturnReward, DifferentialSharpeReward, DrawdownPenaltyReward, CostPenaltyReward)
}


def make_reward(name: str, params: dict[str, Any] | None = None) -> RewardScheme:
    """Instantiate the reward scheme ``name`` with ``params``.

    Raises:
        ValueError: for an unknown name (listing the known ones) or bad/unknown params.
    """
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {sorted(REWARDS)}, got {name!r}")
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"reward_params must be a dict or None, got {type(params).__name__}")
    return REWARDS[name](params)
