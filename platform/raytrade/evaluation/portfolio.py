"""Backtests of target-weight portfolios over a universe, with the book of :mod:`raytrade_envs.accounting`.

Timing convention (no look-ahead), as :mod:`raytrade.evaluation.backtest` for one asset: ``weights[t]`` ``(A,)``
are the target weights (fractions of equity; cash is ``1 - sum w``) decided at the close of bar ``t`` from
information up to ``t`` of every asset, traded at bar ``t``'s fill (its close, or the next open with
``gap_returns``); ``next_log_returns[t, a] = ln(close[t+1] / close[t])`` of asset ``a``. The book starts flat
(all cash), holds units between trades (weights drift), trades every asset to its target at every fill and pays
``cost_bps * 1e-4 + slippage`` per unit of notional traded in each asset.

Orders that cannot fill: ``NaN`` in ``weights[t, a]`` means "no order for this asset at this bar" and
``tradable[t, a] == False`` means "this asset cannot trade at this bar" (no bar yet, a missing day); both keep
the units held in that asset (its effective target is its drifted weight) while the other assets trade. That is
how buy-and-hold (targets on the first bar, NaN after) and interval rebalancing (targets every ``k`` bars, NaN in
between) are written, and how an asset that lists late stays out of the book until it trades.

Per-asset attribution (:attr:`PortfolioResult.contributions`): bar ``t``'s return is split exactly as the book
compounds it (module docstring of :mod:`raytrade_envs.accounting`)::

    pnl[t, a] = held[t, a] * G[t, a] + (1 + g[t] - costs[t]) * weights[t, a] * I[t, a]
    returns[t] = sum_a pnl[t, a] - costs[t]

with ``G = expm1(gap_return)``, ``I = expm1(log_return - gap_return)``, ``g[t] = sum_a held[t, a] * G[t, a]`` (the
old book's gap return) and ``1 + g - costs`` the equity after the trade, all as fractions of the equity at the
close of ``t`` (the bar's start). ``contributions[a] = sum_t pnl[t, a]`` (arithmetic sum over bars) and
``metrics["costs_paid"] = sum_t costs[t]``, so ``sum_a contributions[a] - costs_paid = sum_t returns[t]``: the
arithmetic sum of the bar returns (not the compounded total return, which adds the cross terms of compounding).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raytrade.evaluation.backtest import _readonly, metrics_table
from raytrade.evaluation.metrics import summarize
from raytrade_envs.accounting import POSITION_TOLERANCE, simulate

__all__ = [
    "PortfolioResult",
    "book_step",
    "portfolio_backtest",
    "portfolio_metrics_table",
    "run_portfolio_backtests",
]


@dataclass(frozen=True)
class PortfolioResult:
    """Outcome of one portfolio backtest over ``T`` bars and ``A`` assets. Arrays are read-only float64 copies.

    Attributes:
        name: strategy name.
        symbols: the ``A`` symbols, in the order of the arrays' last axis.
        weights: ``(T, A)`` effective target weights of each bar's trade (fractions of the equity after costs): the
            target where the order filled, the drifted holding kept where it did not (NaN target, not tradable).
        held: ``(T, A)`` weights held coming into each bar's trade (the previous targets, drifted with prices).
        returns: ``(T,)`` simple net returns after costs (fractions).
        equity: ``(T,)`` equity after each bar, ``cumprod(1 + returns)`` from 1.0 (not included).
        traded: ``(T,)`` notional traded, summed over assets, fraction of the equity at the fill.
        costs: ``(T,)`` costs paid, fraction of the equity at the close of ``t`` (the bar's start).
        gross: ``(T,)`` gross exposure ``sum_a |weights|`` of the effective targets (fraction of equity).
        net: ``(T,)`` net exposure ``sum_a weights`` of the effective targets (cash is ``1 - net``).
        asset_pnl: ``(T, A)`` each asset's share of each bar's return, fraction of the equity at the bar's start
            (module docstring: ``returns = asset_pnl.sum(axis=1) - costs``).
        contributions: symbol -> ``sum_t asset_pnl[t, a]`` (module docstring).
        metrics: :func:`raytrade.evaluation.metrics.summarize` of ``returns`` with ``positions = gross`` (so
            ``hit_rate`` scores the bars in the market) and ``traded`` (``turnover`` = mean notional traded per
            bar), plus ``avg_gross_exposure``, ``avg_net_exposure`` (means of ``gross``/``net``) and
            ``costs_paid`` (``sum(costs)``); plain floats, ready for MLflow.
        last_weights: symbol -> effective target weight of the last bar (JSON-able), ``report.json``'s ``weights``.
    """

    name: str
    symbols: tuple[str, ...]
    weights: np.ndarray
    held: np.ndarray
    returns: np.ndarray
    equity: np.ndarray
    traded: np.ndarray
    costs: np.ndarray
    gross: np.ndarray
    net: np.ndarray
    asset_pnl: np.ndarray
    contributions: dict[str, float]
    metrics: dict[str, float]
    last_weights: dict[str, float]

    def report(self) -> dict[str, Any]:
        """``report.json``'s entry of the strategy: ``metrics`` plus ``weights`` (:attr:`last_weights`) and
        ``contributions``, as fresh plain dicts."""
        return {**self.metrics, "weights": dict(self.last_weights), "contributions": dict(self.contributions)}


def _symbols(symbols: Sequence[str], n_assets: int, name: str) -> tuple[str, ...]:
    out = tuple(symbols) if not isinstance(symbols, str) else (symbols,)
    if any(not isinstance(s, str) or not s for s in out):
        raise ValueError(f"strategy {name!r}: symbols must be non-empty strings, got {list(out)!r}")
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"strategy {name!r}: symbols must be unique, {dup} repeat")
    if len(out) != n_assets:
        raise ValueError(f"strategy {name!r}: {len(out)} symbols for {n_assets} weight columns")
    return out


def _first_bad(bad: np.ndarray, arr: np.ndarray, what: str, rule: str, name: str, symbols: tuple[str, ...],
               timestamps: Sequence[Any] | None) -> None:
    """Raise ValueError for the first True of ``bad`` ``(T, A)``, naming the strategy, bar (and timestamp), symbol."""
    if not bad.any():
        return
    t, a = (int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    when = f"bar {t}" + (f" ({timestamps[t]})" if timestamps is not None else "")
    raise ValueError(f"strategy {name!r}: {what} must be {rule}; {what}[{t}, {a}] = {float(arr[t, a])!r} at {when}, "
                     f"symbol {symbols[a]!r}")


def _panel(values: Any, what: str, shape: tuple[int, int], name: str, symbols: tuple[str, ...],
           timestamps: Sequence[Any] | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"strategy {name!r}: {what} must have shape {shape} (bars, assets), got {arr.shape}")
    _first_bad(~np.isfinite(arr), arr, what, "finite", name, symbols, timestamps)
    return arr


def portfolio_backtest(
    weights: Any,
    next_log_returns: Any,
    cost_bps: float,
    periods_per_year: float,
    *,
    symbols: Sequence[str],
    name: str = "strategy",
    tradable: Any | None = None,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
    timestamps: Sequence[Any] | None = None,
) -> PortfolioResult:
    """Backtest one series of target weights over a universe.

    Args:
        weights: ``(T, A)``, ``T >= 1``; ``weights[t, a]`` in ``[-1, 1]`` is asset ``a``'s target weight decided at
            the close of bar ``t`` (fraction of equity; e.g. from :func:`raytrade_envs.actions.project_weights`),
            or NaN for "no order: keep the units" (module docstring).
        next_log_returns: ``(T, A)`` ``ln(close[t+1] / close[t])``, finite (0 where an asset has no bar; mark
            those bars not ``tradable``).
        cost_bps: transaction cost in basis points of traded notional (>= 0), in every asset.
        periods_per_year: bars per year (> 0), for the annualised metrics.
        symbols: the ``A`` symbols (unique), in column order.
        name: strategy name carried into the result and every error message.
        tradable: optional ``(T, A)`` bool; False where the asset cannot trade at bar ``t`` (treated as NaN).
        gap_returns: optional ``(T, A)`` ``ln(open[t+1] / close[t])``: fills at the next open; None fills at the
            close of ``t``.
        slippage: optional scalar or ``(T, A)`` extra cost as a fraction of traded notional (>= 0).
        timestamps: optional ``(T,)`` labels of the bars, only to name the bar in error messages.

    Returns:
        :class:`PortfolioResult`; the book is :func:`raytrade_envs.accounting.simulate`'s (bit for bit).

    Raises:
        ValueError: naming the strategy (and the bar, symbol and value where there is one) for: weights not 2-D
            or empty, a symbol count that differs from ``A``, repeated symbols, an infinite weight or one outside
            ``[-1, 1]`` (tolerance 1e-9), arrays of another shape, non-finite returns/gaps/slippage, a ``tradable``
            that is not bool, a bad ``cost_bps``/``periods_per_year`` or a cost rate that would exceed the trade.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"strategy {name!r}: weights must have shape (T, A) with T, A >= 1, got {w.shape}")
    syms = _symbols(symbols, w.shape[1], name)
    if timestamps is not None and len(timestamps) != w.shape[0]:
        raise ValueError(f"strategy {name!r}: {len(timestamps)} timestamps for {w.shape[0]} bars")
    order = ~np.isnan(w)
    _first_bad(np.abs(np.where(order, w, 0.0)) > 1.0 + POSITION_TOLERANCE, w, "weights",
               "in [-1, 1] or NaN (no order)", name, syms, timestamps)
    lr = _panel(next_log_returns, "next_log_returns", w.shape, name, syms, timestamps)
    gap = None if gap_returns is None else _panel(gap_returns, "gap_returns", w.shape, name, syms, timestamps)
    if slippage is not None and np.ndim(slippage) != 0:
        slip = _panel(slippage, "slippage", w.shape, name, syms, timestamps)
        _first_bad(slip < 0.0, slip, "slippage", ">= 0", name, syms, timestamps)
    if tradable is not None:
        ok = np.asarray(tradable)
        if ok.dtype != np.bool_ or ok.shape != w.shape:
            raise ValueError(f"strategy {name!r}: tradable must be a bool array of shape {w.shape}, "
                             f"got {ok.dtype} {ok.shape}")
        order = order & ok
    try:
        book = simulate(np.where(order, w, 0.0), lr, cost_bps, initial_position=0.0, gap_returns=gap,
                        slippage=slippage, tradable=None if order.all() else order)
        gross = np.abs(book.target).sum(axis=1)
        metrics = summarize(book.net, gross, periods_per_year, traded=book.turnover)
    except ValueError as exc:
        raise ValueError(f"strategy {name!r}: {exc}") from exc
    em_gap = np.zeros_like(lr) if gap is None else np.expm1(gap)
    em_intra = np.expm1(lr if gap is None else lr - gap)
    gap_part = book.held * em_gap
    after_trade = 1.0 + gap_part.sum(axis=1) - book.cost  # (1 + g)(1 - c): equity after the trade, per start equity
    asset_pnl = gap_part + after_trade[:, None] * book.target * em_intra
    net_exposure = book.target.sum(axis=1)
    metrics.update(avg_gross_exposure=float(np.mean(gross)), avg_net_exposure=float(np.mean(net_exposure)),
                   costs_paid=float(np.sum(book.cost)))
    return PortfolioResult(
        name=name,
        symbols=syms,
        weights=_readonly(book.target),
        held=_readonly(book.held),
        returns=_readonly(book.net),
        equity=_readonly(np.cumprod(1.0 + book.net)),
        traded=_readonly(book.turnover),
        costs=_readonly(book.cost),
        gross=_readonly(gross),
        net=_readonly(net_exposure),
        asset_pnl=_readonly(asset_pnl),
        contributions={s: float(v) for s, v in zip(syms, asset_pnl.sum(axis=0), strict=True)},
        metrics=metrics,
        last_weights={s: float(v) for s, v in zip(syms, book.target[-1], strict=True)},
    )


def run_portfolio_backtests(
    strategies: Mapping[str, Any],
    next_log_returns: Any,
    cost_bps: float,
    periods_per_year: float,
    *,
    symbols: Sequence[str],
    tradable: Any | None = None,
    gap_returns: Any | None = None,
    slippage: Any | None = None,
    timestamps: Sequence[Any] | None = None,
) -> dict[str, PortfolioResult]:
    """Backtest several weight series on the same universe, bars and costs.

    Args:
        strategies: strategy name -> ``(T, A)`` weights (NaN = no order), see :func:`portfolio_backtest`.
        next_log_returns, cost_bps, periods_per_year, symbols, tradable, gap_returns, slippage, timestamps:
            shared by every strategy, as in :func:`portfolio_backtest`.

    Returns:
        name -> :class:`PortfolioResult`, in the order of ``strategies``.

    Raises:
        ValueError: as :func:`portfolio_backtest`, naming the strategy at fault.
    """
    return {
        name: portfolio_backtest(w, next_log_returns, cost_bps, periods_per_year, symbols=symbols, name=name,
                                 tradable=tradable, gap_returns=gap_returns, slippage=slippage, timestamps=timestamps)
        for name, w in strategies.items()
    }


# (header, metric key, scale, format) of the columns portfolio_metrics_table adds to metrics_table's.
_EXTRA_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("gross%", "avg_gross_exposure", 100.0, "{:.1f}"),
    ("net%", "avg_net_exposure", 100.0, "{:.1f}"),
    ("costs%", "costs_paid", 100.0, "{:.2f}"),
)


def _cell(value: Any, scale: float, fmt: str) -> str:
    try:
        x = float(value) * scale
    except (TypeError, ValueError):
        return "n/a"
    return fmt.format(x) if math.isfinite(x) else str(x)


def portfolio_metrics_table(results: Mapping[str, PortfolioResult]) -> str:
    """:func:`raytrade.evaluation.backtest.metrics_table`'s table with three more columns on the right.

    The added columns: ``gross%`` and ``net%`` (mean gross and net exposure of the targets, percent of equity) and
    ``costs%`` (``costs_paid``: the sum over bars of the costs, percent of the equity at each bar's start).

    Args:
        results: name -> :class:`PortfolioResult` (e.g. from :func:`run_portfolio_backtests`).

    Returns:
        The table as one string, lines joined by ``\\n``, no trailing newline; header and rule only when empty.
    """
    base = metrics_table(results).split("\n")
    cells = [[_cell(res.metrics.get(key), scale, fmt) for _, key, scale, fmt in _EXTRA_COLUMNS]
             for res in results.values()]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, (h, _, _, _) in enumerate(_EXTRA_COLUMNS)]
    header = base[0] + "  " + "  ".join(h.rjust(wd) for (h, _, _, _), wd in zip(_EXTRA_COLUMNS, widths, strict=True))
    rows = [line + "  " + "  ".join(c.rjust(wd) for c, wd in zip(row, widths, strict=True))
            for line, row in zip(base[2:], cells, strict=True)]
    return "\n".join([header, "-" * len(header), *rows])


def book_step(next_log_returns: np.ndarray, cost_bps: float, *, gap_returns: np.ndarray | None = None,
              slippage: np.ndarray | None = None, tradable: np.ndarray | None = None):
    """The book of one bar over ``(T, A)`` market arrays, ``(t, held (A,), target (A,)) -> (simple net return of
    bar t after costs, weights held after it)``: :func:`raytrade_envs.accounting.simulate` on row ``t`` (the step
    :func:`raytrade.rl.portfolio_risk.risk_limit_weights` walks)."""
    def step(t: int, held: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        book = simulate(target[None], next_log_returns[t][None], cost_bps, initial_position=held,
                        gap_returns=None if gap_returns is None else gap_returns[t][None],
                        slippage=None if slippage is None else slippage[t][None],
                        tradable=None if tradable is None else tradable[t][None])
        return float(book.net[0]), book.held_end
    return step
