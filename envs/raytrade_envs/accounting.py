"""Per-bar portfolio arithmetic shared by the RL environment and the backtester.

This module is the single definition of how a position held over one bar turns
into a portfolio return. Every consumer (``TradingEnv``, the backtester, reports)
must go through these functions so that training rewards and backtest P&L agree
to floating-point precision.

Conventions
-----------
* **Position**: fraction of equity held in the asset, in ``[-1, 1]``; negative
  means short. A position chosen at the close of bar ``t`` is held until the close
  of bar ``t + 1``.
* **Log return**: ``log_return[t] = ln(close[t + 1] / close[t])`` (natural log,
  a dimensionless fraction, *not* percent).
* **Cost**: ``cost_bps`` is charged in basis points (1 bp = 1e-4) of the traded
  notional, i.e. of ``abs(new_position - prev_position)`` times equity.
* **Net return**: the *simple* (not log) return of portfolio equity over the bar,
  as a fraction: equity_{t+1} = equity_t * (1 + net).

    net = new_position * (exp(log_return) - 1)
          - cost_bps * 1e-4 * abs(new_position - prev_position)

``exp(x) - 1`` is evaluated with ``expm1`` for accuracy on small returns.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BPS", "POSITION_TOLERANCE", "bar_net_return", "net_returns"]

#: One basis point as a fraction.
BPS: float = 1e-4

#: Absolute tolerance when checking that positions lie in [-1, 1].
POSITION_TOLERANCE: float = 1e-9


def bar_net_return(
    prev_position: float,
    new_position: float,
    log_return: float,
    cost_bps: float,
) -> float:
    """Simple net return of the portfolio over one bar.

    Args:
        prev_position: position (fraction of equity, in [-1, 1]) held before
            rebalancing at the close of bar ``t``.
        new_position: position (fraction of equity, in [-1, 1]; negative = short)
            chosen at the close of bar ``t`` and held to the close of bar ``t + 1``.
        log_return: natural log return of the asset over the holding bar,
            ``ln(close[t + 1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional
            (``10.0`` means 0.1 % of ``abs(new_position - prev_position)``).

    Returns:
        The simple net return as a fraction of equity:
        ``new_position * (exp(log_return) - 1) - cost_bps * 1e-4 * abs(new_position - prev_position)``.
        ``log1p`` of it is the portfolio's net log return.

    This is the hot-path scalar version and performs no validation; use
    :func:`net_returns` for validated, vectorised series.
    """
    return new_position * math.expm1(log_return) - cost_bps * BPS * abs(
        new_position - prev_position
    )


def net_returns(
    positions: np.ndarray,
    log_returns: np.ndarray,
    cost_bps: float,
    initial_position: float = 0.0,
) -> np.ndarray:
    """Vectorised :func:`bar_net_return` over a series of bars.

    Args:
        positions: shape ``(T,)``; ``positions[t]`` is the position (fraction of
            equity in [-1, 1]) chosen at the close of bar ``t`` and held over
            ``log_returns[t]``.
        log_returns: shape ``(T,)``; ``log_returns[t] = ln(close[t + 1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (>= 0).
        initial_position: position held before the first bar (the
            ``prev_position`` of bar 0), in [-1, 1].

    Returns:
        float64 array of shape ``(T,)`` with the simple net return of each bar
        (fractions); equal to applying :func:`bar_net_return` step by step.

    Raises:
        ValueError: if the inputs are not 1-D, their shapes differ, any value is
            non-finite, a position lies outside [-1, 1] (tolerance 1e-9), or
            ``cost_bps`` is negative or non-finite.
    """
    pos = np.asarray(positions, dtype=np.float64)
    lr = np.asarray(log_returns, dtype=np.float64)
    if pos.ndim != 1:
        raise ValueError(
            f"positions must be 1-D with shape (T,), got shape {pos.shape}"
        )
    if lr.ndim != 1:
        raise ValueError(
            f"log_returns must be 1-D with shape (T,), got shape {lr.shape}"
        )
    if pos.shape != lr.shape:
        raise ValueError(
            f"positions and log_returns must have the same shape, got {pos.shape} and {lr.shape}"
        )
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contains non-finite values (NaN or inf)")
    if not np.all(np.isfinite(lr)):
        raise ValueError("log_returns contains non-finite values (NaN or inf)")
    cost = float(cost_bps)
    if not math.isfinite(cost) or cost < 0.0:
        raise ValueError(f"cost_bps must be a finite number >= 0, got {cost_bps!r}")
    init = float(initial_position)
    if not math.isfinite(init) or abs(init) > 1.0 + POSITION_TOLERANCE:
        raise ValueError(
            f"initial_position must be finite and in [-1, 1], got {initial_position!r}"
        )
    if pos.size and np.max(np.abs(pos)) > 1.0 + POSITION_TOLERANCE:
        bad = int(np.argmax(np.abs(pos) > 1.0 + POSITION_TOLERANCE))
        raise ValueError(
            f"positions must lie in [-1, 1]; positions[{bad}] = {pos[bad]!r}"
        )

    prev = np.empty_like(pos)
    if pos.size:
        prev[0] = init
        prev[1:] = pos[:-1]
    return pos * np.expm1(lr) - cost * BPS * np.abs(pos - prev)
