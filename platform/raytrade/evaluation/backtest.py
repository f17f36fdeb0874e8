"""Vectorised backtests of position series, with the same accounting as the RL environment.

Timing convention (no look-ahead): ``positions[t]`` is the target position, a fraction of
equity in ``[-1, 1]``, decided at the close of bar ``t`` from information up to bar ``t`` only,
and traded at bar ``t``'s fill (its close, or the next open); ``next_log_returns[t] = ln(close[t+1] / close[t])``.
The book is :mod:`raytrade_envs.accounting`'s (the single definition shared with ``TradingEnv``,
so backtest P&L and RL rewards agree bit for bit): units are held between trades, so weights
drift with prices, and every bar the book trades back to the target and pays for that trade;
turnover is the notional actually traded. The book starts flat: entering the first position pays
the cost of the full trade.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytrade.evaluation.metrics import summarize
from raytrade_envs.accounting import simulate

__all__ = [
    "BacktestResult",
    "backtest",
    "buy_and_hold_positions",
    "metrics_table",
    "run_backtests",
]


def _readonly(values: np.ndarray) -> np.ndarray:
    arr = np.array(values, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class BacktestResult:
    """Outcome of one backtest. Arrays are read-only copies, all of shape ``(n,)``.

    Attributes:
        name: strategy name.
        positions: target position of each bar (fraction of equity, ``[-1, 1]``).
        returns: per-bar simple net returns after costs (fractions).
        traded: per-bar notional traded (fraction of equity at the fill), drift rebalancing included.
        held: position held coming into each bar's trade (the previous target, drifted with prices).
        equity: equity after each bar, ``cumprod(1 + returns)``, from an initial equity of 1.0
            (which is not included).
        metrics: :func:`raytrade.evaluation.metrics.summarize` of ``returns``/``positions``.
    """

    name: str
    positions: np.ndarray
    returns: np.ndarray
    equity: np.ndarray
    metrics: dict[str, float]
    traded: np.ndarray
    held: np.ndarray


def buy_and_hold_positions(n: int) -> np.ndarray:
    """Positions of the buy-and-hold baseline: fully long (``1.0``) on every bar.

    Args:
        n: number of bars (>= 0).

    Returns:
        float64 array of ones, shape ``(n,)``.

    Raises:
        ValueError: ``n`` is negative or not an integer.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return np.ones(int(n), dtype=np.float64)


def backtest(
    positions: Any,
    next_log_returns: Any,
    cost_bps: float,
    periods_per_year: float,
    name: str = "strategy",
    gap_returns: Any | None = None,
    slippage: Any | None = None,
) -> BacktestResult:
    """Backtest one position series.

    Args:
        positions: shape ``(n,)``, ``n >= 1``; ``positions[t]`` in ``[-1, 1]`` is the position
            decided at the close of bar ``t`` (information up to ``t`` only) and held until the
            close of bar ``t + 1``. Negative = short.
        next_log_returns: shape ``(n,)``; ``next_log_returns[t] = ln(close[t+1] / close[t])``.
        cost_bps: transaction cost in basis points of traded notional (>= 0), charged on the trade
            from the drifted holdings to ``positions[t]``, with a flat book before the first bar.
        periods_per_year: bars per year (> 0), for the annualised metrics.
        name: strategy name carried into the result.
        gap_returns: optional ``(n,)`` ``ln(open[t+1] / close[t])``: orders fill at the next bar's open
            (the previous position earns the gap); None fills at the close of ``t``.
        slippage: optional ``(n,)`` (or scalar) extra cost as a fraction of traded notional.
        (Both as in :func:`raytrade_envs.accounting.simulate`, so results match the env.)

    Returns:
        :class:`BacktestResult` with per-bar net returns, the equity curve and the metrics.

    Raises:
        ValueError: arrays not 1-D, empty, of different lengths or non-finite; positions
            outside ``[-1, 1]``; negative or non-finite ``cost_bps``; bad ``periods_per_year``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    lr = np.asarray(next_log_returns, dtype=np.float64)
    if pos.ndim == 1 and pos.size == 0:
        raise ValueError(f"strategy {name!r}: positions must not be empty")
    try:
        book = simulate(pos, lr, cost_bps, initial_position=0.0, gap_returns=gap_returns, slippage=slippage)
        metrics = summarize(book.net, pos, periods_per_year, traded=book.turnover)
    except ValueError as exc:
        raise ValueError(f"strategy {name!r}: {exc}") from exc
    equity = np.cumprod(1.0 + book.net)
    return BacktestResult(
        name=name,
        positions=_readonly(pos),
        returns=_readonly(book.net),
        equity=_readonly(equity),
        metrics=metrics,
        traded=_readonly(book.traded),
        held=_readonly(book.held),
    )


def run_backtests(
    strategies: Mapping[str, Any],
    next_log_returns: Any,
    cost_bps: float,
    periods_per_year: float,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
) -> dict[str, BacktestResult]:
    """Backtest several position series on the same bars and costs.

    Args:
        strategies: strategy name -> positions, each of shape ``(n,)`` (see :func:`backtest`).
        next_log_returns: shape ``(n,)``, shared by every strategy.
        cost_bps: transaction cost in basis points of traded notional (>= 0).
        periods_per_year: bars per year (> 0).
        gap_returns, slippage: shared by every strategy, as in :func:`backtest`.

    Returns:
        name -> :class:`BacktestResult`, in the order of ``strategies``.

    Raises:
        ValueError: as :func:`backtest`, naming the strategy at fault.
    """
    return {
        name: backtest(pos, next_log_returns, cost_bps, periods_per_year, name=name, gap_returns=gap_returns,
                       slippage=slippage)
        for name, pos in strategies.items()
    }


# (header, metric key, scale, format) of each column of metrics_table.
_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("total_ret%", "total_return", 100.0, "{:.2f}"),
    ("annual_ret%", "annual_return", 100.0, "{:.2f}"),
    ("annual_vol%", "annual_volatility", 100.0, "{:.2f}"),
    ("sharpe", "sharpe", 1.0, "{:.3f}"),
    ("sortino", "sortino", 1.0, "{:.3f}"),
    ("calmar", "calmar", 1.0, "{:.3f}"),
    ("max_dd%", "max_drawdown", 100.0, "{:.2f}"),
    ("hit_rate%", "hit_rate", 100.0, "{:.2f}"),
    ("turnover", "turnover", 1.0, "{:.4f}"),
)


def _fmt(value: Any, scale: float, fmt: str) -> str:
    try:
        x = float(value) * scale
    except (TypeError, ValueError):
        return "n/a"
    return fmt.format(x) if math.isfinite(x) else str(x)


def metrics_table(results: Mapping[str, BacktestResult]) -> str:
    """Fixed-width plain-text table of the metrics, one row per strategy, for a terminal.

    Columns: ``total_ret%``, ``annual_ret%``, ``annual_vol%`` (percent), ``sharpe``, ``sortino``
    (annualised), ``calmar`` (annual return / max drawdown), ``max_dd%``, ``hit_rate%`` (percent) and
    ``turnover`` (notional traded per bar, fraction of equity, drift rebalancing included). Rows follow the
    order of ``results``, labelled by the mapping's keys.

    Args:
        results: name -> :class:`BacktestResult` (e.g. from :func:`run_backtests`).

    Returns:
        The table as one string, lines joined by ``\\n``, no trailing newline; only the header
        and rule when ``results`` is empty.
    """
    name_width = max([len("strategy"), *(len(str(name)) for name in results)])
    cells = [
        [_fmt(res.metrics.get(key), scale, fmt) for _, key, scale, fmt in _COLUMNS]
        for res in results.values()
    ]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, (header, _, _, _) in enumerate(_COLUMNS)
    ]
    header = "  ".join(
        ["strategy".ljust(name_width)]
        + [h.rjust(w) for (h, _, _, _), w in zip(_COLUMNS, widths, strict=True)]
    )
    lines = [header, "-" * len(header)]
    for name, row in zip(results, cells, strict=True):
        lines.append(
            "  ".join([str(name).ljust(name_width)] + [c.rjust(w) for c, w in zip(row, widths, strict=True)])
        )
    return "\n".join(lines)
