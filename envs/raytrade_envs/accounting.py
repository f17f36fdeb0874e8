"""Per-bar portfolio arithmetic shared by the RL environments and the backtester.

This module is the single definition of how positions held over one bar turn into a
portfolio return. Every consumer (``TradingEnv``, ``VecTradingEnv``, the backtester, reports)
goes through these formulas so that training rewards and backtest P&L agree to
floating-point precision.

Conventions
-----------
* **Position**: fraction of equity held in an asset, in ``[-1, 1]``; negative means short.
  The target chosen at the close of bar ``t`` is held until the close of bar ``t + 1``.
* **Log return**: ``log_return[t] = ln(close[t + 1] / close[t])`` (natural log, a
  dimensionless fraction, *not* percent).
* **Gap return** (optional): ``gap_return[t] = ln(open[t + 1] / close[t])``. When given, the
  target chosen at the close of ``t`` *fills at the open of* ``t + 1``: the previous position
  earns the overnight/gap move ``close[t] -> open[t + 1]`` and the new position earns the
  intrabar move ``open[t + 1] -> close[t + 1]``, whose log return is
  ``log_return[t] - gap_return[t]``. Without gap returns (``gap = 0``) the fill is at
  ``close[t]`` and the new position earns the whole bar.
* **Transaction cost**: ``cost_bps`` basis points (1 bp = 1e-4) of the traded notional
  ``abs(new_position - prev_position)`` (times equity).
* **Slippage** (optional): an extra cost *fraction* per unit of traded notional, e.g.
  ``slippage_vol_mult * volatility[t]`` (see :class:`raytrade_envs.market.MarketSimulator`).
* **Net return**: the *simple* (not log) return of portfolio equity over the bar, as a
  fraction: ``equity[t + 1] = equity[t] * (1 + net)``::

      net = prev_position * expm1(gap)
          + new_position  * expm1(log_return - gap)
          - (cost_bps * 1e-4 + slippage) * abs(new_position - prev_position)

  summed over assets for a portfolio. This is the first-order (additive) form: both legs
  are fractions of the equity at the close of ``t``. With ``gap = 0`` and ``slippage = 0`` it
  is exactly ``new_position * expm1(log_return) - cost_bps * 1e-4 * abs(new - prev)``, and the
  functions below then return bit-identical results to the original, gap-free accounting.

``exp(x) - 1`` is evaluated with ``expm1`` for accuracy on small returns. The portfolio's net
log return is ``log1p(net)`` (see :func:`net_log_return`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "BPS",
    "MIN_GROWTH",
    "POSITION_TOLERANCE",
    "bar_net_return",
    "net_log_return",
    "net_returns",
]

#: One basis point as a fraction.
BPS: float = 1e-4

#: Absolute tolerance when checking that positions lie in [-1, 1].
POSITION_TOLERANCE: float = 1e-9

#: Floor on the growth factor ``1 + net`` before taking the log of a ruinous bar.
MIN_GROWTH: float = 1e-12

_LOG_MIN_GROWTH: float = math.log(MIN_GROWTH)


def net_log_return(net: float) -> float:
    """Net log return ``log1p(net)`` of a bar, floored at ``log(1e-12)`` when ``1 + net <= 1e-12``.

    Args:
        net: simple net return of the bar (fraction), as returned by :func:`bar_net_return`.

    Returns:
        ``log1p(net)`` if ``1 + net > 1e-12`` else ``log(1e-12)`` (about -27.6), so that a bar
        losing all equity (or more) yields a large but finite negative reward.
    """
    return math.log1p(net) if 1.0 + net > MIN_GROWTH else _LOG_MIN_GROWTH


def bar_net_return(
    prev_position: float,
    new_position: float,
    log_return: float,
    cost_bps: float,
    gap_return: float = 0.0,
    slippage: float = 0.0,
) -> float:
    """Simple net return of a one-asset portfolio over one bar.

    Args:
        prev_position: position (fraction of equity, in [-1, 1]) held before rebalancing at the
            close of bar ``t``.
        new_position: target position (fraction of equity, in [-1, 1]; negative = short) chosen
            at the close of bar ``t`` and held to the close of bar ``t + 1``.
        log_return: natural log return of the asset over the bar, ``ln(close[t+1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (``10.0`` means 0.1 % of
            ``abs(new_position - prev_position)``).
        gap_return: ``ln(open[t+1] / close[t])`` when the trade fills at the next bar's open
            (earned by ``prev_position``); ``0.0`` (default) fills at ``close[t]``.
        slippage: extra cost as a fraction of traded notional (e.g. ``mult * volatility[t]``);
            ``0.0`` by default.

    Returns:
        ``prev * expm1(gap) + new * expm1(log_return - gap) - (cost_bps * 1e-4 + slippage) *
        abs(new - prev)`` as a fraction of equity; with the defaults this is exactly
        ``new * expm1(log_return) - cost_bps * 1e-4 * abs(new - prev)``.

    This is the scalar hot-path version and performs no validation; use :func:`net_returns`
    for validated, vectorised series.
    """
    if gap_return == 0.0 and slippage == 0.0:
        return new_position * math.expm1(log_return) - cost_bps * BPS * abs(new_position - prev_position)
    return (
        prev_position * math.expm1(gap_return)
        + new_position * math.expm1(log_return - gap_return)
        - (cost_bps * BPS + slippage) * abs(new_position - prev_position)
    )


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def net_returns(
    positions: Any,
    log_returns: Any,
    cost_bps: float,
    initial_position: Any = 0.0,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
) -> np.ndarray:
    """Vectorised :func:`bar_net_return` over a series of bars, single asset or portfolio.

    Args:
        positions: shape ``(T,)`` (one asset) or ``(T, A)`` (portfolio of ``A`` assets);
            ``positions[t]`` is the position (fraction of equity in [-1, 1]) chosen at the close
            of bar ``t`` and held over ``log_returns[t]``.
        log_returns: same shape as ``positions``; ``log_returns[t] = ln(close[t+1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (>= 0).
        initial_position: position held before the first bar (the ``prev_position`` of bar 0),
            in [-1, 1]; a scalar, or shape ``(A,)`` for a portfolio.
        gap_returns: optional, same shape as ``log_returns``; ``ln(open[t+1] / close[t])``. Given,
            trades fill at the next open (see the module docstring); ``None`` fills at the close.
        slippage: optional, same shape as ``log_returns`` (or a scalar); slippage cost as a
            fraction of traded notional per bar (>= 0), e.g. ``mult * volatility``. ``None`` = 0.

    Returns:
        float64 array of shape ``(T,)`` with the simple net return of each bar (fractions),
        summed over assets for a portfolio; equal to applying :func:`bar_net_return` step by
        step. Without ``gap_returns`` and ``slippage`` the result is bit-identical to the
        gap-free formula ``pos * expm1(lr) - cost_bps * 1e-4 * abs(pos - prev)``.

    Raises:
        ValueError: if ``positions`` is not 1-D or 2-D, the shapes differ, any value is
            non-finite, a position lies outside [-1, 1] (tolerance 1e-9), ``cost_bps`` is
            negative or non-finite, or ``slippage`` is negative.
    """
    pos = np.asarray(positions, dtype=np.float64)
    lr = np.asarray(log_returns, dtype=np.float64)
    if pos.ndim not in (1, 2):
        raise ValueError(f"positions must be 1-D (T,) or 2-D (T, A), got shape {pos.shape}")
    if lr.ndim != pos.ndim:
        raise ValueError(
            f"log_returns must have the same shape as positions {pos.shape}, got shape {lr.shape}"
        )
    if pos.shape != lr.shape:
        raise ValueError(
            f"positions and log_returns must have the same shape, got {pos.shape} and {lr.shape}"
        )
    _check_finite(pos, "positions")
    _check_finite(lr, "log_returns")
    cost = float(cost_bps)
    if not math.isfinite(cost) or cost < 0.0:
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}")
    init = np.asarray(initial_position, dtype=np.float64)
    if init.ndim > 1 or (init.ndim == 1 and (pos.ndim != 2 or init.shape != pos.shape[1:])):
        raise ValueError(
            f"initial_position must be a scalar or have shape {pos.shape[1:]}, got shape {init.shape}"
        )
    if not np.all(np.isfinite(init)) or np.any(np.abs(init) > 1.0 + POSITION_TOLERANCE):
        raise ValueError(f"initial_position must be finite and in [-1, 1], got {initial_position!r}")
    if pos.size and np.max(np.abs(pos)) > 1.0 + POSITION_TOLERANCE:
        bad = np.unravel_index(int(np.argmax(np.abs(pos) > 1.0 + POSITION_TOLERANCE)), pos.shape)
        idx = bad[0] if pos.ndim == 1 else tuple(int(i) for i in bad)
        raise ValueError(f"positions must lie in [-1, 1]; positions[{idx}] = {pos[bad]!r}")
    gap = None
    if gap_returns is not None:
        gap = np.asarray(gap_returns, dtype=np.float64)
        if gap.shape != lr.shape:
            raise ValueError(f"gap_returns must have shape {lr.shape}, got {gap.shape}")
        _check_finite(gap, "gap_returns")
    slip = None
    if slippage is not None:
        slip = np.asarray(slippage, dtype=np.float64)
        if slip.ndim and slip.shape != lr.shape:
            raise ValueError(f"slippage must be a scalar or have shape {lr.shape}, got {slip.shape}")
        _check_finite(slip, "slippage")
        if np.any(slip < 0.0):
            raise ValueError("slippage must be >= 0 (a cost fraction of traded notional)")

    prev = np.empty_like(pos)
    if pos.size:
        prev[0] = init
        prev[1:] = pos[:-1]
    rate: Any = cost * BPS
    if slip is not None:
        rate = rate + slip
    if gap is None:
        out = pos * np.expm1(lr) - rate * np.abs(pos - prev)
    else:
        out = prev * np.expm1(gap) + pos * np.expm1(lr - gap) - rate * np.abs(pos - prev)
    return out if out.ndim == 1 else out.sum(axis=1)
