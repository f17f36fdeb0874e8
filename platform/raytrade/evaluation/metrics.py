"""Performance metrics of a trading strategy, as pure functions on numpy arrays.

Conventions used by every function here:

* ``returns`` are **per-bar simple net returns as fractions** (``0.01`` = +1 % over one bar),
  i.e. after trading costs, as produced by :func:`raytrade_envs.accounting.net_returns`.
* ``positions`` are the positions held over each bar as a fraction of equity
  (``1.0`` = fully long, ``-1.0`` = fully short, ``0.0`` = flat).
* The equity curve is ``cumprod(1 + returns)`` starting from an initial equity of ``1.0``.
* Annualised quantities take ``periods_per_year`` (bars per year, see :func:`periods_per_year`).
* The risk-free rate is taken as zero.

Bad input (not 1-D, empty, non-finite, mismatched lengths, non-positive ``periods_per_year``)
raises :class:`ValueError` with a message naming the argument; callers that want a
:class:`~raytrade.errors.RaytradeError` wrap it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "SUMMARY_KEYS",
    "annual_return",
    "annual_volatility",
    "hit_rate",
    "max_drawdown",
    "periods_per_year",
    "rolling_sharpe",
    "sharpe_ratio",
    "summarize",
    "total_return",
    "turnover",
]

#: Keys of the dict returned by :func:`summarize`, in order.
SUMMARY_KEYS: tuple[str, ...] = (
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "n_bars",
)

_SECONDS_PER_DAY = 86_400.0
_SECONDS_PER_YEAR = 365.25 * _SECONDS_PER_DAY
_TRADING_DAYS_PER_YEAR = 252.0
_WEEKS_PER_YEAR = 52.0
_FLAT_EPS = 1e-12  # |position| at or below this counts as flat
# A standard deviation at or below this fraction of |mean| is floating-point noise of a
# constant series (numpy's std of a constant array is a few ulp, not exactly zero).
_STD_REL_EPS = 1e-12


# --------------------------------------------------------------------------- validation


def _as_series(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D, non-empty, finite float64 array or raise ValueError."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite: {int(bad.sum())} NaN/inf value(s), first at index {first}")
    return arr


def _check_same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def _check_ppy(periods_per_year: float) -> float:
    try:
        ppy = float(periods_per_year)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"periods_per_year must be a number, got {periods_per_year!r}") from exc
    if not math.isfinite(ppy) or ppy <= 0.0:
        raise ValueError(f"periods_per_year must be finite and > 0, got {periods_per_year!r}")
    return ppy


# --------------------------------------------------------------------------- bar frequency


def periods_per_year(timestamps: Any) -> float:
    """Infer the number of bars per year from the median spacing of ``timestamps``.

    Args:
        timestamps: sorted, strictly increasing datetimes, shape ``(n,)``: a numpy
            ``datetime64`` array, ``pd.Series``, ``pd.DatetimeIndex`` or a list of datetimes.
            Time zones are allowed (all must be comparable).

    Returns:
        Bars per year (float), by the median spacing ``d`` between consecutive timestamps:

        * ``d < 1 day``: a 24/7 market (crypto), ``365.25 * 86400 / d_seconds``
          (1 h -> 8766, 5 min -> 105192);
        * ``1 day <= d < 7 days``: daily bars of an exchange market, ``252`` trading days
          (weekend/holiday gaps make the median exactly 1 day);
        * ``7 days <= d < 8 days``: weekly bars, ``52``;
        * otherwise: ``365.25 * 86400 / d_seconds`` (e.g. ~12.2 for 30-day bars).

    Raises:
        ValueError: fewer than 2 timestamps, values that are not datetimes (or NaT), or any
            non-positive spacing (unsorted or duplicated timestamps).
    """
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(timestamps))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"timestamps must be datetimes: {exc}") from exc
    if idx.ndim != 1 or len(idx) < 2:
        raise ValueError(f"need at least 2 timestamps to infer the bar spacing, got {len(idx)}")
    if idx.hasnans:
        raise ValueError("timestamps must not contain NaT")
    # int64 nanoseconds since the epoch (UTC for tz-aware input).
    ns = idx.asi8.astype(np.float64)
    spacing = np.diff(ns) / 1e9  # seconds
    if (spacing <= 0).any():
        first = int(np.flatnonzero(spacing <= 0)[0])
        raise ValueError(
            "timestamps must be strictly increasing (sorted, no duplicates); "
            f"non-positive spacing between positions {first} and {first + 1}: "
            f"{idx[first]} -> {idx[first + 1]}"
        )
    median_s = float(np.median(spacing))
    if median_s < _SECONDS_PER_DAY:
        return _SECONDS_PER_YEAR / median_s
    if median_s < 7 * _SECONDS_PER_DAY:
        return _TRADING_DAYS_PER_YEAR
    if median_s < 8 * _SECONDS_PER_DAY:
        return _WEEKS_PER_YEAR
    return _SECONDS_PER_YEAR / median_s


# --------------------------------------------------------------------------- return metrics


def total_return(returns: Any) -> float:
    """Compounded return over the whole series: ``prod(1 + r) - 1``.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``, ``n >= 1``.

    Returns:
        Total return as a fraction (``0.5`` = +50 %; ``-1.0`` or below = equity wiped out).

    Raises:
        ValueError: ``returns`` is not 1-D, empty or not finite.
    """
    r = _as_series(returns, "returns")
    return float(np.prod(1.0 + r) - 1.0)


def annual_return(returns: Any, periods_per_year: float) -> float:
    """Geometric annualised return (CAGR): ``(1 + total_return) ** (periods_per_year / n) - 1``.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``, ``n >= 1``.
        periods_per_year: bars per year (> 0).

    Returns:
        Annualised return as a fraction per year. ``-1.0`` if the equity curve
        ``cumprod(1 + r)`` reaches zero or below at any bar (ruin is absorbing).

    Raises:
        ValueError: bad ``returns`` or ``periods_per_year``, or the annualised growth overflows
            float64 (only for absurdly short, high-return series, where annualising is
            meaningless).
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    gross = 1.0 + r
    if (gross <= 0.0).any():
        return -1.0
    log_growth = float(np.sum(np.log(gross))) * ppy / r.size
    try:
        return float(math.expm1(log_growth))
    except OverflowError as exc:
        raise ValueError(
            f"annualised return overflows float64 ({r.size} bars at {ppy:g} bars/year); "
            "the series is too short to annualise"
        ) from exc


def annual_volatility(returns: Any, periods_per_year: float) -> float:
    """Annualised volatility: sample standard deviation (``ddof=1``) times ``sqrt(periods_per_year)``.

    Square-root-of-time scaling assumes i.i.d. per-bar returns.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        periods_per_year: bars per year (> 0).

    Returns:
        Annualised volatility as a fraction per sqrt(year); ``0.0`` when ``n < 2``.

    Raises:
        ValueError: bad ``returns`` or ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    if r.size < 2:
        return 0.0
    return float(np.std(r, ddof=1) * math.sqrt(ppy))


def sharpe_ratio(returns: Any, periods_per_year: float) -> float:
    """Annualised ex-post Sharpe ratio with a zero risk-free rate.

    ``mean(r) / std(r, ddof=1) * sqrt(periods_per_year)`` — the ex-post Sharpe ratio of
    W. F. Sharpe, "Mutual Fund Performance", J. Business 39 (1966) and "The Sharpe Ratio",
    J. Portfolio Management 21(1) (1994), with the benchmark set to zero, annualised by the
    square root of time (A. W. Lo, "The Statistics of Sharpe Ratios", FAJ 58(4), 2002, i.i.d. case).

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        periods_per_year: bars per year (> 0).

    Returns:
        Annualised Sharpe ratio (dimensionless). ``0.0`` when ``n < 2`` or the returns are
        constant (standard deviation zero, or below ``1e-12 * |mean|`` floating-point noise).

    Raises:
        ValueError: bad ``returns`` or ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    if r.size < 2:
        return 0.0
    mean = float(np.mean(r))
    std = float(np.std(r, ddof=1))
    if std == 0.0 or std <= _STD_REL_EPS * abs(mean):
        return 0.0
    return mean / std * math.sqrt(ppy)


def rolling_sharpe(returns: Any, window: int, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe ratio of the trailing ``window`` bars ending at each bar.

    Element ``t`` is :func:`sharpe_ratio` of ``returns[t - window + 1 : t + 1]`` (same formula: ``ddof=1``,
    zero risk-free rate, square-root-of-time annualisation, ``0.0`` for a constant window).

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        window: bars per window (>= 2).
        periods_per_year: bars per year (> 0).

    Returns:
        ``(n,)`` float array; NaN for the first ``window - 1`` bars (no full window yet).

    Raises:
        ValueError: bad ``returns``, ``window`` or ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    if int(window) != window or window < 2:
        raise ValueError(f"window must be an integer >= 2 bars, got {window!r}")
    series = pd.Series(r)
    mean = series.rolling(int(window)).mean().to_numpy()
    std = series.rolling(int(window)).std(ddof=1).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean / std * math.sqrt(ppy)
    constant = (std == 0.0) | (std <= _STD_REL_EPS * np.abs(mean))
    out[constant & ~np.isnan(std)] = 0.0
    return out


def max_drawdown(returns: Any) -> float:
    """Largest peak-to-trough decline of the equity curve, as a positive fraction.

    The equity curve is ``[1.0, cumprod(1 + r)]`` (the initial equity of 1.0 is the first peak)
    and the result is ``max_t (1 - equity_t / max_{s<=t} equity_s)``
    (Magdon-Ismail & Atiya, "Maximum drawdown", Risk 17(10), 2004).

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.

    Returns:
        ``0.25`` means equity fell 25 % below a previous peak; ``0.0`` if it never fell below
        a peak; ``>= 1.0`` only if equity reached zero or went negative.

    Raises:
        ValueError: ``returns`` is not 1-D, empty or not finite.
    """
    r = _as_series(returns, "returns")
    equity = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    peak = np.maximum.accumulate(equity)  # >= 1.0, so the division is safe
    return float(max(0.0, np.max(1.0 - equity / peak)))


def hit_rate(returns: Any, positions: Any) -> float:
    """Fraction of in-market bars that made money.

    Counts the bars with a non-zero position (``|position| > 1e-12``) and returns the share
    of them whose net return is strictly positive.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        positions: position held over each bar, shape ``(n,)``.

    Returns:
        A fraction in ``[0, 1]``; ``0.0`` if the strategy is never in the market
        (no bar to score, so no hit).

    Raises:
        ValueError: bad arrays or different lengths.
    """
    r = _as_series(returns, "returns")
    p = _as_series(positions, "positions")
    _check_same_length(r, "returns", p, "positions")
    active = np.abs(p) > _FLAT_EPS
    n_active = int(active.sum())
    if n_active == 0:
        return 0.0
    return float(np.count_nonzero(r[active] > 0.0) / n_active)


def turnover(positions: Any, initial_position: float = 0.0) -> float:
    """Mean absolute position change per bar: ``mean_t |p_t - p_{t-1}|`` with ``p_{-1} = initial_position``.

    This is the fraction of equity traded per bar (``1.0`` = the whole equity once per bar;
    a +1/-1 flipper trades ~2.0; buy-and-hold from flat trades ``1/n``).

    Args:
        positions: position held over each bar, shape ``(n,)``.
        initial_position: position before the first bar (default flat).

    Returns:
        Average traded fraction of equity per bar (>= 0).

    Raises:
        ValueError: bad ``positions`` or non-finite ``initial_position``.
    """
    p = _as_series(positions, "positions")
    p0 = float(initial_position)
    if not math.isfinite(p0):
        raise ValueError(f"initial_position must be finite, got {initial_position!r}")
    return float(np.mean(np.abs(np.diff(p, prepend=p0))))


def summarize(
    returns: Any,
    positions: Any,
    periods_per_year: float,
    *,
    initial_position: float = 0.0,
) -> dict[str, float]:
    """All metrics of one strategy in one JSON-serialisable dict.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        positions: position held over each bar, shape ``(n,)``.
        periods_per_year: bars per year (> 0).
        initial_position: position before the first bar, for :func:`turnover`.

    Returns:
        Exactly the keys of :data:`SUMMARY_KEYS`, as plain Python numbers, all finite:
        ``total_return`` (fraction), ``annual_return`` (fraction/year), ``annual_volatility``
        (fraction, annualised), ``sharpe`` (annualised), ``max_drawdown`` (positive fraction),
        ``hit_rate`` (fraction of in-market bars), ``turnover`` (fraction of equity per bar) and
        ``n_bars`` (int).

    Raises:
        ValueError: bad arrays, different lengths or bad ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    p = _as_series(positions, "positions")
    _check_same_length(r, "returns", p, "positions")
    ppy = _check_ppy(periods_per_year)
    out: dict[str, Any] = {
        "total_return": total_return(r),
        "annual_return": annual_return(r, ppy),
        "annual_volatility": annual_volatility(r, ppy),
        "sharpe": sharpe_ratio(r, ppy),
        "max_drawdown": max_drawdown(r),
        "hit_rate": hit_rate(r, p),
        "turnover": turnover(p, initial_position),
        "n_bars": int(r.size),
    }
    for key, value in out.items():
        if not math.isfinite(value):  # e.g. prod(1 + r) overflowing on absurd input
            raise ValueError(f"metric {key} is not finite ({value}); check the returns")
    return out
