"""Portfolio baselines as target-weight series for the portfolio backtest.

Every function returns target weights ``(T, A)``: fractions of equity per asset (the rest is cash) chosen at the
close of bar ``t`` and traded at its fill, in the convention of
:func:`raytrade.evaluation.portfolio.portfolio_backtest`: a **NaN weight means "no order: keep the units"**, so
between rebalances the weights drift with prices (buy-and-hold = targets on its first bar, NaN after).

* :func:`equal_weight_buy_and_hold`: ``1/n`` of the assets tradable at the first bar, then hold.
* :func:`equal_weight_rebalanced`: ``1/n`` of the assets tradable at each rebalance bar, every ``every`` bars.
* :func:`minimum_variance`: long-only (or bounded long/short) minimum-variance weights on a trailing window, the
  baseline of FinRL (Liu et al., "FinRL: A Deep Reinforcement Learning Library for Automated Stock Trading in
  Quantitative Finance", NeurIPS 2020 Deep RL Workshop; FinRL-Tutorials' portfolio-allocation notebook solves
  PyPortfolioOpt's ``EfficientFrontier(None, cov, weight_bounds).min_volatility()`` on a trailing one-year window).
* :func:`top_k_weights`: the forecaster as a cross-sectional strategy (long the top k; or long top k, short
  bottom k).

Conventions shared by all:

* ``tradable (T, A)`` bool: the asset has a real bar at ``t`` (listed, not missing that day). An asset not
  tradable at a rebalance bar gets weight **0** there (never bought; it is not yet listed or has no bar); between
  rebalances everything is NaN (keep units), so an asset listed after a rebalance waits for the next one.
* ``past_log_returns (T, A)``: ``ln(close[t] / close[t-1])``, the return **realised at the close of bar t** (NaN
  where the asset has no bar at ``t`` or ``t - 1``; never a forward-filled price). Weights at ``t`` use rows
  ``<= t`` only, never ``next_log_returns[t] = ln(close[t+1] / close[t])``: every baseline is causal.
* Rebalance bars are ``first, first + every, first + 2 every, ...`` where ``first`` is the first bar with at
  least one tradable asset; rows before ``first`` are 0 (cash).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError

__all__ = [
    "equal_weight_buy_and_hold",
    "equal_weight_rebalanced",
    "minimum_variance",
    "rebalance_bars",
    "top_k_weights",
]

#: Tolerance of the checks on an optimiser's output (budget and bounds), in weight units (fractions).
SOLVER_TOLERANCE: float = 1e-6


# --------------------------------------------------------------------------- inputs


def _tradable(tradable: Any) -> np.ndarray:
    mask = np.asarray(tradable)
    if mask.ndim != 2:
        raise ValueError(f"tradable must be a 2-D (T, A) boolean array, got shape {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"tradable must be boolean, got dtype {mask.dtype}")
    return mask


def _returns(past_log_returns: Any, mask: np.ndarray, symbols: Sequence[str] | None, index: Any) -> np.ndarray:
    r = np.asarray(past_log_returns, dtype=np.float64)
    if r.shape != mask.shape:
        raise ValueError(f"past_log_returns must have the shape of tradable {mask.shape}, got {r.shape}")
    bad = np.isinf(r)
    if bad.any():
        t, a = (int(i) for i in np.argwhere(bad)[0])
        raise DataValidationError("finite_return", f"past log return is {r[t, a]} (a zero or infinite price?)",
                                  column="log_return", symbol=_symbol(symbols, a), timestamp=_when(index, t),
                                  count=int(bad.sum()))
    return r


def _symbol(symbols: Sequence[str] | None, a: int) -> str:
    return str(symbols[a]) if symbols is not None else f"asset {a}"


def _when(index: Any, t: int) -> Any:
    return index[t] if index is not None else f"bar {t}"


def _positive_int(value: int, field: str, low: int = 1) -> int:
    if int(value) != value or value < low:
        raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")
    return int(value)


def _max_weight(value: float) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ConfigError(f"portfolio.max_weight must be in (0, 1], got {value!r}")
    return float(value)


def rebalance_bars(tradable: Any, every: int) -> np.ndarray:
    """Indices of the rebalance bars: ``first, first + every, ...`` (``first`` = first bar with a tradable asset).

    Args:
        tradable: ``(T, A)`` bool mask of bars the asset trades on.
        every: bars between rebalances (>= 1).

    Raises:
        ConfigError: ``every`` < 1.
        InsufficientDataError: no asset is tradable at any bar.
    """
    mask = _tradable(tradable)
    every = _positive_int(every, "portfolio.rebalance_bars")
    any_tradable = mask.any(axis=1)
    if not any_tradable.any():
        raise InsufficientDataError(f"no asset is tradable at any of the {mask.shape[0]} bars: nothing to hold")
    first = int(np.argmax(any_tradable))
    return np.arange(first, mask.shape[0], every)


def _equal(row: np.ndarray, cap: float = 1.0) -> np.ndarray:
    """``min(1/n, cap)`` on the ``n`` True entries of ``row``, 0 elsewhere."""
    n = int(row.sum())
    return np.where(row, min(1.0 / n, cap), 0.0) if n else np.zeros(row.shape)


def _scheduled(mask: np.ndarray, bars: np.ndarray) -> np.ndarray:
    out = np.full(mask.shape, np.nan)
    out[: bars[0]] = 0.0
    return out


# --------------------------------------------------------------------------- equal weight


def equal_weight_buy_and_hold(tradable: Any) -> np.ndarray:
    """Equal-weight buy-and-hold: ``1/n`` of equity in each of the ``n`` assets tradable at the first bar that has
    any, then no order (NaN) ever after; assets listed later are never bought.

    Args:
        tradable: ``(T, A)`` bool.

    Returns:
        ``(T, A)`` weights: 0 before the first tradable bar, ``1/n`` / 0 on it, NaN after.

    Raises:
        InsufficientDataError: no asset is tradable at any bar.
    """
    mask = _tradable(tradable)
    first = rebalance_bars(mask, max(mask.shape[0], 1))[0]
    out = _scheduled(mask, np.array([first]))
    out[first] = _equal(mask[first])
    return out


def equal_weight_rebalanced(tradable: Any, every: int) -> np.ndarray:
    """Equal weight rebalanced every ``every`` bars: ``1/n`` of equity in each of the ``n`` assets tradable at a
    rebalance bar (0 in the others), NaN (weights drift) between rebalances (DeMiguel, Garlappi, Uppal, "Optimal
    Versus Naive Diversification", RFS 2009, the 1/N rule).

    Args:
        tradable: ``(T, A)`` bool.
        every: bars between rebalances (>= 1; ``portfolio.rebalance_bars``); 1 rebalances every bar.

    Raises:
        ConfigError: ``every`` < 1. InsufficientDataError: no asset is tradable at any bar.
    """
    mask = _tradable(tradable)
    bars = rebalance_bars(mask, every)
    out = _scheduled(mask, bars)
    for t in bars:
        out[t] = _equal(mask[t])
    return out


# --------------------------------------------------------------------------- minimum variance


def _min_variance_weights(window_returns: np.ndarray, lower: float, upper: float, max_gross: float | None,
                          where: str) -> np.ndarray:
    """PyPortfolioOpt ``min_volatility`` on the Ledoit-Wolf covariance of ``window_returns (W, n)``."""
    import cvxpy as cp
    from pypfopt import EfficientFrontier
    from pypfopt.exceptions import OptimizationError
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(window_returns)
    scale = float(np.mean(np.diag(cov)))
    if not scale > 0.0:
        raise InsufficientDataError(f"minimum variance at {where}: the window's returns are all constant "
                                    "(zero variance), no covariance to minimise")
    # Scaling the covariance leaves the minimiser unchanged; an average variance of 1 keeps the solver's
    # absolute tolerances meaningful for daily returns (variances ~1e-4).
    ef = EfficientFrontier(None, cov / scale, weight_bounds=(lower, upper), solver="CLARABEL")
    if max_gross is not None and lower < 0.0:
        ef.add_constraint(lambda w: cp.norm1(w) <= max_gross)
    try:
        ef.min_volatility()
    except (OptimizationError, ValueError) as exc:
        raise InsufficientDataError(f"minimum variance at {where}: PyPortfolioOpt's min_volatility failed "
                                    f"({exc}); the window's covariance or the bounds admit no solution") from exc
    w = np.asarray(ef.weights, dtype=np.float64)
    if (not np.all(np.isfinite(w)) or abs(w.sum() - 1.0) > SOLVER_TOLERANCE
            or w.min() < lower - SOLVER_TOLERANCE or w.max() > upper + SOLVER_TOLERANCE):
        raise InsufficientDataError(f"minimum variance at {where}: the solver returned weights outside the "
                                    f"budget (sum {w.sum()}) or bounds [{lower}, {upper}]")
    return np.clip(w, lower, upper)


def minimum_variance(
    past_log_returns: Any, tradable: Any, window: int, every: int, long_only: bool = True, max_weight: float = 1.0,
    *, max_gross: float | None = None, symbols: Sequence[str] | None = None, index: Any = None,
) -> np.ndarray:
    """Minimum-variance weights on a trailing window, rebalanced every ``every`` bars (FinRL's baseline).

    At each rebalance bar ``t`` the assets **eligible** are those tradable at ``t`` with ``window`` finite past
    log returns in rows ``t - window + 1 .. t`` (a full window; an asset that missed a day waits ``window`` bars).
    Their covariance is the Ledoit-Wolf shrinkage estimate (Ledoit & Wolf, "A well-conditioned estimator for
    large-dimensional covariance matrices", JMVA 2004) from scikit-learn's ``sklearn.covariance.ledoit_wolf``,
    the very function PyPortfolioOpt's ``CovarianceShrinkage.ledoit_wolf()`` wraps; it is called directly because
    that wrapper silently replaces NaN returns by 0 and annualises with a fixed frequency, neither wanted here
    (the window has no NaN; the minimiser does not depend on the covariance's scale). Shrinkage keeps the
    estimate well conditioned when ``window`` is not much longer than the number of assets. The weights are
    PyPortfolioOpt's ``EfficientFrontier(None, cov, weight_bounds=(lo, max_weight)).min_volatility()``
    (CLARABEL solver): ``min w' S w`` subject to ``sum w = 1``, ``lo <= w <= max_weight`` with ``lo = 0``
    (long-only) or ``-max_weight``. FinRL-Tutorials' portfolio-allocation baseline solves the same problem on the
    sample covariance of the trailing 252 days.

    Special cases (documented choices): before any tradable asset has a full window the weights are equal,
    ``min(1/n, max_weight)`` over the ``n`` tradable assets; with one eligible asset, or ``n * max_weight <= 1``
    (the budget cannot be met), each eligible asset gets ``max_weight`` (``<= 1``) and the rest is cash.

    Args:
        past_log_returns: ``(T, A)`` ``ln(close[t] / close[t-1])``, NaN where unknown.
        tradable: ``(T, A)`` bool.
        window: trailing bars of returns (> 1; ``portfolio.min_variance_window``).
        every: bars between rebalances (>= 1; ``portfolio.rebalance_bars``).
        long_only: weights in ``[0, max_weight]``; False: in ``[-max_weight, max_weight]``, still summing to 1.
        max_weight: cap on ``|w|`` of each asset, fraction of equity in (0, 1].
        max_gross: long/short only: also ``sum |w| <= max_gross`` (e.g. ``portfolio.max_gross``; >= 1, as the
            weights sum to 1; long-only weights have gross 1 anyway).
        symbols, index: asset names ``(A,)`` and bar timestamps ``(T,)``, used only to name them in errors.

    Returns:
        ``(T, A)`` weights: 0 before the first tradable bar, the targets on rebalance bars (0 for assets not
        eligible), NaN in between.

    Raises:
        ConfigError: ``window`` < 2, ``every`` < 1, ``max_weight`` outside (0, 1], ``max_gross`` < 1.
        DataValidationError: an infinite return (names the symbol and bar).
        InsufficientDataError: no tradable bar; or the optimiser fails at a rebalance bar (names the bar and the
            assets), or the window's returns are all constant.
    """
    mask = _tradable(tradable)
    r = _returns(past_log_returns, mask, symbols, index)
    window = _positive_int(window, "portfolio.min_variance_window", low=2)
    cap = _max_weight(max_weight)
    if max_gross is not None and not max_gross >= 1.0:
        raise ConfigError(f"portfolio.max_gross must be >= 1 for the minimum-variance baseline (fully invested, "
                          f"sum w = 1), got {max_gross!r}")
    lower = 0.0 if long_only else -cap
    bars = rebalance_bars(mask, every)
    out = _scheduled(mask, bars)
    finite = np.isfinite(r)
    for t in bars:
        row = np.zeros(mask.shape[1])
        if t + 1 >= window:
            eligible = mask[t] & finite[t + 1 - window: t + 1].all(axis=0)
        else:
            eligible = np.zeros(mask.shape[1], dtype=bool)
        n = int(eligible.sum())
        if n == 0:
            row = _equal(mask[t], cap)
        elif n == 1 or n * cap <= 1.0:
            row[eligible] = cap
        else:
            cols = np.flatnonzero(eligible)
            where = f"{_when(index, int(t))} (assets {[_symbol(symbols, int(a)) for a in cols]})"
            row[cols] = _min_variance_weights(r[t + 1 - window: t + 1][:, cols], lower, cap, max_gross, where)
        out[t] = row
    return out


# --------------------------------------------------------------------------- forecaster as a strategy


def top_k_weights(scores: Any, tradable: Any, k: int, long_short: bool = False) -> np.ndarray:
    """The forecaster as a cross-sectional strategy, rebalanced every bar.

    At each bar the candidates are the tradable assets with a finite score (a NaN score or a non-tradable asset
    is never picked). Long-only: ``+1/k`` on each of the ``k`` highest scores (gross 1, net 1). Long/short:
    ``+1/(2k)`` on the ``k`` highest and ``-1/(2k)`` on the ``k`` lowest (gross 1, net 0), the top-minus-bottom
    portfolio of cross-sectional forecast evaluation (e.g. Qlib's long-short backtest).

    Fewer candidates (documented choice): each position keeps its size (``1/k``, ``1/(2k)``) and the rest stays
    in cash: long-only holds all ``m < k`` candidates; long/short holds ``floor(m / 2)`` on each side when
    ``m < 2k`` (a lone candidate is not traded). A bar without candidates is all cash (0). Ties are broken by
    asset order: of equal scores the lower column index ranks higher (one ranking for both sides, so the long and
    short legs never share an asset).

    Args:
        scores: ``(T, A)`` forecasts known at the close of ``t`` (e.g. predicted next return); NaN = no forecast.
        tradable: ``(T, A)`` bool.
        k: names per side (>= 1; ``portfolio.top_k``).
        long_short: also short the bottom ``k``.

    Returns:
        ``(T, A)`` target weights (no NaN).

    Raises:
        ConfigError: ``k`` < 1.
    """
    mask = _tradable(tradable)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != mask.shape:
        raise ValueError(f"scores must have the shape of tradable {mask.shape}, got {s.shape}")
    k = _positive_int(k, "portfolio.top_k")
    candidate = mask & np.isfinite(s)
    out = np.zeros(s.shape)
    for t in range(s.shape[0]):
        cols = np.flatnonzero(candidate[t])
        if not len(cols):
            continue
        ranked = cols[np.argsort(-s[t, cols], kind="stable")]  # best first; ties keep column order
        if long_short:
            side = min(k, len(cols) // 2)
            if side:
                out[t, ranked[:side]] = 0.5 / k
                out[t, ranked[len(ranked) - side:]] = -0.5 / k  # disjoint from the top: side <= m // 2
        else:
            out[t, ranked[:k]] = 1.0 / k
    return out
