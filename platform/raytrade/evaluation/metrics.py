"""Performance metrics of a trading strategy, as pure functions on numpy arrays.

Conventions used by every function here:

* ``returns`` are **per-bar simple net returns as fractions** (``0.01`` = +1 % over one bar),
  i.e. after trading costs, as produced by :func:`raytrade_envs.accounting.net_returns`.
* ``positions`` are the positions held over each bar as a fraction of equity
  (``1.0`` = fully long, ``-1.0`` = fully short, ``0.0`` = flat).
* The equity curve is ``cumprod(1 + returns)`` starting from an initial equity of ``1.0``.
* Annualised quantities take ``periods_per_year``: bars per year of the data's own calendar, see
  :func:`annualisation` (observed bars per year by default; 24/7, weekdays, exchange sessions, or an override).
* The risk-free rate is taken as zero.

Bad input (not 1-D, empty, non-finite, mismatched lengths, non-positive ``periods_per_year``)
raises :class:`ValueError` with a message naming the argument; callers that want a
:class:`~raytrade.errors.RaytradeError` wrap it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CALENDARS",
    "SUMMARY_KEYS",
    "Annualisation",
    "annual_return",
    "annual_volatility",
    "annualisation",
    "calmar_ratio",
    "hit_rate",
    "max_drawdown",
    "periods_per_year",
    "rolling_sharpe",
    "sharpe_ratio",
    "sortino_ratio",
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
    "sortino",
    "calmar",
    "max_drawdown",
    "hit_rate",
    "turnover",
    "n_bars",
)

_SECONDS_PER_DAY = 86_400.0
_SECONDS_PER_YEAR = 365.25 * _SECONDS_PER_DAY
_TRADING_DAYS_PER_YEAR = 252.0
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

#: Names of the calendars :func:`annualisation` knows (``calendar`` argument; ``backtest.calendar`` in the config).
CALENDARS: tuple[str, ...] = ("observed", "24/7", "weekdays", "exchange")

_NS_PER_S = 1_000_000_000
_NS_PER_WEEK = 7 * 86_400 * _NS_PER_S
_MONDAY_OFFSET_NS = 4 * 86_400 * _NS_PER_S  # 1970-01-01 was a Thursday; weeks start Monday 00:00
_WEEKS_PER_YEAR = 365.25 / 7.0
_WEEKDAYS_PER_YEAR = 365.25 * 5.0 / 7.0  # 260.89 Monday-Friday days per year


@dataclass(frozen=True)
class Annualisation:
    """How many bars make a year, and how that number was reached (reports print it).

    Attributes:
        periods_per_year: bars per year (> 0), the factor every annualised metric here takes.
        calendar: ``"observed"``, ``"24/7"``, ``"weekdays"``, ``"exchange"`` (see :func:`annualisation`) or
            ``"override"`` (a number given explicitly, e.g. ``backtest.periods_per_year``).
        detail: one line saying what was counted, e.g. ``"observed: 34,895 bars in 1,034 whole calendar weeks
            with bars x 365.25/7 weeks/year"``.
    """

    periods_per_year: float
    calendar: str
    detail: str

    def report(self) -> dict[str, Any]:
        """``{"periods_per_year", "calendar", "calendar_detail"}``: the keys a report block carries."""
        return {"periods_per_year": self.periods_per_year, "calendar": self.calendar,
                "calendar_detail": self.detail}

    def __str__(self) -> str:
        return f"{self.periods_per_year:,.1f} bars/year ({self.detail})"


def _timestamps(timestamps: Any) -> pd.DatetimeIndex:
    """``timestamps`` as a strictly increasing DatetimeIndex of >= 2 values, or ValueError naming them."""
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(timestamps))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"timestamps must be datetimes: {exc}") from exc
    if idx.ndim != 1 or len(idx) < 2:
        raise ValueError(f"timestamps: need at least 2 to infer the bars per year, got {len(idx)}")
    if idx.hasnans:
        raise ValueError("timestamps must not contain NaT")
    # int64 nanoseconds since the epoch (UTC for tz-aware input); pandas >= 3 parses CSV dates to microseconds,
    # so the unit is fixed here rather than assumed
    idx = idx.as_unit("ns")
    ns = idx.asi8
    bad = np.diff(ns) <= 0
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            "timestamps must be strictly increasing (sorted, no duplicates); "
            f"non-positive spacing between positions {first} and {first + 1}: "
            f"{idx[first]} -> {idx[first + 1]}"
        )
    return idx


def _spacing_text(seconds: float) -> str:
    if seconds % 86_400 == 0:
        return f"{seconds / 86_400:g} d"
    if seconds % 3_600 == 0:
        return f"{seconds / 3_600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _observed(ns: np.ndarray, median_s: float) -> tuple[float, str]:
    """Bars per year as counted in the data (see :func:`annualisation`, calendar ``"observed"``)."""
    n = ns.size
    if median_s < 7 * _SECONDS_PER_DAY:
        week = (ns - _MONDAY_OFFSET_NS) // _NS_PER_WEEK  # Monday 00:00-based week number of each bar
        inner = week[(week > week[0]) & (week < week[-1])]  # whole weeks: not the first or the last one
        if inner.size:
            occupied = np.unique(inner)
            empty = int(week[-1] - week[0] - 1) - occupied.size
            gaps = ""
            if empty:
                gaps = f"; {empty} week(s) without any bar skipped as data gaps"
                # a week with no bar is a hole in the data; the weeks on either side of it are cut by the hole
                after_hole = ~np.isin(occupied - 1, occupied) & (occupied - 1 > week[0])
                before_hole = ~np.isin(occupied + 1, occupied) & (occupied + 1 < week[-1])
                edge = after_hole | before_hole
                if (~edge).any():
                    inner = inner[np.isin(inner, occupied[~edge])]
                    occupied = occupied[~edge]
                    gaps = (f"; {empty} week(s) without any bar and the {int(edge.sum())} week(s) next to them "
                            "skipped as data gaps")
            ppy = inner.size / occupied.size * _WEEKS_PER_YEAR
            return ppy, (f"observed: {inner.size:,} bars in {occupied.size:,} whole calendar week(s) "
                         f"x 365.25/7 weeks/year{gaps}")
    years = float(ns[-1] - ns[0]) / _NS_PER_S / _SECONDS_PER_YEAR
    return (n - 1) / years, (f"observed: {n - 1:,} bar intervals over {years:.3g} years (first to last bar, "
                             f"years of 365.25 days)")


def annualisation(timestamps: Any, calendar: str = "observed", *, override: float | None = None) -> Annualisation:
    """Bars per year of the data's own calendar, derived from its timestamps, and how it was derived.

    The annualisation factor must be the number of bars the market really has in a year: hourly US
    equities have about 1,760 (7 bars a session x ~252 sessions), hourly FX about 6,200 (24 h x 5 days, less
    holidays), hourly crypto 8,766 (24 x 365.25), daily stocks about 252. Assuming 24/7 trading for any
    intraday bar (8,766 for hourly equities) inflates a Sharpe ratio by ``sqrt(8766 / 1760) = 2.2x`` and
    compounds the annual return over the wrong number of bars.

    Calendars (``d`` = median spacing between consecutive timestamps):

    * ``"observed"`` (default): the bars actually present per year. For bars shorter than a week it counts the
      bars in the whole calendar weeks (Monday 00:00 to Monday 00:00, UTC for tz-aware input) strictly
      between the week of the first bar and the week of the last one, and scales to 365.25/7 weeks a year.
      Whole weeks make the count immune to where the sample starts and ends: counting ``n - 1`` intervals
      over ``last - first`` overstates an exchange calendar on short samples, which miss the closed hours
      after the last bar (6 weeks of hourly SPY from Monday 2017-02-27 to Friday 2017-04-07, 35 bars a
      week, read 1,947 bars/year instead of 35 x 52.18 = 1,826). Weeks without any bar are data gaps, not
      the market's calendar (no market closes for a whole week): they and the weeks next to them, which the
      gap cuts into, are skipped.
      On the real data of ``shared/data`` this gives 1,757 (hourly US equities, 1998-2017; 7 bars a session,
      holidays and half days included), 8,764-8,766 (hourly crypto), 251.5-252.0 (daily US stocks and the
      Dow). Bars of a week or longer, and samples with no whole week inside, use ``(n - 1) / (last - first)``
      in years of 365.25 days (52.18 for weekly bars).
    * ``"24/7"``: ``365.25 * 86400 / d`` (a market open every hour of every day: 8,766 for hourly bars, 365.25
      for daily bars; ``d`` of a day or more: 365.25 days x 1 bar).
    * ``"weekdays"``: a market open around the clock Monday to Friday (FX): ``260.89 * 86400 / d`` for
      ``d < 1 day`` (6,261 for hourly bars), ``260.89`` for daily bars.
    * ``"exchange"``: 252 sessions a year (a US-style exchange calendar) x the bars per session, the median
      number of bars per calendar date that has bars (7 for hourly US equities: 1,764); ``252`` for daily bars.

    For bars of two days or longer every named calendar counts ``(n - 1) / (last - first)`` in years of 365.25
    days (a weekly bar is a weekly bar in any calendar: 52.18; monthly bars: 12).

    Args:
        timestamps: sorted, strictly increasing bar timestamps, shape ``(n,)``, ``n >= 2``: a numpy
            ``datetime64`` array, ``pd.Series``, ``pd.DatetimeIndex`` or a list of datetimes (tz-aware ones are
            compared in UTC). Not read when ``override`` is given.
        calendar: one of :data:`CALENDARS`.
        override: bars per year given explicitly (> 0); wins over the calendar and is reported as
            ``calendar="override"``.

    Returns:
        An :class:`Annualisation` (bars per year, the calendar used, one line of detail).

    Raises:
        ValueError: an unknown ``calendar``; a non-positive or non-finite ``override``; fewer than 2 timestamps,
            values that are not datetimes (or NaT), or a non-positive spacing (unsorted or duplicated).
    """
    if override is not None:
        ppy = _check_ppy(override)
        return Annualisation(ppy, "override", f"override: {ppy:g} bars/year given explicitly, not derived from "
                                               "the timestamps")
    if calendar not in CALENDARS:
        raise ValueError(f"calendar must be one of {', '.join(CALENDARS)}; got {calendar!r}")
    idx = _timestamps(timestamps)
    ns = idx.asi8
    median_s = float(np.median(np.diff(ns))) / _NS_PER_S
    spacing = _spacing_text(median_s)
    if calendar == "observed":
        ppy, detail = _observed(ns, median_s)
        return Annualisation(float(ppy), calendar, detail)
    if median_s >= 2 * _SECONDS_PER_DAY:
        years = float(ns[-1] - ns[0]) / _NS_PER_S / _SECONDS_PER_YEAR
        return Annualisation((ns.size - 1) / years, calendar,
                             f"{calendar}: {spacing} bars (median spacing) span several days, the same in every "
                             f"calendar: {ns.size - 1:,} bar intervals over {years:.3g} years")
    intraday = median_s < _SECONDS_PER_DAY
    if calendar == "24/7":
        per_day = _SECONDS_PER_DAY / median_s if intraday else 1.0
        return Annualisation(365.25 * per_day, calendar,
                             f"24/7: 365.25 days/year x {per_day:g} bars/day (median spacing {spacing})")
    if calendar == "weekdays":
        per_day = _SECONDS_PER_DAY / median_s if intraday else 1.0
        return Annualisation(_WEEKDAYS_PER_YEAR * per_day, calendar,
                             f"weekdays: 260.89 weekdays/year x {per_day:g} bars/day (median spacing {spacing})")
    # exchange
    if intraday:
        # calendar date of each bar (UTC for tz-aware input)
        days = ns // (86_400 * _NS_PER_S)
        per_session = float(np.median(np.unique(days, return_counts=True)[1]))
    else:
        per_session = 1.0
    return Annualisation(_TRADING_DAYS_PER_YEAR * per_session, calendar,
                         f"exchange: 252 sessions/year x {per_session:g} bars/session (median bars per date "
                         f"with bars; spacing {spacing})")


def periods_per_year(timestamps: Any, calendar: str = "observed") -> float:
    """Bars per year of ``timestamps`` in ``calendar``: ``annualisation(timestamps, calendar).periods_per_year``.

    The plain number for callers that do not report how it was derived; see :func:`annualisation` for the
    calendars, the arguments and the errors (``ValueError``).
    """
    return annualisation(timestamps, calendar).periods_per_year


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


def sortino_ratio(returns: Any, periods_per_year: float) -> float:
    """Annualised Sortino ratio with a zero target (minimum acceptable return) and a zero risk-free rate.

    ``mean(r) / DD * sqrt(periods_per_year)`` with the downside deviation ``DD = sqrt(mean(min(r, 0) ** 2))``
    taken over ALL ``n`` bars (bars above the target count as zero shortfall, not left out) — F. A. Sortino
    and L. N. Price, "Performance Measurement in a Downside Risk Framework", J. Investing 3(3), 1994; the
    definition of empyrical's ``sortino_ratio``/``downside_risk`` (used by pyfolio and FinRL) with
    ``required_return=0``, annualised by the square root of time like :func:`sharpe_ratio`.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        periods_per_year: bars per year (> 0).

    Returns:
        Annualised Sortino ratio (dimensionless). ``0.0`` when ``n < 2`` or no bar lost money (downside
        deviation zero), the convention :func:`sharpe_ratio` uses for a zero denominator; empyrical returns
        NaN or inf there, which a report could neither rank nor store as JSON.

    Raises:
        ValueError: bad ``returns`` or ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    if r.size < 2:
        return 0.0
    downside = math.sqrt(float(np.mean(np.square(np.minimum(r, 0.0)))))
    if downside == 0.0:
        return 0.0
    return float(np.mean(r)) / downside * math.sqrt(ppy)


def calmar_ratio(returns: Any, periods_per_year: float) -> float:
    """Calmar ratio: annualised return over maximum drawdown, ``annual_return / max_drawdown``.

    T. W. Young, "Calmar Ratio: A Smoother Tool", Futures 20(1), 1991 (there over the last 36 months; here,
    as in empyrical's ``calmar_ratio``, over the whole series). The numerator is the geometric
    :func:`annual_return` (CAGR), the denominator the :func:`max_drawdown` of the equity curve starting from
    its initial 1.0 (empyrical starts at the first bar's equity, so a first losing bar counts here but not
    there; otherwise the two agree).

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        periods_per_year: bars per year (> 0).

    Returns:
        The ratio (dimensionless; ``2.0`` = an annual return twice the worst drawdown; negative when the annual
        return is). ``0.0`` when the equity never fell below a peak (max drawdown zero): empyrical returns NaN
        there (and for an infinite ratio); ``0.0`` keeps :func:`summarize` finite, as :func:`sharpe_ratio` does
        for a zero denominator.

    Raises:
        ValueError: bad ``returns`` or ``periods_per_year``, or the annual return overflows (see
            :func:`annual_return`).
    """
    r = _as_series(returns, "returns")
    ppy = _check_ppy(periods_per_year)
    mdd = max_drawdown(r)
    if mdd == 0.0:
        return 0.0
    return annual_return(r, ppy) / mdd


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
    traded: Any | None = None,
) -> dict[str, float]:
    """All metrics of one strategy in one JSON-serialisable dict.

    Args:
        returns: per-bar simple net returns (fractions), shape ``(n,)``.
        positions: position held over each bar, shape ``(n,)``.
        periods_per_year: bars per year (> 0).
        initial_position: position before the first bar, for :func:`turnover`.
        traded: optional traded notional of each bar as a fraction of equity (>= 0), shape ``(n,)``, as the
            accounting charges it (rebalancing to a target every bar trades the drift too, which position
            changes do not show). Given, ``turnover`` is ``mean(traded)``; otherwise the mean absolute
            position change :func:`turnover`.

    Returns:
        Exactly the keys of :data:`SUMMARY_KEYS`, as plain Python numbers, all finite:
        ``total_return`` (fraction), ``annual_return`` (fraction/year), ``annual_volatility``
        (fraction, annualised), ``sharpe`` (annualised), ``sortino`` (annualised), ``calmar``
        (annual return / max drawdown), ``max_drawdown`` (positive fraction), ``hit_rate`` (fraction of
        in-market bars), ``turnover`` (fraction of equity traded per bar) and ``n_bars`` (int).

    Raises:
        ValueError: bad arrays (``traded`` negative included), different lengths or bad ``periods_per_year``.
    """
    r = _as_series(returns, "returns")
    p = _as_series(positions, "positions")
    _check_same_length(r, "returns", p, "positions")
    ppy = _check_ppy(periods_per_year)
    if traded is None:
        traded_per_bar = turnover(p, initial_position)
    else:
        t = _as_series(traded, "traded")
        _check_same_length(r, "returns", t, "traded")
        if (t < 0.0).any():
            first = int(np.flatnonzero(t < 0.0)[0])
            raise ValueError(f"traded must be >= 0 (traded notional), got {float(t[first])!r} at index {first}")
        traded_per_bar = float(np.mean(t))
    out: dict[str, Any] = {
        "total_return": total_return(r),
        "annual_return": annual_return(r, ppy),
        "annual_volatility": annual_volatility(r, ppy),
        "sharpe": sharpe_ratio(r, ppy),
        "sortino": sortino_ratio(r, ppy),
        "calmar": calmar_ratio(r, ppy),
        "max_drawdown": max_drawdown(r),
        "hit_rate": hit_rate(r, p),
        "turnover": traded_per_bar,
        "n_bars": int(r.size),
    }
    for key, value in out.items():
        if not math.isfinite(value):  # e.g. prod(1 + r) overflowing on absurd input
            raise ValueError(f"metric {key} is not finite ({value}); check the returns")
    return out
