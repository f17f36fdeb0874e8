"""Causal cross-sectional features of a universe: ranks and z-scores across symbols at each bar, the
equal-weight universe return, and each symbol's rolling beta and correlation to it.

Every value at bar t of a symbol uses bars at times <= t of every symbol (nothing is centred, no
full-sample statistic, the universe series is cumulated left to right and read as of t).

**Members.** The cross-section at timestamp t is the set of symbols that have a *member row* at
exactly t: a bar whose per-symbol features (the ``columns`` of the run: TA-Lib features and, when on,
the reference-symbol ones) are all defined AND whose own inputs below are defined. A symbol still in
its own warm-up at t is not a member at t, so no asset enters the cross-section (nor the universe
return) before its own warm-up ends; a symbol with no bar at t (late start, missed day, other
calendar) is not a member at t either. Membership is decided before the beta warm-up: a member row
whose ``xs_beta`` is still undefined counts in the ranks and the universe return at t, but is itself
left out of the model-ready rows (see :func:`raytrade.dataset.preprocess.preprocess`).

**Per-symbol inputs** (over the symbol's own bars, ``w`` = ``FeatureConfig.cross_sectional_window``):

- return: ``ret_w = ln(close_t / close_{t-w})`` (TA-Lib ROCR), a log return (fraction);
- volatility: ``vol_w`` = population std of the 1-bar log returns over the last ``w`` bars (TA-Lib
  STDDEV), per bar (not annualised);
- volume: ``volu_w = ln(1 + volume_t) - ln(1 + SMA_w(volume))`` (TA-Lib SMA): volume relative to the
  symbol's own trailing mean, scale-free (0 = an average bar; finite on zero-volume bars).

**Columns** (all scale-free; ``n_t`` = number of members at t):

- ``xs_{ret,vol,volume}_rank``: percentile rank in [0, 1] of the input among the members at t,
  ``(r - 1) / (n_t - 1)`` with ``r`` the average rank (ties share the mean of their ranks, as
  ``scipy.stats.rankdata(method="average")``): 0 = lowest, 1 = highest; 0.5 when ``n_t = 1``.
- ``xs_{ret,vol,volume}_z``: cross-sectional z-score ``(x - mean_t) / std_t`` over the members at t
  (population std, ddof 0); 0 when ``std_t <= 1e-12`` (one member, or all equal).
- ``xs_universe_ret``: equal-weight universe log return at t, ``u_t = mean over members at t of
  r1 = ln(close_t / close_prev)`` (each member's return since its own previous bar).
- ``xs_beta``, ``xs_corr``: over the last ``beta_window`` member rows of the symbol, the beta
  ``cov(r1, u) / var(u)`` and the Pearson correlation of the symbol's own 1-bar log return with the
  universe return *over the same interval*: ``u_k = U(t_k) - U(prev_k)`` where ``U`` is the
  cumulative universe log return on the sorted union of member timestamps, read as of a time (last
  value at or before it; 0 before the first), and ``prev_k`` is the timestamp of the symbol's previous
  bar. A symbol that missed a day therefore pairs its 2-day return with the universe's 2 days.
  Correlation: TA-Lib CORREL; beta = CORREL x STDDEV(r1) / STDDEV(u) (TA-Lib, population; the ddof
  cancels), 0 where the universe return is constant over the window. Undefined (NaN) for the first
  ``beta_window - 1`` member rows of each symbol.

Sources: cross-sectional rank/z-score normalisation as in Qlib's ``CSRankNorm``/``CSZScoreNorm``
processors; beta as the OLS slope of asset on market return (Sharpe 1964, CAPM).

Two entry points: :func:`symbol_inputs` (one symbol's bars -> its private ``_xs_*`` input columns,
run per symbol in parallel by the Ray Data step) and :func:`cross_sectional_step` (the member rows of
all symbols -> the ``xs_`` columns, vectorised over timestamps). :func:`add_cross_sectional` chains
both on a long per-symbol feature frame without Ray (for serving and tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import talib

from raytrade.config import FeatureConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.errors import DataValidationError

# private per-symbol inputs carried from the per-symbol step to the cross-sectional step
R1, PREV_TS, RET, VOL, VOLU = "_xs_r1", "_xs_prev_ts", "_xs_ret", "_xs_vol", "_xs_volume"
INPUT_COLUMNS = (R1, PREV_TS, RET, VOL, VOLU)
_RANKED = (("ret", RET), ("vol", VOL), ("volume", VOLU))
_FLAT = 1e-12  # a cross-sectional (or window) std at or below this counts as zero: all members equal


@dataclass(frozen=True)
class CrossSectionalSpec:
    """One ``xs_`` column: ``lookback`` = leading rows of a symbol whose value is undefined, counted in
    the symbol's own bars (``inputs``) or in its member rows (``members``)."""

    name: str
    lookback: int
    counted_in: str
    formula: str


def cross_sectional_specs(cfg: FeatureConfig) -> list[CrossSectionalSpec]:
    """The ``xs_`` columns for ``cfg`` in column order, with their lookbacks and formulas (for docs)."""
    w, b = cfg.cross_sectional_window, cfg.beta_window
    S = CrossSectionalSpec
    inputs = {
        "ret": (w, f"ln(close_t / close_t-{w}) (TA-Lib ROCR)"),
        "vol": (w, f"population std of 1-bar log returns over {w} bars (TA-Lib STDDEV)"),
        "volume": (w - 1, f"ln(1 + volume_t) - ln(1 + SMA_{w}(volume)) (TA-Lib SMA)"),
    }
    specs = []
    for key, (lookback, formula) in inputs.items():
        specs.append(S(f"xs_{key}_rank", lookback, "bars", f"percentile rank in [0, 1] across the members at t of "
                       f"{formula}; (average rank - 1) / (n - 1), 0.5 for one member"))
        specs.append(S(f"xs_{key}_z", lookback, "bars", f"cross-sectional z-score (population std) across the "
                       f"members at t of {formula}; 0 when all equal or one member"))
    specs += [
        S("xs_universe_ret", 1, "bars", "equal-weight universe log return: mean of the members' ln(close_t / "
          "close_prev) at t"),
        S("xs_beta", b - 1, "member rows", f"beta of the 1-bar log return on the universe return over the same "
          f"interval, last {b} member rows: CORREL x STDDEV(r) / STDDEV(u) (TA-Lib); 0 if u is constant"),
        S("xs_corr", b - 1, "member rows", f"correlation of the 1-bar log return with the universe return over "
          f"the same interval, last {b} member rows (TA-Lib CORREL)"),
    ]
    return specs


def cross_sectional_columns(cfg: FeatureConfig) -> list[str]:
    """Names of the ``xs_`` columns, in order."""
    return [s.name for s in cross_sectional_specs(cfg)]


def cross_sectional_enabled(cfg: FeatureConfig, n_symbols: int) -> bool:
    """``cfg.cross_sectional``, or (when None) whether there are several symbols."""
    return cfg.cross_sectional if cfg.cross_sectional is not None else n_symbols > 1


def cross_sectional_warmup(cfg: FeatureConfig, per_symbol_warmup: int) -> int:
    """Leading bars of a symbol (trading without gaps in its features) before its first row with every ``xs_``
    column defined: it becomes a member after ``max(per_symbol_warmup, w)`` bars (``w`` =
    ``cross_sectional_window``), then needs ``beta_window - 1`` more rows for beta and correlation. Serving and the
    online store need at least this many bars of a symbol before its first window.
    """
    return max(per_symbol_warmup, cfg.cross_sectional_window) + cfg.beta_window - 1


def symbol_inputs(bars: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """The private inputs of ONE symbol's bars (oldest first), aligned to its rows: ``_xs_r1`` (1-bar log
    return), ``_xs_prev_ts`` (timestamp of the previous bar; NaT first), ``_xs_ret``, ``_xs_vol``,
    ``_xs_volume`` (see the module docstring; NaN for their first ``w`` or ``w - 1`` bars).

    Trailing TA-Lib windows over the symbol's own bars only, so the value at t uses its bars <= t.
    """
    c = bars["close"].to_numpy(dtype=np.float64)
    v = bars["volume"].to_numpy(dtype=np.float64)
    r1, ret, vol, volu = input_series(c, v, cfg.cross_sectional_window)
    ts = bars[TIMESTAMP].reset_index(drop=True)
    return pd.DataFrame({R1: r1, PREV_TS: ts.shift(1), RET: ret, VOL: vol, VOLU: volu})


def input_series(close: np.ndarray, volume: np.ndarray, window: int,
                 ta: Any = talib) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(r1, ret_w, vol_w, volu_w)`` of one symbol's ``close`` and ``volume`` ``(bars,)`` float64 (the module
    docstring's per-symbol inputs, ``w = window``). ``ta``: TA-Lib's Function API, or a stand-in that runs the same
    calls on stream handles (:mod:`raytrade.features.streaming`), so the incremental inputs are the same numbers."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r1 = np.log(ta.ROCR(close, timeperiod=1))
        ret = np.log(ta.ROCR(close, timeperiod=window))
        vol = ta.STDDEV(r1, timeperiod=window, nbdev=1.0)
        volu = np.log1p(volume) - np.log1p(ta.SMA(volume, timeperiod=window))
    return r1, ret, vol, volu


def _rank_and_z(values: pd.Series, by: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Percentile rank in [0, 1] and z-score of ``values`` within each group of ``by`` (timestamps)."""
    grouped = values.groupby(by, sort=False)
    n = grouped.transform("count").to_numpy(dtype=np.float64)
    rank = grouped.rank(method="average").to_numpy(dtype=np.float64)
    mean = grouped.transform("mean").to_numpy(dtype=np.float64)
    std = grouped.transform("std", ddof=0).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(n > 1, (rank - 1.0) / (n - 1.0), 0.5)
        z = np.where(std > _FLAT, (values.to_numpy() - mean) / std, 0.0)
    return pct, z


def universe_return(members: pd.DataFrame) -> pd.Series:
    """Equal-weight universe log return per member timestamp: mean of the members' ``_xs_r1`` at t,
    indexed by the sorted timestamps. Causal: the value at t uses the members' bars at t only."""
    return members.groupby(TIMESTAMP, sort=True)[R1].mean()


def _ns(times: pd.Series | pd.Index) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (NaT -> the smallest int64, before every time)."""
    return pd.DatetimeIndex(times).as_unit("ns").asi8


def _asof(values: np.ndarray, index: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` at the last ``index`` entry <= each ``at`` (0 before the first or where ``at`` is NaT);
    ``index`` and ``at`` in int64 ns."""
    pos = np.searchsorted(index, at, side="right") - 1
    out = np.zeros(len(at))
    ok = pos >= 0
    out[ok] = values[pos[ok]]
    return out


def universe_pairs(members: pd.DataFrame) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """The universe series of member rows: ``(u, U, u_pair)`` with ``u`` the :func:`universe_return` per sorted
    member timestamp, ``U`` its cumulative sum (left to right, so causal) and ``u_pair`` ``(rows,)`` each row's
    universe return over its own bar-to-bar interval, ``U(t_k) - U(as of prev_k)``."""
    universe = universe_return(members)
    u_index = _ns(universe.index)
    cumulative = np.cumsum(universe.to_numpy(dtype=np.float64))
    u_pair = _asof(cumulative, u_index, _ns(members[TIMESTAMP])) - _asof(cumulative, u_index, _ns(members[PREV_TS]))
    return universe, cumulative, u_pair


def beta_corr(r: np.ndarray, u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs_beta, xs_corr)`` over trailing ``n`` rows of a symbol's member-row returns ``r`` and universe returns
    over the same intervals ``u`` (TA-Lib CORREL and STDDEV, population; NaN for the first ``n - 1`` rows)."""
    c = talib.CORREL(r, u, timeperiod=n)
    sd_r = talib.STDDEV(r, timeperiod=n, nbdev=1.0)
    sd_u = talib.STDDEV(u, timeperiod=n, nbdev=1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(sd_u > _FLAT, c * sd_r / sd_u, np.where(np.isnan(sd_u), np.nan, 0.0))
    return b, c


def cross_sectional_step(members: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """The ``xs_`` columns of the member rows of a universe.

    Args:
        members: long frame of member rows only (see module docstring): ``timestamp``, ``symbol`` and the
            :data:`INPUT_COLUMNS` from :func:`symbol_inputs`, each symbol's rows oldest first (symbols in any
            order, interleaved or not). One row per (symbol, timestamp).
        cfg: feature settings (``beta_window``).

    Returns:
        DataFrame with the :func:`cross_sectional_columns` (float64), same index as ``members``.
        ``xs_beta``/``xs_corr`` are NaN on the first ``beta_window - 1`` rows of each symbol.

    Raises:
        DataValidationError: an input is undefined on a member row, or a (symbol, timestamp) repeats.
    """
    missing = [c for c in (TIMESTAMP, SYMBOL, *INPUT_COLUMNS) if c not in members]
    if missing:
        raise DataValidationError(f"cross-sectional features: member rows lack the column(s) {missing}")
    for col in (R1, RET, VOL, VOLU):
        bad = members[col].isna().to_numpy()
        if bad.any():
            row = members[bad].iloc[0]
            raise DataValidationError(f"cross-sectional features: input {col} undefined on a member row "
                                      f"(symbol {row[SYMBOL]}, timestamp {row[TIMESTAMP]})")
    dup = members.duplicated([SYMBOL, TIMESTAMP]).to_numpy()
    if dup.any():
        row = members[dup].iloc[0]
        raise DataValidationError(f"cross-sectional features: duplicate member row (symbol {row[SYMBOL]}, "
                                  f"timestamp {row[TIMESTAMP]})")
    out: dict[str, np.ndarray] = {}
    ts = members[TIMESTAMP]
    for key, col in _RANKED:
        out[f"xs_{key}_rank"], out[f"xs_{key}_z"] = _rank_and_z(members[col], ts)

    universe, cumulative, u_pair = universe_pairs(members)
    out["xs_universe_ret"] = universe.reindex(ts).to_numpy(dtype=np.float64)
    r1 = members[R1].to_numpy(dtype=np.float64)
    n = cfg.beta_window
    beta = np.full(len(members), np.nan)
    corr = np.full(len(members), np.nan)
    for idx in members.groupby(SYMBOL, sort=False).indices.values():
        if len(idx) < n:
            continue
        beta[idx], corr[idx] = beta_corr(r1[idx], u_pair[idx], n)
    out["xs_beta"], out["xs_corr"] = beta, corr
    return pd.DataFrame({name: out[name] for name in cross_sectional_columns(cfg)}, index=members.index)


def add_cross_sectional(frame: pd.DataFrame, cfg: FeatureConfig, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Add the ``xs_`` columns to a long per-symbol feature frame (pure: no Ray, nothing dropped or reordered).

    Args:
        frame: the per-symbol output of :func:`raytrade.features.technical.compute_features` for several
            symbols, concatenated (``timestamp``, ``symbol``, OHLCV, feature columns; warm-up rows included),
            each symbol's rows consecutive bars oldest first.
        cfg: feature settings.
        columns: the per-symbol feature columns whose completeness makes a row a member (default: every
            column of ``frame`` but ``timestamp``, ``symbol``, OHLCV, ``label_*`` and ``xs_*``).

    Returns:
        A copy of ``frame`` with the ``xs_`` columns appended; NaN on rows that are not members (warm-up)
        and where a column is still in its warm-up.

    Raises:
        DataValidationError: a symbol's timestamps are not strictly increasing.
    """
    skip = {TIMESTAMP, SYMBOL, "open", "high", "low", "close", "volume"}
    cols: Sequence[str] = list(columns) if columns is not None else [
        c for c in frame if c not in skip and not c.startswith(("label_", "xs_", "_"))]
    parts = []
    for sym, rows in frame.groupby(SYMBOL, sort=False):
        t = rows[TIMESTAMP]
        if not t.is_monotonic_increasing or t.duplicated().any():
            raise DataValidationError(f"cross-sectional features: timestamps of symbol {sym} are not strictly "
                                      f"increasing (rule: one bar per timestamp, oldest first)")
        parts.append(symbol_inputs(rows, cfg).set_axis(rows.index))
    inputs = pd.concat(parts).reindex(frame.index)
    xs = cross_sectional_step(member_rows(frame, inputs, cols), cfg).reindex(frame.index)
    return pd.concat([frame, xs], axis=1)


def member_rows(frame: pd.DataFrame, inputs: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The member rows (module docstring) of a long per-symbol feature ``frame``: ``timestamp``, ``symbol`` and the
    :data:`INPUT_COLUMNS` (``inputs``, aligned to ``frame``'s index) of the rows whose ``columns`` and inputs are all
    defined, in ``frame``'s order."""
    member = frame[list(columns)].notna().all(axis=1) & inputs[[R1, RET, VOL, VOLU]].notna().all(axis=1)
    return pd.concat([frame.loc[member, [TIMESTAMP, SYMBOL]], inputs.loc[member]], axis=1)
