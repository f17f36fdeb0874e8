"""Cross-sectional forecast metrics of a universe, as a quant reads them: rank IC per timestamp, ICIR,
the top-minus-bottom long-short return, each with a stationary-bootstrap interval, plus per-symbol metrics.

Input is **long format**: one row per (timestamp, symbol) with arrays of shape ``(n,)``

* ``timestamp``: the bar at which the forecast is made (any sortable values, e.g. ``datetime64[ns, UTC]``);
* ``symbol``: the asset;
* ``predicted``: the forecast made with data at times ``<= timestamp`` (e.g. expected forward log return);
* ``realised``: the realised forward return over the same horizon (e.g. ``ln(close[t+h] / close[t])``), NaN
  where it is not known yet (the last ``h`` bars of a symbol); such rows are *unscored*, not an error;
* ``next_return`` (optional): the 1-bar forward return ``ln(close[t+1] / close[t])`` (the project's
  ``label_next_return``), for a long-short series that can be traded bar by bar.

Conventions:

* A row is **scored** for the IC and the long-short on ``realised`` when ``realised`` is known, and for the
  long-short on ``next_return`` when ``next_return`` is known. ``predicted`` must be finite on every row that has
  a known outcome (a NaN forecast there would silently bias the metrics, so it raises). Rows are never filled,
  dropped or reordered in the caller's data; the per-timestamp series come back sorted by timestamp.
* Per-timestamp quantities are NaN where undefined (fewer than ``min_symbols`` scored symbols, constant input, too
  few symbols for the legs). **NaN timestamps are excluded from every mean, standard deviation, t-statistic and
  bootstrap** (their count is reported), as Qlib's ``calc_ic(..., dropna=True)`` does.
* Returns are fractions (``0.01`` = 1 %), never bps. ICIR is **per timestamp (not annualised)** unless
  ``periods_per_year`` is given.
* Overlapping horizons: with ``h``-bar forward returns computed every bar, consecutive per-timestamp ICs (and
  long-short returns on ``realised``) share ``h - 1`` bars of outcome, so the series is autocorrelated (about an
  MA(h-1)). The confidence intervals therefore use the **stationary bootstrap over timestamps**
  (Politis & Romano, 1994; :func:`raytrade.evaluation.bootstrap.bootstrap_ci`), whose random blocks keep
  neighbouring timestamps together; the expected block length is the Politis-White automatic choice for each
  series (or ``block_length`` when given; choose ``>= h`` to be safe). The t-statistics use Newey-West standard
  errors with ``h - 1`` lags for the same reason (``horizon`` argument).

Sources: the IC and the information ratio of a signal, R. Grinold & R. Kahn, *Active Portfolio Management*
(2nd ed., 1999), ch. 6 and 10; per-timestamp Spearman IC, ICIR and the quantile long-short as in Microsoft Qlib
(``qlib.contrib.eva.alpha.calc_ic`` / ``calc_long_short_return``; Qlib halves top minus bottom, here it is not
halved); Newey & West, "A Simple, Positive Semi-Definite, Heteroskedasticity and Autocorrelation Consistent
Covariance Matrix", Econometrica 55(3), 1987, via ``arch.covariance.kernel.Bartlett``.

Bad data raise :class:`CrossSectionInputError`, a :class:`~raytrade.errors.DataValidationError` that is also a
:class:`ValueError`; bad arguments (``k``, ``quantile``, ``horizon``, ...) raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from arch.covariance.kernel import Bartlett
from scipy.stats import pearsonr, spearmanr, ttest_1samp

from raytrade.errors import DataValidationError
from raytrade.evaluation.bootstrap import bootstrap_ci
from raytrade.evaluation.forecast import directional_accuracy

__all__ = [
    "DEFAULT_LONG_SHORT_QUANTILE",
    "CrossSectionInputError",
    "cross_sectional_metrics",
    "icir",
    "long_short_series",
    "per_symbol_metrics",
    "rank_ic",
    "rank_ic_series",
    "t_stat",
]

#: Share of the scored symbols in each leg of the long-short when neither ``k`` nor ``quantile`` is given
#: (quintiles, Qlib's default).
DEFAULT_LONG_SHORT_QUANTILE = 0.2

_FLOOR_EPS = 1e-9  # floor(q * n) of e.g. 0.29 * 100 = 28.999999999999996 must be 29


class CrossSectionInputError(DataValidationError, ValueError):
    """Long-format forecast rows broke a rule (a :class:`~raytrade.errors.DataValidationError` and a
    :class:`ValueError`): ``rule``, ``column`` (the field), ``symbol`` and ``timestamp`` (the first bad row in
    time order, then symbol order) and ``count`` (rows at fault) are set."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_input_error, (self.rule, self.message, self.column, self.symbol, self.timestamp,
                                       self.count))


def _rebuild_input_error(rule: str, message: str, column: str | None, symbol: str | None, timestamp: Any,
                         count: int | None) -> CrossSectionInputError:
    return CrossSectionInputError(rule, message, column=column, symbol=symbol, timestamp=timestamp, count=count)


# --------------------------------------------------------------------------- validation


def _first_bad(frame: pd.DataFrame, mask: np.ndarray) -> tuple[Any, Any]:
    """(timestamp, symbol) of the earliest bad row (ties broken by symbol)."""
    bad = frame.loc[mask, ["timestamp", "symbol"]].sort_values(["timestamp", "symbol"], kind="stable")
    row = bad.iloc[0]
    return row["timestamp"], row["symbol"]


def _numeric(values: Any, name: str, n: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CrossSectionInputError("not_numeric", f"{name} must be numeric: {exc}", column=name) from exc
    if arr.ndim != 1:
        raise CrossSectionInputError("shape", f"{name} must be 1-D with shape (n,), got {arr.shape}", column=name)
    if arr.shape[0] != n:
        raise CrossSectionInputError(
            "length_mismatch", f"{name} has {arr.shape[0]} rows but timestamp has {n}; every field needs one "
            "value per (timestamp, symbol) row", column=name)
    return arr


def _labels(values: Any, name: str) -> pd.Index:
    try:
        return pd.Index(values)
    except (TypeError, ValueError) as exc:
        raise CrossSectionInputError("shape", f"{name} must be 1-D with shape (n,): {exc}", column=name) from exc


def _frame(timestamp: Any, symbol: Any, predicted: Any, outcomes: dict[str, Any]) -> pd.DataFrame:
    """Validated long-format frame ``timestamp, symbol, predicted, <outcomes...>`` (input row order kept)."""
    ts = _labels(timestamp, "timestamp")
    n = len(ts)
    if n == 0:
        raise CrossSectionInputError("no_rows", "no forecast rows to score", column="timestamp")
    sym = _labels(symbol, "symbol")
    if len(sym) != n:
        raise CrossSectionInputError(
            "length_mismatch", f"symbol has {len(sym)} rows but timestamp has {n}; every field needs one value "
            "per (timestamp, symbol) row", column="symbol")
    columns: dict[str, Any] = {"timestamp": ts, "symbol": sym, "predicted": _numeric(predicted, "predicted", n)}
    for name, values in outcomes.items():
        columns[name] = _numeric(values, name, n)
    frame = pd.DataFrame(columns)  # Index columns keep their dtype (e.g. datetime64[ns, UTC])
    for name in ("timestamp", "symbol"):
        missing = frame[name].isna().to_numpy()
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise CrossSectionInputError(
                f"missing_{name}", f"{name} must not be missing (None/NaN/NaT); first at row {first}",
                column=name, symbol=None if name == "symbol" else frame["symbol"].iloc[first],
                timestamp=None if name == "timestamp" else frame["timestamp"].iloc[first],
                count=int(missing.sum()))
    dup = frame.duplicated(["timestamp", "symbol"], keep=False).to_numpy()
    if dup.any():
        when, who = _first_bad(frame, dup)
        raise CrossSectionInputError(
            "duplicate_timestamp_symbol", "each (timestamp, symbol) pair may appear once", column="timestamp,symbol",
            symbol=who, timestamp=when, count=int(dup.sum()))
    for name in ("predicted", *outcomes):
        inf = np.isinf(frame[name].to_numpy())
        if inf.any():
            when, who = _first_bad(frame, inf)
            raise CrossSectionInputError("non_finite", f"{name} must not be +/-inf (NaN marks an unknown value)",
                                         column=name, symbol=who, timestamp=when, count=int(inf.sum()))
    known = np.zeros(n, dtype=bool)
    for name in outcomes:
        known |= frame[name].notna().to_numpy()
    no_forecast = known & frame["predicted"].isna().to_numpy()
    if no_forecast.any():
        when, who = _first_bad(frame, no_forecast)
        raise CrossSectionInputError(
            "missing_prediction", f"predicted is NaN on rows whose outcome ({' or '.join(outcomes)}) is known; "
            "drop those rows (e.g. the warm-up) before scoring", column="predicted", symbol=who, timestamp=when,
            count=int(no_forecast.sum()))
    return frame


def _check_legs(k: int | None, quantile: float | None) -> tuple[int | None, float | None]:
    if k is not None and quantile is not None:
        raise ValueError(f"give k or quantile for the long-short legs, not both (k={k!r}, quantile={quantile!r})")
    if k is None and quantile is None:
        return None, DEFAULT_LONG_SHORT_QUANTILE
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int (symbols per leg), got {k!r}")
        return int(k), None
    q = float(quantile)  # type: ignore[arg-type]
    if not 0.0 < q <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5] (share of symbols per leg), got {quantile!r}")
    return None, q


def _check_min_symbols(min_symbols: int) -> int:
    if isinstance(min_symbols, bool) or not isinstance(min_symbols, int | np.integer) or min_symbols < 2:
        raise ValueError(f"min_symbols must be an int >= 2, got {min_symbols!r}")
    return int(min_symbols)


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise ValueError(f"horizon must be a positive int (bars of the realised return), got {horizon!r}")
    return int(horizon)


def _finite_values(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float array with NaN entries removed; ValueError on +/-inf or a bad shape."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (T,), got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} must not contain +/-inf (NaN marks an undefined timestamp)")
    return arr[~np.isnan(arr)]


# --------------------------------------------------------------------------- per-timestamp series


def _rank_ic(frame: pd.DataFrame, outcome: str, min_symbols: int) -> pd.Series:
    every = pd.Index(frame["timestamp"].unique()).sort_values()
    scored = frame.loc[frame[outcome].notna(), ["timestamp", "predicted", outcome]]
    groups = scored.groupby("timestamp", sort=True)
    # Spearman's rho = Pearson correlation of the within-timestamp ranks (ties get their average rank)
    ranks = groups[["predicted", outcome]].rank(method="average")
    ts = scored["timestamp"]
    dp = ranks["predicted"] - ranks["predicted"].groupby(ts).transform("mean")
    dr = ranks[outcome] - ranks[outcome].groupby(ts).transform("mean")
    cov = (dp * dr).groupby(ts).sum()
    var = (dp * dp).groupby(ts).sum() * (dr * dr).groupby(ts).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        ic = (cov / np.sqrt(var)).clip(-1.0, 1.0)
    defined = (groups.size() >= min_symbols) & (groups["predicted"].nunique() > 1) & (groups[outcome].nunique() > 1)
    ic = ic.where(defined).reindex(every)
    ic.index.name = "timestamp"
    return ic.rename("rank_ic").astype(np.float64)


def _long_short(frame: pd.DataFrame, outcome: str, k: int | None, quantile: float | None) -> pd.Series:
    every = pd.Index(frame["timestamp"].unique()).sort_values()
    scored = frame.loc[frame[outcome].notna(), ["timestamp", "symbol", "predicted", outcome]]
    scored = scored.sort_values(["timestamp", "predicted", "symbol"], kind="stable")
    groups = scored.groupby("timestamp", sort=True)
    pos = groups.cumcount().to_numpy()
    size = groups["predicted"].transform("size").to_numpy()
    if k is not None:
        legs = np.full(size.shape, k)
    else:
        legs = np.maximum(1, np.floor(quantile * size + _FLOOR_EPS).astype(np.int64))  # type: ignore[operator]
    ts = scored["timestamp"]
    values = scored[outcome]
    bottom = values.where(pos < legs).groupby(ts).mean()
    top = values.where(pos >= size - legs).groupby(ts).mean()
    fits = pd.Series(size >= 2 * legs, index=scored.index).groupby(ts).all()
    spread = (top - bottom).where(fits).reindex(every)
    spread.index.name = "timestamp"
    return spread.rename("long_short").astype(np.float64)


def rank_ic_series(timestamp: Any, symbol: Any, predicted: Any, realised: Any, *,
                   min_symbols: int = 2) -> pd.Series:
    """Cross-sectional rank IC at each timestamp: Spearman correlation of ``predicted`` and ``realised`` across the
    symbols scored at that timestamp (Grinold & Kahn's IC on ranks; Qlib's per-datetime "Rank IC").

    ``IC_t = corr(rank(predicted_t), rank(realised_t))`` over the symbols with ``realised`` known at ``t``, ties
    given their average rank (``scipy.stats.spearmanr``'s definition).

    Args:
        timestamp, symbol: ``(n,)`` row labels; each ``(timestamp, symbol)`` at most once, any order.
        predicted: ``(n,)`` forecasts (finite wherever ``realised`` is known).
        realised: ``(n,)`` realised forward returns over the forecast horizon; NaN = not known yet (unscored).
        min_symbols: fewest scored symbols for an IC (>= 2; with 2 the IC can only be -1 or +1).

    Returns:
        Float series indexed by every distinct timestamp of the input, ascending, named ``"rank_ic"``; NaN where
        fewer than ``min_symbols`` symbols are scored or ``predicted`` or ``realised`` is constant across them.

    Raises:
        CrossSectionInputError (a ValueError): different lengths, missing timestamp/symbol, duplicate
            ``(timestamp, symbol)``, +/-inf, or NaN ``predicted`` where ``realised`` is known.
        ValueError: bad ``min_symbols``.
    """
    frame = _frame(timestamp, symbol, predicted, {"realised": realised})
    return _rank_ic(frame, "realised", _check_min_symbols(min_symbols))


def long_short_series(timestamp: Any, symbol: Any, predicted: Any, returns: Any, *, k: int | None = None,
                      quantile: float | None = None) -> pd.Series:
    """Top-minus-bottom return at each timestamp: mean ``returns`` of the ``k_t`` symbols with the highest
    ``predicted`` minus the mean of the ``k_t`` with the lowest (equal weights within each leg).

    It is the return of a book long 1 and short 1 (gross exposure 2) before costs, in the units of ``returns``
    (fractions; per horizon of ``returns``). Not halved, unlike Qlib's ``calc_long_short_return``. Ties in
    ``predicted`` at a leg boundary are broken by symbol order (later symbols rank higher), deterministically.

    Args:
        timestamp, symbol: ``(n,)`` row labels; each ``(timestamp, symbol)`` at most once, any order.
        predicted: ``(n,)`` forecasts (finite wherever ``returns`` is known).
        returns: ``(n,)`` realised returns the legs earn (e.g. forward h-bar returns, or 1-bar simple returns);
            NaN = not known (unscored).
        k: symbols per leg (>= 1); the timestamp is NaN when fewer than ``2 k`` symbols are scored.
        quantile: share of the scored symbols per leg, in (0, 0.5]: ``k_t = max(1, floor(quantile * n_t))``
            (Qlib's ``int(len(x) * quantile)``, but at least one symbol); NaN when ``n_t < 2``. Give ``k`` or
            ``quantile``; neither = ``quantile=DEFAULT_LONG_SHORT_QUANTILE`` (0.2).

    Returns:
        Float series indexed by every distinct timestamp of the input, ascending, named ``"long_short"``.

    Raises:
        CrossSectionInputError (a ValueError): as :func:`rank_ic_series` (field ``returns``).
        ValueError: both ``k`` and ``quantile``, or a bad value of either.
    """
    k, quantile = _check_legs(k, quantile)
    frame = _frame(timestamp, symbol, predicted, {"returns": returns})
    return _long_short(frame, "returns", k, quantile)


# --------------------------------------------------------------------------- summaries of a series


def rank_ic(ic: Any) -> float:
    """Time mean of the per-timestamp IC (:func:`rank_ic_series`), NaN timestamps excluded; NaN if none is left.

    Raises:
        ValueError: not 1-D, or +/-inf.
    """
    values = _finite_values(ic, "ic")
    return float(values.mean()) if values.size else math.nan


def _ratio(values: np.ndarray) -> float:
    if values.size < 2:
        return math.nan
    std = float(np.std(values, ddof=1))
    mean = float(np.mean(values))
    if std == 0.0 or std <= 1e-12 * abs(mean):
        return math.nan
    return mean / std


def icir(ic: Any, periods_per_year: float | None = None, horizon: int = 1) -> float:
    """Information ratio of the IC: ``mean(IC_t) / std(IC_t, ddof=1)`` over the timestamps with a defined IC.

    Without ``periods_per_year`` it is **per timestamp, not annualised** (Qlib's "ICIR"). With it, it is annualised
    as ``ICIR * sqrt(periods_per_year / horizon)``: one independent draw of the IC per ``horizon`` bars (the
    square-root-of-time rule for non-overlapping h-bar outcomes, cf. Grinold & Kahn's ``IR = IC * sqrt(breadth)``);
    with overlapping outcomes this is an approximation.

    Args:
        ic: ``(T,)`` per-timestamp ICs; NaN entries are excluded.
        periods_per_year: bars per year (> 0) to annualise, or None.
        horizon: bars of the realised return the IC is measured on (>= 1); used only when annualising.

    Returns:
        The ratio (dimensionless); NaN with fewer than 2 defined ICs or a zero standard deviation.

    Raises:
        ValueError: not 1-D, +/-inf, a non-positive ``periods_per_year`` or a bad ``horizon``.
    """
    ratio = _ratio(_finite_values(ic, "ic"))
    if periods_per_year is None:
        return ratio
    return ratio * _annual_factor(periods_per_year, _check_horizon(horizon))


def _annual_factor(periods_per_year: float, horizon: int) -> float:
    ppy = float(periods_per_year)
    if not math.isfinite(ppy) or ppy <= 0.0:
        raise ValueError(f"periods_per_year must be finite and > 0, got {periods_per_year!r}")
    return math.sqrt(ppy / horizon)


def t_stat(values: Any, lags: int = 0) -> float:
    """t-statistic of the mean of a per-timestamp series (e.g. the IC or the long-short return), H0: mean = 0.

    ``lags = 0``: Student's one-sample ``mean / (std(ddof=1) / sqrt(T))`` (``scipy.stats.ttest_1samp``), for
    serially independent values (e.g. 1-bar returns). ``lags > 0``: ``mean / sqrt(LRV / T)`` with the Newey-West
    (1987) long-run variance, Bartlett weights ``1 - l / (lags + 1)`` for ``l = 1..lags``
    (``arch.covariance.kernel.Bartlett``); use ``lags = h - 1`` for values built on overlapping h-bar outcomes.

    Args:
        values: ``(T,)`` series; NaN entries (undefined timestamps) are excluded.
        lags: autocorrelation lags (>= 0).

    Returns:
        The t-statistic; NaN with fewer than 2 values or zero variance.

    Raises:
        ValueError: not 1-D, +/-inf, or a bad ``lags``.
    """
    if isinstance(lags, bool) or not isinstance(lags, int | np.integer) or lags < 0:
        raise ValueError(f"lags must be an int >= 0, got {lags!r}")
    x = _finite_values(values, "values")
    if x.size < 2 or math.isnan(_ratio(x)):
        return math.nan
    if lags == 0:
        return float(ttest_1samp(x, 0.0).statistic)
    long_run = float(Bartlett(x, bandwidth=int(lags)).cov.long_run[0, 0])
    if long_run <= 0.0:
        return math.nan
    return float(x.mean() / math.sqrt(long_run / x.size))


# --------------------------------------------------------------------------- per symbol


def _per_symbol(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    scored = frame.loc[frame["realised"].notna()]
    out: dict[str, dict[str, float]] = {}
    for sym, rows in scored.groupby("symbol", sort=True):
        p = rows["predicted"].to_numpy()
        r = rows["realised"].to_numpy()
        degenerate = p.size < 3 or np.ptp(p) == 0 or np.ptp(r) == 0
        out[str(sym)] = {
            "n_rows": int(p.size),
            "ic": math.nan if degenerate else float(pearsonr(p, r).statistic),
            "rank_ic": math.nan if degenerate else float(spearmanr(p, r).statistic),
            "directional_accuracy": directional_accuracy(p, r),
        }
    return out


def per_symbol_metrics(timestamp: Any, symbol: Any, predicted: Any, realised: Any) -> dict[str, dict[str, float]]:
    """Time-series forecast quality of each symbol on its own scored rows.

    Per symbol: ``n_rows`` (scored rows), ``ic`` (Pearson correlation over time, ``scipy.stats.pearsonr``),
    ``rank_ic`` (Spearman, ``scipy.stats.spearmanr``), both NaN with fewer than 3 rows or constant input (unlike
    :func:`raytrade.evaluation.forecast.information_coefficient`, which returns 0.0 there), and
    ``directional_accuracy`` (share of rows whose predicted sign matches the realised sign, rows with realised 0
    excluded; :func:`raytrade.evaluation.forecast.directional_accuracy`).

    Args:
        timestamp, symbol, predicted, realised: ``(n,)`` long-format rows as in :func:`rank_ic_series`.

    Returns:
        ``{symbol (str): {"n_rows", "ic", "rank_ic", "directional_accuracy"}}`` for every symbol with a scored row,
        symbols in sorted order.

    Raises:
        CrossSectionInputError (a ValueError): as :func:`rank_ic_series`.
    """
    return _per_symbol(_frame(timestamp, symbol, predicted, {"realised": realised}))


# --------------------------------------------------------------------------- report


def _entry(point: float, low: float, high: float, scale: float = 1.0) -> dict[str, float]:
    return {"value": float(point) * scale, "ci_low": float(low) * scale, "ci_high": float(high) * scale}


def cross_sectional_metrics(
    timestamp: Any,
    symbol: Any,
    predicted: Any,
    realised: Any,
    next_return: Any = None,
    *,
    k: int | None = None,
    quantile: float | None = None,
    horizon: int = 1,
    next_return_is_log: bool = True,
    min_symbols: int = 2,
    periods_per_year: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    block_length: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-sectional and per-symbol forecast metrics of a universe, with stationary-bootstrap intervals.

    ``rank_ic`` is the time mean of :func:`rank_ic_series`; ``icir`` is :func:`icir` (per timestamp);
    ``long_short_return`` is the time mean of :func:`long_short_series`, on ``next_return`` when given (converted
    to simple returns by ``expm1`` when ``next_return_is_log``: the **per-bar simple return** of a book rebalanced
    every bar, long 1 / short 1, before costs) and otherwise on ``realised`` (per forecast horizon, in
    ``realised``'s units). Each comes as ``{"value", "ci_low", "ci_high"}``: the point estimate and the percentile
    interval of :func:`~raytrade.evaluation.bootstrap.bootstrap_ci`, which resamples the per-timestamp series
    (NaN timestamps excluded) in stationary-bootstrap blocks, so the autocorrelation from overlapping horizons is
    kept (see the module docstring).

    Args:
        timestamp, symbol, predicted, realised: ``(n,)`` long-format rows as in :func:`rank_ic_series`.
        next_return: optional ``(n,)`` 1-bar forward return ``ln(close[t+1] / close[t])``; NaN = not known.
        k, quantile: symbols per leg of the long-short, as in :func:`long_short_series`.
        horizon: bars of ``realised`` (>= 1): Newey-West lags ``horizon - 1`` for the t-statistics of the IC
            and of a long-short on ``realised``, and the annualisation of the ICIR.
        next_return_is_log: whether ``next_return`` is a log return (the project's ``label_next_return``).
        min_symbols: fewest scored symbols for a per-timestamp IC (>= 2).
        periods_per_year: bars per year to add ``icir_annualised`` (see :func:`icir`); None = NaN entry.
        n_bootstrap, confidence, block_length, seed: of :func:`~raytrade.evaluation.bootstrap.bootstrap_ci`
            (``block_length`` None = Politis-White automatic length of each series). Deterministic given ``seed``.

    Returns:
        A JSON-able dict (plain floats, ints, str, None; NaN where undefined):
        ``rank_ic``, ``icir``, ``icir_annualised``, ``long_short_return``: ``{"value", "ci_low", "ci_high"}``;
        ``ic_t_stat``, ``long_short_t_stat`` (:func:`t_stat`; lags ``horizon - 1``, or 0 for ``next_return``);
        ``long_short_basis`` (``"next_return"`` or ``"realised"``), ``long_short_k``, ``long_short_quantile``;
        ``n_timestamps`` (timestamps with a defined IC: the sample of ``rank_ic``/``icir``),
        ``n_long_short_timestamps``, ``n_timestamps_input`` (distinct timestamps given), ``n_symbols`` (symbols
        with a scored row), ``n_rows`` (rows with ``realised`` known); ``horizon``, ``periods_per_year``,
        ``confidence``, ``n_bootstrap``, ``seed``; ``per_symbol``: :func:`per_symbol_metrics`.

    Raises:
        CrossSectionInputError (a ValueError): as :func:`rank_ic_series`, for ``next_return`` too (``predicted``
            must be finite wherever ``realised`` or ``next_return`` is known).
        ValueError: bad ``k``/``quantile``/``horizon``/``min_symbols``/``periods_per_year`` or bootstrap arguments.
    """
    k, quantile = _check_legs(k, quantile)
    horizon = _check_horizon(horizon)
    min_symbols = _check_min_symbols(min_symbols)
    annual = math.nan if periods_per_year is None else _annual_factor(periods_per_year, horizon)
    outcomes = {"realised": realised}
    if next_return is not None:
        outcomes["next_return"] = next_return
    frame = _frame(timestamp, symbol, predicted, outcomes)

    ic = _rank_ic(frame, "realised", min_symbols)
    if next_return is not None:
        basis, ls_lags = "next_return", 0
        if next_return_is_log:
            frame["next_return"] = np.expm1(frame["next_return"].to_numpy())
    else:
        basis, ls_lags = "realised", horizon - 1
    spread = _long_short(frame, basis, k, quantile)
    ic_values = _finite_values(ic, "ic")
    ls_values = _finite_values(spread, "long_short")

    def ci(statistic: Any, values: np.ndarray) -> tuple[float, float, float]:
        if values.size == 0:
            return math.nan, math.nan, math.nan
        return bootstrap_ci(statistic, values, n_bootstrap=n_bootstrap, confidence=confidence,
                            block_length=block_length, seed=seed)

    icir_ci = ci(_ratio, ic_values)
    scored = frame["realised"].notna()
    return {
        "rank_ic": _entry(*ci(np.mean, ic_values)),
        "icir": _entry(*icir_ci),
        "icir_annualised": _entry(*icir_ci, scale=annual),
        "ic_t_stat": t_stat(ic_values, lags=horizon - 1),
        "long_short_return": _entry(*ci(np.mean, ls_values)),
        "long_short_t_stat": t_stat(ls_values, lags=ls_lags),
        "long_short_basis": basis,
        "long_short_k": k,
        "long_short_quantile": quantile,
        "n_timestamps": int(ic_values.size),
        "n_long_short_timestamps": int(ls_values.size),
        "n_timestamps_input": int(frame["timestamp"].nunique()),
        "n_symbols": int(frame.loc[scored, "symbol"].nunique()),
        "n_rows": int(scored.sum()),
        "horizon": horizon,
        "periods_per_year": None if periods_per_year is None else float(periods_per_year),
        "confidence": float(confidence),
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "per_symbol": _per_symbol(frame),
    }
