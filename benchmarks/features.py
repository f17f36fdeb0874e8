"""Feature computation throughput, in four parts, each against a named baseline in the same run.

1. The full feature set (:func:`raytrade.features.compute_features` with the default
   :class:`~raytrade.config.FeatureConfig`) on about 1,000,000 one-minute bars of one symbol, in one
   process on one core. Reference: the same call on the untiled 45,031 source bars (equal rows/s means
   the cost is linear in the number of bars).
2. Six indicators (RSI, MACD, Bollinger %B, ATR, ADX, OBV) on the same bars: raytrade's wrappers
   (``compute_features(..., names=...)``, candidate) against the raw TA-Lib calls on numpy arrays
   (baseline 1) and against the pure-Python/pandas ``ta`` library (baseline 2), with value checks.
3. Ray Data :func:`raytrade.dataset.preprocess.preprocess` (one task per symbol) on 1 vs 2 CPUs on the
   real 10-symbol alt/BTC 5-minute file, against a serial in-process loop doing the same work
   (:func:`serial_preprocess`: :func:`~raytrade.dataset.preprocess.symbol_features` per symbol, then the
   cross-sectional step); plus, as an extra, the same on that file tiled 10x in time so that per-symbol
   work dominates Ray's fixed cost. The time of the cross-sectional step (serial, in the driver) is
   recorded apart on both sides.
4. The same on a large real universe (issue 16): the 29 Dow stocks daily (``stooq_dow30_1d``, loaded with
   :func:`raytrade.data.universe.load_universe`), as it is and tiled 10x in time.

Only real bars are used. The larger inputs are real bars tiled end to end: each copy's prices are
rescaled so that its first open continues from the previous copy's last close, volumes are kept and
timestamps continue (see :func:`tile_minute_bars` and :func:`tile_in_time`).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    SHARED_DATA,
    busy_note,
    fmt_rate,
    fmt_s,
    load_average,
    relpath,
    summarize_times,
    time_repeats,
    write_results,
)

NAME = "features"
TITLE = "feature computation throughput"
MINUTE_FILE = SHARED_DATA / "nautilus_ftx_btcperp_1m.parquet"
MULTI_FILE = SHARED_DATA / "freqtrade_binance_altbtc_5m.parquet"
UNIVERSE_FILE = SHARED_DATA / "stooq_dow30_1d.parquet"
TARGET_ROWS = 1_000_000
WARMUP = 1

FULL_REPEATS = 3
SIX_REPEATS = 5
TA_REPEATS = 3  # the `ta` library loops in Python (ATR, ADX): ~15 s per call on 1M bars
SIX_FEATURES = ["rsi_14", "macd", "macd_signal", "macd_hist", "bb_pctb_20", "natr_14", "adx_14", "obv_flow_24"]
RATIO_TARGET = 2.0  # issue target: raytrade / raw TA-Lib <= 2.0
RTOL, ATOL = 1e-6, 1e-12
TA_CHECK_WARMUP = 1_000  # bars skipped before comparing `ta` with TA-Lib (different EMA/Wilder seeds)
OBV_FLOW_WINDOW = 24

RAY_CPUS = (1, 2)
RAY_REPEATS = 5
BIG_TILES = 10
BIG_REPEATS = 3  # extra input, kept short so that the whole benchmark stays within a few minutes
UNIVERSE_TILES = 10
UNIVERSE_REPEATS = 3
SPEEDUP_TARGET = 1.6  # issue target: preprocess on 2 CPUs >= 1.6x faster than on 1 CPU

CANDIDATE_FULL = "compute_features(bars, FeatureConfig()): all features, one symbol, one process"
CANDIDATE_SIX = "raytrade: compute_features(bars, cfg, names=[8 columns of the 6 indicators])"
BASELINE_TALIB = "raw TA-Lib: RSI, MACD, BBANDS, NATR, ADX, OBV on numpy arrays"
EXTRA_TALIB_NORM = "(extra) raw TA-Lib + the same normalisation, numpy arrays, no DataFrame"
BASELINE_TA = "ta 0.11: RSIIndicator, MACD, BollingerBands, AverageTrueRange, ADXIndicator, OBV on pandas Series"
BASELINE_SERIAL = ("serial: reference_series + symbol_features per symbol (loop) + pd.concat + "
                   "cross_sectional_step, one process")
CANDIDATE_RAY = "Ray Data: preprocess() (from_pandas + map_batches, one task per symbol)"

_OHLCV = ("open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close")


# ---------------------------------------------------------------------------------------------------
# inputs: real bars tiled end to end


def _continued_scales(first_open: float, last_close: float, copies: int) -> np.ndarray:
    """Price factor of each copy so that copy k's first open equals copy k-1's last close."""
    scales = np.ones(copies)
    for k in range(1, copies):
        scales[k] = scales[k - 1] * last_close / first_open
    return scales


def tile_minute_bars(bars: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """``n_rows`` one-minute bars from one symbol's real bars repeated end to end.

    Each copy's OHLC is multiplied by a factor that makes its first open equal the previous copy's
    last close (so there is no price jump at the seams); volumes are kept as they are; timestamps run
    on at 1-minute steps from the first source bar. The last copy is cut to give exactly ``n_rows``.
    """
    if bars["symbol"].nunique() != 1:
        raise ValueError("tile_minute_bars needs one symbol's bars")
    copies = -(-n_rows // len(bars))
    scales = _continued_scales(float(bars["open"].iloc[0]), float(bars["close"].iloc[-1]), copies)
    cols: dict[str, np.ndarray] = {}
    for col in _OHLCV:
        src = bars[col].to_numpy(dtype=np.float64)
        factors = scales if col in _PRICES else np.ones(copies)
        cols[col] = np.concatenate([src * f for f in factors])[:n_rows]
    return pd.DataFrame({
        "timestamp": pd.date_range(bars["timestamp"].iloc[0], periods=n_rows, freq="1min"),
        "symbol": pd.Series([bars["symbol"].iloc[0]] * n_rows, dtype=bars["symbol"].dtype),
        **cols,
    })


def tile_in_time(bars: pd.DataFrame, copies: int) -> pd.DataFrame:
    """Every symbol's bars repeated ``copies`` times in time, sorted by symbol then timestamp.

    Copy k is shifted by k x (the whole file's span + one bar), the same shift for every symbol, so
    symbols stay aligned in time (the cross-asset features need that) and each symbol's gaps recur.
    Prices are rescaled per symbol for continuity as in :func:`tile_minute_bars`; volumes are kept.
    """
    ts = bars["timestamp"]
    step = ts.sort_values().diff().dropna()
    bar = step[step > pd.Timedelta(0)].min()
    shift = ts.max() - ts.min() + bar
    frames = []
    for _, g in bars.groupby("symbol", sort=False):
        g = g.reset_index(drop=True)
        scales = _continued_scales(float(g["open"].iloc[0]), float(g["close"].iloc[-1]), copies)
        for k, scale in enumerate(scales):
            part = g.copy()
            part[list(_PRICES)] = g[list(_PRICES)] * scale
            part["timestamp"] = g["timestamp"] + k * shift
            frames.append(part)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# comparisons


def _stats(times: list[float], rows: int, **extra: Any) -> dict[str, Any]:
    stats = summarize_times(times)
    stats["rows_per_s"] = rows / stats["median_s"]
    stats.update(extra)
    return stats


def compare(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> dict[str, Any]:
    """``np.allclose(actual, expected, rtol, atol)`` over the values both define, plus the worst differences.

    ``max_rel_diff`` is ``max |a - e| / |e|`` over the compared values with ``e != 0``;
    ``nan_positions_equal`` says whether both are undefined at the same bars.
    """
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    a_def, e_def = np.isfinite(a), np.isfinite(e)
    both = a_def & e_def
    diff = np.abs(a[both] - e[both])
    nonzero = e[both] != 0
    return {
        "compared": int(both.sum()),
        "nan_positions_equal": bool((a_def == e_def).all()),
        "defined_only_in_one": int((a_def != e_def).sum()),
        "max_abs_diff": float(diff.max()) if diff.size else None,
        "max_rel_diff": float((diff[nonzero] / np.abs(e[both][nonzero])).max()) if nonzero.any() else None,
        "allclose": bool(both.any() and np.allclose(a[both], e[both], rtol=rtol, atol=atol)),
    }


# ---------------------------------------------------------------------------------------------------
# part 1: the full feature set


def run_full_set(bars: pd.DataFrame, source: pd.DataFrame) -> dict[str, Any]:
    from raytrade.config import FeatureConfig
    from raytrade.features import feature_columns, warmup_bars
    from raytrade.features.technical import compute_features

    cfg = FeatureConfig()
    names = feature_columns(cfg)
    n_feat = len(names)

    def measure(frame: pd.DataFrame) -> tuple[list[float], float]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        times = time_repeats(lambda: compute_features(frame, cfg), FULL_REPEATS, warmup=WARMUP)
        return times, (time.process_time() - cpu0) / (time.perf_counter() - wall0)

    # the output is checked first and released before timing: a 1M x 73 frame held alive makes the
    # next call's fresh allocations page-fault and can double that call's time
    warm = warmup_bars(cfg)
    out = compute_features(bars, cfg)
    output_shape = list(out.shape)
    undefined_after_warmup = int((~np.isfinite(out[names].to_numpy(dtype=np.float64)[warm:])).sum())
    del out
    times, cpu_per_wall = measure(bars)
    ref_times, ref_cpu_per_wall = measure(source)
    cand = _stats(times, len(bars), cpu_time_over_wall_time=cpu_per_wall)
    ref = _stats(ref_times, len(source), cpu_time_over_wall_time=ref_cpu_per_wall)
    for stats, rows in ((cand, len(bars)), (ref, len(source))):
        stats["rows"] = rows
        stats["features_x_rows_per_s"] = n_feat * stats["rows_per_s"]
    return {
        "candidate": {"name": CANDIDATE_FULL, "input": f"{len(bars):,} tiled one-minute bars", **cand},
        "reference": {"name": "the same call on the untiled source bars", "input": f"{len(source):,} bars", **ref},
        "rows": len(bars),
        "features": n_feat,
        "feature_columns": names,
        "warmup_bars": warm,
        "output_shape": output_shape,
        "non_finite_values_after_warmup": undefined_after_warmup,
        "rows_per_s_ratio_tiled_over_source": cand["rows_per_s"] / ref["rows_per_s"],
        "repeats": FULL_REPEATS,
        "warmup": WARMUP,
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }


# ---------------------------------------------------------------------------------------------------
# part 2: six indicators, raytrade vs raw TA-Lib vs ta


def talib_raw(h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Baseline 1: the six raw TA-Lib calls (outputs in TA-Lib's own units)."""
    import talib

    macd, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    upper, middle, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    return {
        "rsi": talib.RSI(c, timeperiod=14),
        "macd": macd, "macd_signal": signal, "macd_hist": hist,
        "bb_upper": upper, "bb_middle": middle, "bb_lower": lower,
        "natr": talib.NATR(h, low, c, timeperiod=14),
        "adx": talib.ADX(h, low, c, timeperiod=14),
        "obv": talib.OBV(c, v),
    }


def normalise_talib(raw: dict[str, np.ndarray], c: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Raw TA-Lib outputs -> raytrade's feature units, written out here independently of raytrade."""
    import talib

    with np.errstate(invalid="ignore", divide="ignore"):
        width = raw["bb_upper"] - raw["bb_lower"]
        pctb = np.where(width != 0, (c - raw["bb_lower"]) / np.where(width != 0, width, 1.0), 0.5)
        obv = raw["obv"]
        change = np.full(len(obv), np.nan)
        change[OBV_FLOW_WINDOW:] = obv[OBV_FLOW_WINDOW:] - obv[:-OBV_FLOW_WINDOW]
        vsum = talib.SUM(v, timeperiod=OBV_FLOW_WINDOW)
        flow = np.where(vsum != 0, change / np.where(vsum != 0, vsum, 1.0), 0.0)
        return {
            "rsi_14": raw["rsi"] / 100.0,
            "macd": raw["macd"] / c,
            "macd_signal": raw["macd_signal"] / c,
            "macd_hist": raw["macd_hist"] / c,
            "bb_pctb_20": np.where(np.isnan(width), np.nan, pctb),
            "natr_14": raw["natr"] / 100.0,
            "adx_14": raw["adx"] / 100.0,
            "obv_flow_24": np.where(np.isnan(change) | np.isnan(vsum), np.nan, flow),
        }


def ta_library(h: pd.Series, low: pd.Series, c: pd.Series, v: pd.Series) -> dict[str, np.ndarray]:
    """Baseline 2: the same six indicators with the ``ta`` library (pandas, partly Python loops)."""
    from ta.momentum import RSIIndicator
    from ta.trend import MACD, ADXIndicator
    from ta.volatility import AverageTrueRange, BollingerBands
    from ta.volume import OnBalanceVolumeIndicator

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        macd = MACD(c, window_slow=26, window_fast=12, window_sign=9)
        bb = BollingerBands(c, window=20, window_dev=2)
        return {
            "rsi": RSIIndicator(c, window=14).rsi().to_numpy(),
            "macd": macd.macd().to_numpy(),
            "macd_signal": macd.macd_signal().to_numpy(),
            "macd_hist": macd.macd_diff().to_numpy(),
            "bb_pctb": bb.bollinger_pband().to_numpy(),
            "atr": AverageTrueRange(h, low, c, window=14).average_true_range().to_numpy(),
            "adx": ADXIndicator(h, low, c, window=14).adx().to_numpy(),
            "obv": OnBalanceVolumeIndicator(c, v).on_balance_volume().to_numpy(),
        }


def exact_pctb(c: np.ndarray, n: int = 20, k: float = 2.0, chunk: int = 100_000) -> np.ndarray:
    """Bollinger %B with the population std computed two-pass per window (mean-centred), in chunks."""
    from numpy.lib.stride_tricks import sliding_window_view

    out = np.full(len(c), np.nan)
    windows = sliding_window_view(c, n)
    for start in range(0, len(windows), chunk):
        win = windows[start:start + chunk]
        mean = win.mean(axis=1)
        std = np.sqrt(((win - mean[:, None]) ** 2).mean(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start + n - 1:start + n - 1 + len(win)] = (win[:, -1] - (mean - k * std)) / (2 * k * std)
    return out


def check_ta(ta_out: dict[str, np.ndarray], norm: dict[str, np.ndarray], raw: dict[str, np.ndarray],
             c: np.ndarray) -> dict[str, Any]:
    """``ta`` vs raw TA-Lib in raytrade's units from bar :data:`TA_CHECK_WARMUP` on; OBV by bar-to-bar changes."""
    w = TA_CHECK_WARMUP
    pairs = {
        "RSI(14) / 100": (ta_out["rsi"] / 100.0, norm["rsi_14"]),
        "MACD line / close": (ta_out["macd"] / c, norm["macd"]),
        "MACD signal / close": (ta_out["macd_signal"] / c, norm["macd_signal"]),
        "MACD histogram / close": (ta_out["macd_hist"] / c, norm["macd_hist"]),
        "Bollinger %B(20, 2)": (ta_out["bb_pctb"], norm["bb_pctb_20"]),
        "ATR(14) / close vs NATR / 100": (ta_out["atr"] / c, norm["natr_14"]),
        "ADX(14) / 100": (ta_out["adx"] / 100.0, norm["adx_14"]),
    }
    result: dict[str, Any] = {name: compare(a[w:], e[w:]) for name, (a, e) in pairs.items()}

    ta_d, talib_d = np.diff(ta_out["obv"])[w - 1:], np.diff(raw["obv"])[w - 1:]
    unchanged = (np.diff(c) == 0)[w - 1:]
    obv = compare(ta_d, talib_d)
    mismatch = ~np.isclose(ta_d, talib_d, rtol=RTOL, atol=ATOL)
    obv.update({
        "bars_with_unchanged_close": int(unchanged.sum()),
        "mismatching_bars": int(mismatch.sum()),
        "mismatches_all_at_unchanged_close": bool((mismatch <= unchanged).all()),
        "allclose_where_close_changed": bool(np.allclose(ta_d[~unchanged], talib_d[~unchanged], rtol=RTOL, atol=ATOL)),
    })
    result["OBV bar-to-bar change"] = obv

    # %B: which library is off? Both against an exact two-pass (mean-centred) rolling std, and both on
    # the untiled source bars, whose prices stay near their original level.
    exact = exact_pctb(c)
    pctb = result["Bollinger %B(20, 2)"]
    pctb["max_abs_diff_vs_exact_two_pass"] = {
        "ta": float(np.nanmax(np.abs(ta_out["bb_pctb"][w:] - exact[w:]))),
        "talib": float(np.nanmax(np.abs(norm["bb_pctb_20"][w:] - exact[w:]))),
    }
    return result


def _pctb_untiled(source: pd.DataFrame) -> dict[str, Any]:
    """``ta`` vs TA-Lib %B on the untiled source bars (from bar :data:`TA_CHECK_WARMUP` on)."""
    import talib
    from ta.volatility import BollingerBands

    c = source["close"].to_numpy(dtype=np.float64)
    upper, _, lower = talib.BBANDS(c, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ta_pctb = BollingerBands(pd.Series(c), window=20, window_dev=2).bollinger_pband().to_numpy()
        talib_pctb = (c - lower) / (upper - lower)
    w, exact = TA_CHECK_WARMUP, exact_pctb(c)
    return {"rows": len(c), **compare(ta_pctb[w:], talib_pctb[w:]),
            "max_abs_diff_vs_exact_two_pass": {"ta": float(np.nanmax(np.abs(ta_pctb[w:] - exact[w:]))),
                                               "talib": float(np.nanmax(np.abs(talib_pctb[w:] - exact[w:])))}}


def run_six(bars: pd.DataFrame, source: pd.DataFrame) -> dict[str, Any]:
    from raytrade.config import FeatureConfig
    from raytrade.features.technical import compute_features

    cfg = FeatureConfig()
    h, low, c, v = (bars[col].to_numpy(dtype=np.float64) for col in ("high", "low", "close", "volume"))
    hs, ls, cs, vs = (pd.Series(a) for a in (h, low, c, v))
    n = len(bars)

    def candidate() -> pd.DataFrame:
        return compute_features(bars, cfg, names=SIX_FEATURES)

    def talib_norm() -> dict[str, np.ndarray]:
        return normalise_talib(talib_raw(h, low, c, v), c, v)

    # value checks first; their outputs are released before timing (see run_full_set)
    ours, raw = candidate(), talib_raw(h, low, c, v)
    norm = normalise_talib(raw, c, v)
    ours_check = {name: compare(ours[name].to_numpy(dtype=np.float64), norm[name]) for name in SIX_FEATURES}
    ta_out = ta_library(hs, ls, cs, vs)
    ta_check = check_ta(ta_out, norm, raw, c)
    ta_check["Bollinger %B(20, 2)"]["untiled_source"] = _pctb_untiled(source)
    del ours, raw, norm, ta_out

    cand = _stats(time_repeats(candidate, SIX_REPEATS, warmup=WARMUP), n)
    base = _stats(time_repeats(lambda: talib_raw(h, low, c, v), SIX_REPEATS, warmup=WARMUP), n)
    extra = _stats(time_repeats(talib_norm, SIX_REPEATS, warmup=WARMUP), n)
    # `ta` takes ~15 s a call: its check call above is its warm-up
    ta_stats = _stats(time_repeats(lambda: ta_library(hs, ls, cs, vs), TA_REPEATS, warmup=0), n)
    ratio = cand["median_s"] / base["median_s"]
    return {
        "features": SIX_FEATURES,
        "candidate": {"name": CANDIDATE_SIX, "repeats": SIX_REPEATS, **cand},
        "baseline_talib": {"name": BASELINE_TALIB, "repeats": SIX_REPEATS, **base},
        "extra_talib_normalised": {"name": EXTRA_TALIB_NORM, "repeats": SIX_REPEATS, **extra},
        "baseline_ta": {"name": BASELINE_TA, "repeats": TA_REPEATS, **ta_stats},
        "warmup": WARMUP,
        "warmup_note": "one untimed warm-up call per variant right before its repeats; for ta, whose call takes "
                       "~15 s, the untimed call made for the value check is its warm-up",
        "ratio_raytrade_over_talib": ratio,
        "ratio_raytrade_over_talib_fastest_repeats": cand["min_s"] / base["min_s"],
        "ratio_target": RATIO_TARGET,
        "ratio_target_met": bool(ratio <= RATIO_TARGET),
        "ratio_talib_normalised_over_talib": extra["median_s"] / base["median_s"],
        "ratio_ta_over_talib": ta_stats["median_s"] / base["median_s"],
        "check_raytrade_vs_talib": {"rtol": RTOL, "atol": ATOL, "per_feature": ours_check,
                                    "passed": all(r["allclose"] and r["nan_positions_equal"]
                                                  for r in ours_check.values())},
        "check_ta_vs_talib": {"rtol": RTOL, "atol": ATOL, "skipped_bars": TA_CHECK_WARMUP,
                              "per_indicator": ta_check},
    }


# ---------------------------------------------------------------------------------------------------
# part 3: Ray Data preprocess on 1 vs 2 CPUs


def serial_preprocess(bars: pd.DataFrame, features: Any,
                      labels: Any) -> tuple[pd.DataFrame, list[str], dict[str, float]]:
    """The baseline: what :func:`~raytrade.dataset.preprocess.preprocess` computes, serially in this process.

    Step 1 is a loop of :func:`~raytrade.dataset.preprocess.symbol_features` over the symbols (with the
    cross-sectional inputs when the cross-section is on) and one ``pd.concat``; step 2 is
    :func:`~raytrade.features.cross_sectional.cross_sectional_step` over step 1's rows, keeping the rows
    whose ``xs_`` columns are all defined (as ``preprocess`` does). No sort or dtype restore: the loop's
    output is already in ``preprocess``'s order.

    Returns:
        ``(frame, feature columns, {"per_symbol_s", "cross_sectional_s"})`` with the seconds of each step.
    """
    from raytrade.dataset.labels import label_columns
    from raytrade.dataset.preprocess import reference_series, symbol_features
    from raytrade.features import feature_columns
    from raytrade.features.cross_sectional import (
        INPUT_COLUMNS,
        cross_sectional_columns,
        cross_sectional_enabled,
        cross_sectional_step,
    )

    t0 = time.perf_counter()
    _, reference = reference_series(bars, features)
    groups = bars.groupby("symbol", sort=False)
    xs_on = cross_sectional_enabled(features, groups.ngroups)
    frame = pd.concat([symbol_features(g.reset_index(drop=True), features, labels, reference, xs_on)
                       for _, g in groups], ignore_index=True)
    t1 = time.perf_counter()
    cols = feature_columns(features, cross_asset=reference is not None)
    if xs_on:
        xs = cross_sectional_step(frame, features)
        labs = label_columns(frame)
        base = [c for c in frame if c not in labs and c not in INPUT_COLUMNS]
        complete = xs.notna().all(axis=1).to_numpy()
        frame = pd.concat([frame[base], xs, frame[labs]], axis=1)[complete].reset_index(drop=True)
        cols = [*cols, *cross_sectional_columns(features)]
    return frame, cols, {"per_symbol_s": t1 - t0, "cross_sectional_s": time.perf_counter() - t1}


@contextmanager
def timed_calls(module: Any, attr: str, sink: list[float]) -> Iterator[bool]:
    """While active, every call of ``module.attr`` appends its wall seconds to ``sink`` (the function itself
    runs unchanged; the attribute is restored on exit). Yields False, timing nothing, if there is no such
    attribute."""
    original = getattr(module, attr, None)
    if original is None:
        yield False
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(module, attr, timed)
    try:
        yield True
    finally:
        setattr(module, attr, original)


def check_same(serial: pd.DataFrame, ray_out: pd.DataFrame, cols: list[str]) -> dict[str, Any]:
    """Serial and Ray outputs after sorting by (symbol, timestamp): same rows, features and labels."""
    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)

    s, r = tidy(serial), tidy(ray_out)
    same_keys = bool(len(s) == len(r)
                     and (s["symbol"].astype(str).to_numpy() == r["symbol"].astype(str).to_numpy()).all()
                     and (s["timestamp"].to_numpy() == r["timestamp"].to_numpy()).all())
    labels = [col for col in s.columns if col.startswith("label_")]
    same_values = bool(same_keys and np.allclose(s[cols + labels].to_numpy(np.float64),
                                                 r[cols + labels].to_numpy(np.float64), equal_nan=True))
    return {"rows": len(r), "columns_compared": len(cols) + len(labels), "same_rows_symbols_timestamps": same_keys,
            "features_and_labels_allclose": same_values, "passed": same_keys and same_values}


def _split_stats(totals: list[float], xs: list[float] | None, rows: int, **extra: Any) -> dict[str, Any]:
    """Whole-call stats plus, when the cross-sectional step was timed, the medians of both parts."""
    stats = _stats(totals, rows, **extra)
    if xs is not None:
        rest = [t - x for t, x in zip(totals, xs, strict=True)]
        stats["cross_sectional"] = summarize_times(xs)
        stats["rest"] = summarize_times(rest)
    return stats


def _time_serial(bars: pd.DataFrame, fcfg: Any, lcfg: Any, repeats: int) -> dict[str, Any]:
    for _ in range(WARMUP):
        serial_preprocess(bars, fcfg, lcfg)
    totals, xs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _, _, parts = serial_preprocess(bars, fcfg, lcfg)
        totals.append(time.perf_counter() - start)
        xs.append(parts["cross_sectional_s"])
    return {"name": BASELINE_SERIAL, **_split_stats(totals, xs, len(bars))}


def _time_ray(bars: pd.DataFrame, fcfg: Any, lcfg: Any, repeats: int, serial_out: pd.DataFrame) -> dict[str, Any]:
    """One warm-up call (output checked against the serial loop's, then released), then ``repeats`` timed calls
    with the time spent in ``preprocess``'s cross-sectional step recorded apart."""
    from raytrade.dataset import preprocess as module

    pre = module.preprocess(bars, fcfg, lcfg)
    check = check_same(serial_out, pre.frame, pre.feature_columns)
    check["feature_columns"] = len(pre.feature_columns)
    check["cross_sectional_columns"] = sum(c.startswith("xs_") for c in pre.feature_columns)
    del pre
    totals, xs = [], []
    sink: list[float] = []
    with timed_calls(module, "_cross_sectional", sink) as timed:
        for _ in range(repeats):
            sink.clear()
            start = time.perf_counter()
            module.preprocess(bars, fcfg, lcfg)
            totals.append(time.perf_counter() - start)
            xs.append(sum(sink))
    return {"name": CANDIDATE_RAY, **_split_stats(totals, xs if timed else None, len(bars)), "check_vs_serial": check}


def run_ray(inputs: dict[str, tuple[pd.DataFrame, int]]) -> dict[str, Any]:
    """``inputs``: label -> (bars, timed repeats).

    Per input, in this order: the serial baseline, then for each CPU count a fresh local Ray
    (``ray.init(num_cpus=n)``), a checked warm-up call, the timed calls and ``ray.shutdown()``: the baseline
    and both CPU counts of one input run back to back, so drifting background load hits them alike.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from raytrade.config import FeatureConfig, LabelConfig

    if ray.is_initialized():
        raise RuntimeError("the features benchmark starts its own local Ray instances; shut Ray down first")
    fcfg, lcfg = FeatureConfig(), LabelConfig()
    out: dict[str, Any] = {"inputs": {}, "ray_version": ray.__version__, "ray_init_s": {},
                           "load_average_1_5_15m": {"start": load_average()}}
    for label, (bars, repeats) in inputs.items():
        block: dict[str, Any] = {"rows": len(bars), "symbols": int(bars["symbol"].nunique()), "repeats": repeats,
                                 "baseline": _time_serial(bars, fcfg, lcfg, repeats), "ray": {},
                                 "load_average_1_5_15m": {"start": load_average()}}
        serial_out = serial_preprocess(bars, fcfg, lcfg)[0]  # after timing, checked against Ray's outputs
        for n_cpus in RAY_CPUS:
            t0 = time.perf_counter()
            ray.init(num_cpus=n_cpus, include_dashboard=False, log_to_driver=False)
            out["ray_init_s"].setdefault(str(n_cpus), []).append(time.perf_counter() - t0)
            try:
                ray.data.DataContext.get_current().enable_progress_bars = False
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                block["ray"][str(n_cpus)] = {"num_cpus": n_cpus, "cluster_cpus": ray.cluster_resources().get("CPU"),
                                             **_time_ray(bars, fcfg, lcfg, repeats, serial_out)}
            finally:
                ray.shutdown()
            block["load_average_1_5_15m"][f"after_{n_cpus}_cpu"] = load_average()
        del serial_out
        out["inputs"][label] = block
        _derive(block)
    out["load_average_1_5_15m"]["end"] = load_average()
    return out


def _derive(block: dict[str, Any]) -> None:
    """Speedups, Ray's extra cost over the serial loop and, with the cross-sectional step timed apart, the
    speedup of the rest and the Amdahl ceiling that the serial step leaves (``T1 / ((T1 - X1) / 2 + X1)``)."""
    r1, r2, base = block["ray"]["1"], block["ray"]["2"], block["baseline"]
    one, two, serial = r1["median_s"], r2["median_s"], base["median_s"]
    block.update({
        "speedup_2cpu_over_1cpu": one / two,
        "speedup_2cpu_over_1cpu_fastest_repeats": r1["min_s"] / r2["min_s"],
        "speedup_target": SPEEDUP_TARGET,
        "speedup_target_met": bool(one / two >= SPEEDUP_TARGET),
        "ray_1cpu_over_serial": one / serial,
        "ray_2cpu_over_serial": two / serial,
        "ray_1cpu_minus_serial_s": one - serial,
        "ray_2cpu_minus_serial_s": two - serial,
    })
    if "rest" in r1 and "rest" in r2:
        x1 = r1["cross_sectional"]["median_s"]
        block.update({
            "cross_sectional_share_1cpu": x1 / one,
            "speedup_rest_2cpu_over_1cpu": r1["rest"]["median_s"] / r2["rest"]["median_s"],
            "speedup_cross_sectional_2cpu_over_1cpu": x1 / r2["cross_sectional"]["median_s"],
            "amdahl_ceiling_2cpu": one / ((one - x1) / 2 + x1),
        })
    block["serial_cross_sectional_share"] = base["cross_sectional"]["median_s"] / serial

# ---------------------------------------------------------------------------------------------------
# report


def _fmt_num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _markdown(payload: dict[str, Any], src_rows: int, multi_rows: int) -> str:
    full, six, rays = payload["full_set"], payload["six_indicators"], payload["ray_data"]
    fc, fr = full["candidate"], full["reference"]
    threads = ", ".join(f"`{k}={v}`" if v is not None else f"`{k}` unset" for k, v in full["threads_env"].items())
    linear = full["rows_per_s_ratio_tiled_over_source"]
    linear_note = ("about linear in the number of bars" if linear >= 0.8 else
                   "the cost per bar grows with the input, probably from memory traffic: one 45,031-bar float64 "
                   "array is 360 KB, one 1M-bar array 8 MB, and the call makes many such temporaries")
    md = [
        f"## {TITLE} (`{NAME}`)",
        "",
        "Real bars only. The 1M-bar input is the real `nautilus_ftx_btcperp_1m.parquet` "
        f"(FTX BTC-PERP, {src_rows:,} one-minute bars) tiled end to end to {full['rows']:,} bars: each copy's "
        "open/high/low/close are rescaled so that its first open continues from the previous copy's last close "
        "(volumes unchanged), and timestamps continue at 1-minute steps. Timings are `time.perf_counter` "
        "medians after one untimed warm-up call per variant (for `ta`, whose call takes ~15 s, the call made "
        "for the value check). Outputs checked for values are released before any timing.",
        "",
        f"### 1. Full feature set on {full['rows']:,} one-minute bars, one core",
        "",
        "| input | rows | features | median | min | max | rows/s | features x rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for role, s in (("candidate: 1M tiled bars", fc), ("reference: untiled source bars", fr)):
        md.append(f"| {role} | {s['rows']:,} | {full['features']} | {fmt_s(s['median_s'])} | "
                  f"{fmt_s(s['min_s'])} | {fmt_s(s['max_s'])} | {fmt_rate(s['rows_per_s'])} | "
                  f"{fmt_rate(s['features_x_rows_per_s'])} |")
    md += [
        "",
        f"`{CANDIDATE_FULL}`: median of {full['repeats']} repeats. **{fmt_rate(fc['rows_per_s'])} rows/s, "
        f"{fmt_rate(fc['features_x_rows_per_s'])} feature values/s** ({full['features']} features = "
        "`len(feature_columns(FeatureConfig()))`; output "
        f"{full['output_shape'][0]:,} x {full['output_shape'][1]} columns incl. timestamp, symbol and OHLCV; "
        f"{full['non_finite_values_after_warmup']} non-finite feature values after the {full['warmup_bars']}-bar "
        "warm-up). rows/s on the 1M bars / rows/s on the untiled source = "
        f"{linear:.2f}: {linear_note}. One core: the call is "
        "single-threaded (TA-Lib's C functions, numpy ufuncs and pandas; no BLAS or OpenMP), so "
        "`OMP_NUM_THREADS` does not matter and is not set (environment: "
        f"{threads}); process CPU time / wall time over the timed calls = "
        f"{fc['cpu_time_over_wall_time']:.2f} (about 1 = one core busy; below 1 when other processes held the CPU).",
        "",
        f"### 2. Six indicators on the same {full['rows']:,} bars: raytrade vs raw TA-Lib vs `ta`",
        "",
        "| variant | role | repeats | median | min | max | rows/s | / raw TA-Lib |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base_med = six["baseline_talib"]["median_s"]
    for key, role in (("candidate", "candidate"), ("baseline_talib", "baseline 1"),
                      ("extra_talib_normalised", "extra (breakdown)"), ("baseline_ta", "baseline 2")):
        s = six[key]
        md.append(f"| {s['name']} | {role} | {s['repeats']} | {fmt_s(s['median_s'])} | {fmt_s(s['min_s'])} | "
                  f"{fmt_s(s['max_s'])} | {fmt_rate(s['rows_per_s'])} | {s['median_s'] / base_med:.2f} |")
    ratio = six["ratio_raytrade_over_talib"]
    md += [
        "",
        f"**raytrade / raw TA-Lib = {ratio:.2f}** (issue target <= {RATIO_TARGET:.1f}: "
        f"{'met' if six['ratio_target_met'] else 'NOT met'}; ratio of the fastest repeats "
        f"{six['ratio_raytrade_over_talib_fastest_repeats']:.2f}); "
        f"**`ta` / raw TA-Lib = {six['ratio_ta_over_talib']:.1f}**. "
        f"raytrade computes `{', '.join(SIX_FEATURES)}`: the six TA-Lib calls plus the normalisation "
        "(/100, /close, %B from the bands, OBV flow needs a 24-bar volume SUM) and the output DataFrame "
        "(timestamp, symbol, OHLCV + 8 columns). The extra row times the raw calls plus the same normalisation on "
        f"numpy arrays ({six['ratio_talib_normalised_over_talib']:.2f}x raw TA-Lib), so of raytrade's "
        f"{fmt_s(six['candidate']['median_s'])}, roughly {fmt_s(six['extra_talib_normalised']['median_s'] - base_med)} "
        "is normalisation and "
        f"{fmt_s(six['candidate']['median_s'] - six['extra_talib_normalised']['median_s'])} DataFrame in/out "
        "and wrapper overhead (a rough split: at these sizes memory-allocation effects move each part by "
        "tens of ms between runs). Raw TA-Lib returns unnormalised arrays, so it does less work than the candidate.",
        "",
        f"Values, raytrade vs raw TA-Lib after the same normalisation (written out in this benchmark), "
        f"`np.allclose(rtol={RTOL:g}, atol={ATOL:g})` over all defined values, all {full['rows']:,} bars:",
        "",
        "| feature | NaN positions equal | compared | max abs diff | max rel diff | allclose |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, r in six["check_raytrade_vs_talib"]["per_feature"].items():
        md.append(f"| `{name}` | {r['nan_positions_equal']} | {r['compared']:,} | {_fmt_num(r['max_abs_diff'])} | "
                  f"{_fmt_num(r['max_rel_diff'])} | {r['allclose']} |")
    md += [
        "",
        f"raytrade vs raw TA-Lib passed = **{six['check_raytrade_vs_talib']['passed']}**.",
        "",
        f"Values, `ta` vs raw TA-Lib in the same units, from bar {TA_CHECK_WARMUP:,} on (the libraries seed their "
        "EMA/Wilder averages differently, e.g. `ta` starts `ewm` at the first bar where TA-Lib starts from an SMA, "
        f"and the seed's weight decays geometrically, below 1e-30 after {TA_CHECK_WARMUP:,} bars), same "
        "`np.allclose` test; OBV is compared by its bar-to-bar change (`np.diff`) because the two cumulative "
        "sums start from different values:",
        "",
        "| indicator | compared | defined in one only | max abs diff | max rel diff | allclose |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ta_check = six["check_ta_vs_talib"]["per_indicator"]
    for name, r in ta_check.items():
        md.append(f"| {name} | {r['compared']:,} | {r['defined_only_in_one']:,} | {_fmt_num(r['max_abs_diff'])} | "
                  f"{_fmt_num(r['max_rel_diff'])} | {r['allclose']} |")
    md += ["", *_ta_notes(ta_check, *payload["data"]["minute_tiled_close_first_last"])]

    rays_all = rays["inputs"]
    alt = {k: v for k, v in rays_all.items() if k in payload["data"]["ray_sections"]["3"]}
    uni = {k: v for k, v in rays_all.items() if k in payload["data"]["ray_sections"]["4"]}
    dow = payload["data"]["universe"]
    md += [
        "",
        "### 3. Ray Data preprocess, 1 vs 2 CPUs",
        "",
        f"`{CANDIDATE_RAY}` on `{MULTI_FILE.name}` ({multi_rows:,} real 5-minute bars of 10 alt/BTC symbols, "
        "`raytrade.data.load_bars`), default `FeatureConfig()` (cross-asset features on; with several symbols the "
        "cross-sectional `xs_` step too) and `LabelConfig()`. Per input: the serial baseline first, then for each "
        "CPU count `ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)`, progress bars off, one "
        "warm-up call (its output is checked against the serial loop's, then released), timed calls, "
        "`ray.shutdown()`. Baseline, same run, no Ray: "
        f"`{BASELINE_SERIAL}`. The extra input is the same file tiled {BIG_TILES}x in time (per symbol, prices "
        "rescaled for continuity as above, volumes unchanged, every copy shifted by the file's span + 5 minutes). "
        "`xs step` = the time spent in the cross-sectional step, which runs in the driver (serial) on both sides; "
        "`rest` = the whole call minus it (for Ray: the per-symbol step in parallel tasks plus Ray Data's fixed "
        "costs and the driver-side sort and dtype restore).",
        "",
        *_ray_table(alt),
        "",
        *_ray_bullets(alt),
        "",
        f"### 4. A large real universe: the 29 Dow stocks daily, 1 vs 2 CPUs (issue 16, target >= {SPEEDUP_TARGET}x)",
        "",
        f"Choice: `{UNIVERSE_FILE.name}` ({dow['rows']:,} real daily bars of {dow['symbols']} symbols, "
        f"{dow['first']} -> {dow['last']}, union calendar of {dow['calendar_bars']:,} days; loaded with the universe "
        "loader `raytrade.data.universe.load_universe`, validation policy `fail`), as it is and tiled "
        f"{UNIVERSE_TILES}x in time ({dow['tiled_rows']:,} rows, about {dow['tiled_rows'] // dow['symbols']:,} bars "
        "per symbol; tiling as in section 3, every copy shifted by the file's span + 1 day). 29 symbols give 29 "
        "tasks of similar size, so 2 CPUs split the per-symbol work evenly (15 / 14); the shared files cannot be "
        "one universe (their bar intervals differ and the loader refuses mixed intervals), and the 5-symbol hourly "
        "or 4-symbol crypto files give too few tasks to balance. Same method, baseline and columns as section 3; "
        "the default `FeatureConfig()` adds the cross-sectional step over all 29 symbols.",
        "",
        *_ray_table(uni),
        "",
        *_ray_bullets(uni),
    ]
    init = rays["ray_init_s"]
    worst = max((v[0] for b in rays_all.values() for v in b["load_average_1_5_15m"].values() if v), default=0.0)
    md += [
        "",
        "1-minute load average around each input (2 CPUs): "
        + "; ".join(f"{label.split(':')[0]} {label.split(':', 1)[1].strip()}: "
                    + ", ".join(f"{k.replace('after_', 'after ').replace('_cpu', '-CPU runs')} {v[0]:.1f}"
                                for k, v in b["load_average_1_5_15m"].items() if v)
                    for label, b in rays_all.items())
        + ". This part alone keeps up to about 2 processes runnable (driver and Ray workers); "
        + ("the load went above 2, so other processes shared the CPUs: the second CPU was not fully free, the "
           "2-CPU speedups are likely lower than on an idle machine, and every row is noisy for the same reason."
           if worst > 2 else "no sign of other processes competing."),
        "",
        "`ray.init` took " + ", ".join(f"{fmt_s(statistics.median(s))} with {n} CPU(s) (median of {len(s)})"
                                       for n, s in init.items())
        + ", once per input and CPU count, not timed in the rows above. Ray Data pays off when per-symbol work is "
        "large compared with its fixed per-call cost, or when symbols spread over many nodes; on this small 2-CPU "
        "machine the serial loop in one process has none of that cost.",
    ]
    note = busy_note(payload["load_average_at_start"])
    if note:
        md += ["", note]
    return "\n".join(md)


def _ray_table(inputs: dict[str, Any]) -> list[str]:
    md = ["| input | variant | CPUs | repeats | median | min | max | xs step | rest | rows/s | / serial |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def parts(s: dict[str, Any]) -> str:
        if "rest" not in s:
            return "n/a | n/a"
        return f"{fmt_s(s['cross_sectional']['median_s'])} | {fmt_s(s['rest']['median_s'])}"

    for label, block in inputs.items():
        b = block["baseline"]
        md.append(f"| {label} | serial loop (baseline) | 1 (in process) | {block['repeats']} | "
                  f"{fmt_s(b['median_s'])} | {fmt_s(b['min_s'])} | {fmt_s(b['max_s'])} | {parts(b)} | "
                  f"{fmt_rate(b['rows_per_s'])} | 1.00 |")
        for n_cpus, s in block["ray"].items():
            md.append(f"| {label} | Ray Data preprocess | {n_cpus} | {block['repeats']} | {fmt_s(s['median_s'])} | "
                      f"{fmt_s(s['min_s'])} | {fmt_s(s['max_s'])} | {parts(s)} | {fmt_rate(s['rows_per_s'])} | "
                      f"{s['median_s'] / b['median_s']:.2f} |")
    return md


def _ray_bullets(inputs: dict[str, Any]) -> list[str]:
    md = []
    for label, block in inputs.items():
        checks = [s["check_vs_serial"] for s in block["ray"].values()]
        split = ""
        if "speedup_rest_2cpu_over_1cpu" in block:
            share, xs_ratio = block["cross_sectional_share_1cpu"], block["speedup_cross_sectional_2cpu_over_1cpu"]
            split = (f" Split: the serial cross-sectional step is {share:.0%} of the 1-CPU call (1-CPU / 2-CPU time "
                     f"x{xs_ratio:.2f}; it runs in the driver, so about x1 is expected) and the rest speeds up "
                     f"**x{block['speedup_rest_2cpu_over_1cpu']:.2f}**; with that serial share, a perfectly parallel "
                     f"rest would give at most x{block['amdahl_ceiling_2cpu']:.2f} (Amdahl). In the serial loop the "
                     f"cross-sectional step is {block['serial_cross_sectional_share']:.0%} of the time.")
        md.append(
            f"- {label}: **speedup 2 CPUs / 1 CPU = {block['speedup_2cpu_over_1cpu']:.2f}** (fastest repeats "
            f"{block['speedup_2cpu_over_1cpu_fastest_repeats']:.2f}; issue target >= {SPEEDUP_TARGET}: "
            f"{'met' if block['speedup_target_met'] else 'NOT met'}).{split} Ray on 1 CPU takes "
            f"{block['ray_1cpu_over_serial']:.2f}x the serial loop ({fmt_s(block['ray_1cpu_minus_serial_s'])} more "
            f"per call), on 2 CPUs {block['ray_2cpu_over_serial']:.2f}x ({fmt_s(block['ray_2cpu_minus_serial_s'])}). "
            "Ray's extra time is not feature work (putting the frames in the object store, planning and scheduling "
            "the tasks, Arrow/pandas conversion both ways, the driver-side sort and dtype restore); what of it does "
            "not shrink with a second CPU limits the speedup. Outputs equal to the serial loop's (same rows, "
            f"{checks[0]['columns_compared']} feature and label columns incl. {checks[0]['cross_sectional_columns']} "
            f"`xs_`): {all(c['passed'] for c in checks)}.")
    return md


def _ta_notes(ta_check: dict[str, Any], price_first: float, price_last: float) -> list[str]:
    notes = []
    failed = [name for name, r in ta_check.items() if not r["allclose"]]
    agreeing = [name for name in ta_check if name not in failed]
    notes.append(f"Within 1e-6 relative: {', '.join(agreeing) or 'none'}. "
                 f"Not within: {', '.join(failed) or 'none'}.")
    obv = ta_check["OBV bar-to-bar change"]
    notes.append(
        f"OBV: {obv['mismatching_bars']:,} of {obv['compared']:,} bar-to-bar changes differ; the close is unchanged "
        f"on {obv['bars_with_unchanged_close']:,} bars; all mismatches are at unchanged closes: "
        f"{obv['mismatches_all_at_unchanged_close']}; the changes agree where the close moved: "
        f"{obv['allclose_where_close_changed']}. A difference of definition: `ta` 0.11 adds +volume when the close "
        "is unchanged (`np.where(close < close.shift(1), -volume, volume)`), TA-Lib adds nothing.")
    pctb = ta_check["Bollinger %B(20, 2)"]
    exact, untiled = pctb["max_abs_diff_vs_exact_two_pass"], pctb["untiled_source"]
    notes.append(
        f"Bollinger %B: max abs diff {_fmt_num(pctb['max_abs_diff'])} (allclose {pctb['allclose']}). Against an "
        "exact two-pass (mean-centred) rolling std computed here, `ta` is off by up to "
        f"{_fmt_num(exact['ta'])} and TA-Lib (hence raytrade) by up to {_fmt_num(exact['talib'])}. Both keep running "
        "sums over the whole series, and the tiled series' price falls from "
        f"{price_first:,.0f} to {price_last:,.0f} (the source month fell, and the fall compounds over the copies), "
        "so rounding left from the early, large prices weighs on the later, small ones; pandas' rolling std (used "
        f"by `ta`) suffers far more. On the untiled {untiled['rows']:,} source bars `ta` vs TA-Lib %B differ by at "
        f"most {_fmt_num(untiled['max_abs_diff'])} (max rel {_fmt_num(untiled['max_rel_diff'])}, allclose "
        f"{untiled['allclose']}); against the exact std there, `ta` is off by up to "
        f"{_fmt_num(untiled['max_abs_diff_vs_exact_two_pass']['ta'])} and TA-Lib by up to "
        f"{_fmt_num(untiled['max_abs_diff_vs_exact_two_pass']['talib'])}.")
    adx = ta_check["ADX(14) / 100"]
    notes.append(
        f"ADX: max abs diff {_fmt_num(adx['max_abs_diff'])} (ADX/100 units), allclose {adx['allclose']}"
        + (": after the warm-up `ta` 0.11's Python-loop ADX follows the same Wilder recurrences as TA-Lib's."
           if adx["allclose"] else "; `ta` 0.11's ADXIndicator is its own Python-loop implementation and differs "
           "from TA-Lib's Wilder ADX by the amounts above."))
    return [f"- {n}" for n in notes]


def run() -> str:
    """Run the three parts, write ``results/features.{json,md}`` and return the markdown."""
    from raytrade.data import load_bars
    from raytrade.data.universe import load_universe

    load_at_start = load_average()
    source = load_bars(MINUTE_FILE)
    bars = tile_minute_bars(source, TARGET_ROWS)
    multi = load_bars(MULTI_FILE)
    big = tile_in_time(multi, BIG_TILES)
    universe = load_universe(UNIVERSE_FILE)
    dow = universe.bars
    dow_big = tile_in_time(dow, UNIVERSE_TILES)

    full = run_full_set(bars, source)
    six = run_six(bars, source)
    sections = {
        "3": {f"alt/BTC 5m real: {len(multi):,} rows": (multi, RAY_REPEATS),
              f"alt/BTC 5m extra: tiled {BIG_TILES}x, {len(big):,} rows": (big, BIG_REPEATS)},
        "4": {f"Dow 29 daily real: {len(dow):,} rows": (dow, RAY_REPEATS),
              f"Dow 29 daily tiled {UNIVERSE_TILES}x: {len(dow_big):,} rows": (dow_big, UNIVERSE_REPEATS)},
    }
    rays = run_ray({label: spec for inputs in sections.values() for label, spec in inputs.items()})
    payload: dict[str, Any] = {
        "title": TITLE,
        "data": {
            "minute_file": relpath(MINUTE_FILE),
            "minute_source_rows": len(source),
            "minute_tiled_rows": len(bars),
            "minute_tiling": "source repeated end to end; each copy's OHLC rescaled so its first open equals the "
                             "previous copy's last close; volume unchanged; timestamps continue at 1-minute steps; "
                             "last copy cut to the target rows",
            "minute_tiled_close_first_last": [float(bars["close"].iloc[0]), float(bars["close"].iloc[-1])],
            "multi_file": relpath(MULTI_FILE),
            "multi_rows": len(multi),
            "multi_symbols": int(multi["symbol"].nunique()),
            "multi_tiled_rows": len(big),
            "multi_tiling": f"each symbol repeated {BIG_TILES}x in time, every copy shifted by the file's span + one "
                            "bar, OHLC rescaled per symbol for continuity, volume unchanged",
            "universe": {
                "file": relpath(UNIVERSE_FILE), "loader": "raytrade.data.universe.load_universe (policy fail)",
                "rows": len(dow), "symbols": len(universe.symbols), "calendar_bars": len(universe.panel.timestamps),
                "first": str(dow["timestamp"].min().date()), "last": str(dow["timestamp"].max().date()),
                "tiles": UNIVERSE_TILES, "tiled_rows": len(dow_big),
                "tiling": f"each symbol repeated {UNIVERSE_TILES}x in time, every copy shifted by the file's span + "
                          "one day, OHLC rescaled per symbol for continuity, volume unchanged",
            },
            "ray_sections": {key: list(inputs) for key, inputs in sections.items()},
        },
        "load_average_at_start": load_at_start,
        "full_set": full,
        "six_indicators": six,
        "ray_data": rays,
    }
    markdown = _markdown(payload, len(source), len(multi))
    write_results(NAME, payload, markdown)
    return markdown
