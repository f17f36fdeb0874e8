"""The risk layer over portfolio weights, and FinRL's turbulence rule.

* :func:`turbulence_index`: the Mahalanobis distance of today's returns from a trailing window (Kritzman & Li,
  "Skulls, Financial Turbulence, and Risk Management", Financial Analysts Journal 66(5), 2010), as FinRL uses it
  (Yang, Liu, Zhong, Walid, "Deep Reinforcement Learning for Automated Stock Trading: An Ensemble Strategy",
  ICAIF 2020, eq. 5; FinRL's ``FeatureEngineer.calculate_turbulence``).
* :func:`turbulence_threshold`: the in-sample quantile above which the rule goes to cash.
* :func:`risk_limited_weights`: one bar of the risk layer (pure; the backtest and Serve both call it).
* :func:`risk_limit_weights`: the risk layer walked over a weight series, drawdown measured on the realised
  equity of the limited book (the portfolio analogue of :func:`raytrade.rl.ensemble.risk_limit`).

Conventions: weights are fractions of equity per asset (cash = ``1 - sum w``), chosen at the close of bar ``t``;
``past_log_returns[t] = ln(close[t] / close[t-1])`` is known at the close of ``t``; drawdown is
``1 - equity / running peak`` (a fraction); turbulence is a squared distance (dimensionless).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError
from raytrade_envs.actions import project_weights

__all__ = [
    "StepFn",
    "risk_limit_weights",
    "risk_limited_weights",
    "turbulence_index",
    "turbulence_threshold",
]

#: ``step(t, held (A,), target (A,)) -> (simple net return of bar t after costs, weights held after it (A,))``.
StepFn = Callable[[int, np.ndarray, np.ndarray], tuple[float, np.ndarray]]


# --------------------------------------------------------------------------- turbulence


def turbulence_index(past_log_returns: Any, window: int, *, symbols: Sequence[str] | None = None,
                     index: Any = None) -> np.ndarray:
    """FinRL's turbulence index ``d_t = (y_t - mu) Sigma^+ (y_t - mu)'`` per bar.

    ``y_t`` is the row ``past_log_returns[t]`` (returns realised at the close of ``t``); ``mu`` and ``Sigma`` are
    the mean and sample covariance (``ddof = 1``, as pandas' ``DataFrame.cov`` in FinRL) of the ``window`` rows
    **before** ``t`` (``t - window .. t - 1``), and ``Sigma^+`` its Moore-Penrose pseudo-inverse
    (``np.linalg.pinv``, as FinRL). At each ``t`` only the assets with finite returns in all ``window + 1`` rows
    ``t - window .. t`` enter (an asset not yet listed, or that missed a bar, is left out there); ``d_t`` is NaN
    until some asset has a full window (the first ``window`` bars at least). Differences from FinRL's code, by
    choice: log instead of simple returns (the brief's convention; nearly equal on daily bars), and no zeroing of
    the first two positive values FinRL applies as a warm-up.

    Args:
        past_log_returns: ``(T, A)`` ``ln(close[t] / close[t-1])``, NaN where unknown.
        window: trailing bars (> 1; ``portfolio.turbulence_window``, FinRL: 252 trading days).
        symbols, index: asset names ``(A,)`` and bar timestamps ``(T,)``, used only to name them in errors.

    Returns:
        ``(T,)`` float64, ``>= 0`` where defined, NaN before.

    Raises:
        ConfigError: ``window`` < 2. DataValidationError: an infinite return (names the symbol and bar).
    """
    r = np.asarray(past_log_returns, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"past_log_returns must be 2-D (T, A), got shape {r.shape}")
    if int(window) != window or window < 2:
        raise ConfigError(f"portfolio.turbulence_window must be an integer >= 2, got {window!r}")
    window = int(window)
    bad = np.isinf(r)
    if bad.any():
        t, a = (int(i) for i in np.argwhere(bad)[0])
        raise DataValidationError("finite_return", f"past log return is {r[t, a]} (a zero or infinite price?)",
                                  column="log_return", symbol=str(symbols[a]) if symbols is not None else None,
                                  timestamp=index[t] if index is not None else f"bar {t}", count=int(bad.sum()))
    finite = np.isfinite(r)
    out = np.full(r.shape[0], np.nan)
    for t in range(window, r.shape[0]):
        cols = np.flatnonzero(finite[t - window: t + 1].all(axis=0))
        if not len(cols):
            continue
        hist = r[t - window: t][:, cols]
        dev = r[t, cols] - hist.mean(axis=0)
        cov = np.atleast_2d(np.cov(hist, rowvar=False, ddof=1))
        out[t] = max(float(dev @ np.linalg.pinv(cov) @ dev), 0.0)
    return out


def turbulence_threshold(in_sample_index: Any, quantile: float) -> float:
    """The turbulence threshold: the ``quantile`` of the finite in-sample (train) turbulence values (NaN
    warm-up bars ignored; ``np.nanquantile``, linear interpolation as pandas' ``quantile`` in FinRL). Yang et al.
    2020 use the 99th percentile of in-sample turbulence (``portfolio.turbulence_quantile = 0.99``).

    Raises:
        ConfigError: ``quantile`` outside (0, 1).
        InsufficientDataError: no finite in-sample value (the sample is shorter than the window).
    """
    if not 0.0 < float(quantile) < 1.0:
        raise ConfigError(f"portfolio.turbulence_quantile must be in (0, 1), got {quantile!r}")
    values = np.asarray(in_sample_index, dtype=np.float64).reshape(-1)
    if not np.isfinite(values).any():
        raise InsufficientDataError(f"no finite in-sample turbulence value among {values.size} bars: the in-sample "
                                    "part must be longer than portfolio.turbulence_window")
    return float(np.nanquantile(values[np.isfinite(values)], float(quantile)))


# --------------------------------------------------------------------------- the risk layer


def _check_risk(max_drawdown: float, drawdown_cut: float) -> None:
    if not 0.0 < max_drawdown <= 1.0:
        raise ConfigError(f"ensemble.max_drawdown must be in (0, 1], got {max_drawdown!r}")
    if not 0.0 <= drawdown_cut <= 1.0:
        raise ConfigError(f"ensemble.drawdown_cut must be in [0, 1], got {drawdown_cut!r}")


def _flags(drawdown: float, turbulence: float, threshold: float, max_drawdown: float) -> tuple[bool, bool]:
    """(drawdown cut applies, turbulence rule applies); NaN turbulence or threshold never triggers."""
    return bool(drawdown > max_drawdown), bool(turbulence > threshold)


def risk_limited_weights(
    weights: Any, *, drawdown: float = 0.0, turbulence: float = float("nan"), threshold: float = float("nan"),
    long_only: bool = True, max_weight: float = 1.0, max_gross: float = 1.0, max_net: float = 1.0,
    max_drawdown: float = 0.2, drawdown_cut: float = 0.5, held_book: bool = False,
) -> np.ndarray:
    """One bar of the portfolio risk layer: the weights the book may hold, from desired weights.

    In this order:

    1. the exposure limits, :func:`raytrade_envs.actions.project_weights` (long-only, ``|w_a| <= max_weight``,
       ``sum |w| <= max_gross``, ``|sum w| <= max_net``; the env's action mapping and the backtest use it too);
    2. while ``drawdown > max_drawdown``: a new order (``held_book`` False) is multiplied by ``drawdown_cut`` (as
       :func:`raytrade.rl.ensemble.risk_limited_position` for one asset; a cut in [0, 1] keeps every limit); the
       book held on a bar without a new order (``held_book`` True) is only scaled down until its gross exposure is
       at most ``drawdown_cut * max_gross``, so a book already cut is not cut again on every bar it holds;
    3. all cash (zeros) when ``turbulence > threshold`` (FinRL's turbulence rule, Yang et al. 2020: sell
       everything while the market is turbulent). NaN turbulence (warm-up) or threshold: the rule is off.

    Args:
        weights: ``(A,)`` desired weights, fractions of equity (finite).
        drawdown: the account's ``1 - equity / running peak`` (fraction) at the close of the bar.
        turbulence: :func:`turbulence_index` at the bar; threshold: :func:`turbulence_threshold`.
        long_only, max_weight, max_gross, max_net: ``portfolio.*`` exposure limits (fractions of equity).
        max_drawdown, drawdown_cut: ``ensemble.max_drawdown`` (fraction in (0, 1]) and ``ensemble.drawdown_cut``
            (exposure multiplier in [0, 1]).
        held_book: ``weights`` are the weights held now, no new order this bar (a strategy's bars between
            rebalances); step 2 is then a cap, not a multiplier (idempotent: the layer applied to its own output
            returns it unchanged).

    Returns:
        ``(A,)`` float64 limited weights (cash = ``1 - sum``).

    Raises:
        ConfigError: ``max_drawdown`` or ``drawdown_cut`` out of range.
        ValueError: a NaN weight or an exposure limit out of range (from ``project_weights``).
    """
    _check_risk(max_drawdown, drawdown_cut)
    w = project_weights(np.asarray(weights, dtype=np.float64), long_only=long_only, max_weight=max_weight,
                        max_gross=max_gross, max_net=max_net)
    cut, to_cash = _flags(drawdown, turbulence, threshold, max_drawdown)
    if to_cash:
        return np.zeros_like(w)
    if not cut:
        return w
    if not held_book:
        return w * drawdown_cut
    gross, cap = float(np.abs(w).sum()), drawdown_cut * max_gross
    return w * (cap / gross) if gross > cap else w


def risk_limit_weights(
    weights: Any, step: StepFn, *, turbulence: Any = None, threshold: float = float("nan"),
    long_only: bool = True, max_weight: float = 1.0, max_gross: float = 1.0, max_net: float = 1.0,
    max_drawdown: float = 0.2, drawdown_cut: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The risk layer over a weight series, walked bar by bar on the limited book's own equity.

    At bar ``t``: the drawdown is ``1 - equity / peak`` of the **limited** book from the net returns of bars
    ``< t`` (equity starts at 1); the target is :func:`risk_limited_weights` of ``weights[t]`` with that drawdown
    and ``turbulence[t]``; then the book trades to it, ``net, held = step(t, held, target)``. A NaN in
    ``weights[t]`` (the baselines' "no order, keep the units") is replaced by that asset's held (drifted) weight
    before the layer, so the limits and cuts apply to the book actually held; ``limited[t]`` is then the target
    actually traded (a NaN never reaches ``step``). A row that is all NaN (no order on the bar: between a
    strategy's rebalances) is the held book, ``held_book=True``: in drawdown its gross exposure is capped at
    ``drawdown_cut * max_gross`` rather than multiplied by the cut again on every bar it is held.

    Args:
        weights: ``(T, A)`` desired target weights (fractions of equity; NaN = keep units).
        step: ``(t, held (A,), target (A,)) -> (simple net return of bar t after costs, weights held after it)``,
            the book of :mod:`raytrade_envs.accounting` (e.g. ``step_book`` on bar ``t``'s returns); ``held``
            starts at zeros (flat).
        turbulence: ``(T,)`` :func:`turbulence_index` aligned with ``weights`` (None: no turbulence rule);
        threshold: :func:`turbulence_threshold` (NaN: no rule).
        long_only, max_weight, max_gross, max_net, max_drawdown, drawdown_cut: as :func:`risk_limited_weights`.

    Returns:
        ``(limited (T, A), net (T,))``: the targets traded and each bar's simple net return (fractions).

    Raises:
        ValueError: ``weights`` not 2-D or ``turbulence`` not ``(T,)``; and as :func:`risk_limited_weights`.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (T, A), got shape {w.shape}")
    n_bars, n_assets = w.shape
    turb = np.full(n_bars, np.nan) if turbulence is None else np.asarray(turbulence, dtype=np.float64)
    if turb.shape != (n_bars,):
        raise ValueError(f"turbulence must have shape ({n_bars},), got {turb.shape}")
    _check_risk(max_drawdown, drawdown_cut)
    limited = np.empty_like(w)
    net = np.empty(n_bars)
    held = np.zeros(n_assets)
    equity = peak = 1.0
    for t in range(n_bars):
        no_order = np.isnan(w[t])
        desired = np.where(no_order, held, w[t])
        limited[t] = risk_limited_weights(
            desired, drawdown=1.0 - equity / peak, turbulence=float(turb[t]), threshold=threshold,
            long_only=long_only, max_weight=max_weight, max_gross=max_gross, max_net=max_net,
            max_drawdown=max_drawdown, drawdown_cut=drawdown_cut, held_book=bool(no_order.all()))
        r, held = step(t, held.copy(), limited[t].copy())
        held = np.asarray(held, dtype=np.float64)
        net[t] = r
        equity *= 1.0 + r
        peak = max(peak, equity)
    return limited, net
