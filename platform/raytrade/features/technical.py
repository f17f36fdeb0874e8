"""Causal technical features for one symbol's bars: TA-Lib first, numpy where TA-Lib has none.

Every feature at bar t uses bars at times <= t only: TA-Lib indicators are trailing, and the few
numpy formulas here are trailing windows too. The SAME function runs in training (over a symbol's
whole history) and in serving (over the bars of a request or the online store). EMA-based
indicators (RSI, MACD, ATR, ADX, ...) carry memory of their seed, so serving needs at least
:func:`warmup_bars` bars before the first window.

The registry :data:`FEATURES` names each feature with its group, formula (or TA-Lib function) and
its *lookback*: the number of leading bars whose value is undefined (NaN). :func:`warmup_bars` is
the largest lookback of the selected features; ``docs/FEATURES.md`` is generated from the registry
(``python -m raytrade.features.docs``).

All features are scale-free (ratios, log returns, oscillators in [0, 1] or z-scores), so one model
can serve many symbols. Timestamps are bar opens in UTC; calendar features use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import talib

from raytrade.config import FeatureConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP

GROUPS = ("returns", "momentum", "trend", "volatility", "volume", "regime", "calendar", "cross_asset")


class _Inputs:
    """Arrays of one symbol's bars plus a cache of shared intermediates (computed once per call).

    Every feature reaches TA-Lib through :attr:`ta` and looks back through :meth:`lag`, never directly: in batch
    mode (here) they are the ``talib`` module and :func:`_lag`; :mod:`raytrade.features.streaming` replaces them
    to open TA-Lib stream handles on history and then to compute one new bar at a time, with the same formulas.
    """

    ta: Any = talib

    def lag(self, a: np.ndarray, n: int) -> np.ndarray:
        """``a`` lagged ``n`` bars (value of t-n at t; NaN for the first n)."""
        return _lag(a, n)

    def __init__(self, bars: pd.DataFrame, reference: pd.Series | None) -> None:
        self.o = bars["open"].to_numpy(dtype=np.float64)
        self.h = bars["high"].to_numpy(dtype=np.float64)
        self.low = bars["low"].to_numpy(dtype=np.float64)
        self.c = bars["close"].to_numpy(dtype=np.float64)
        self.v = bars["volume"].to_numpy(dtype=np.float64)
        self.ts = pd.DatetimeIndex(bars[TIMESTAMP])
        self._reference = reference
        self._cache: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def r1(self) -> np.ndarray:
        """1-bar log return ln(c_t / c_{t-1}) (NaN at t=0)."""
        return self.get("r1", lambda: np.log(self.ta.ROCR(self.c, timeperiod=1)))

    @property
    def adx14(self) -> np.ndarray:
        """ADX(14) (TA-Lib, 0..100), shared by the trend and regime features."""
        return self.get("adx", lambda: self.ta.ADX(self.h, self.low, self.c, timeperiod=14))

    @property
    def stoch(self) -> tuple[np.ndarray, np.ndarray]:
        """Slow %K and %D (5, 3, 3), TA-Lib STOCH (0..100)."""
        return self.get("stoch", lambda: self.ta.STOCH(self.h, self.low, self.c))

    def sma(self, n: int) -> np.ndarray:
        return self.get(f"sma{n}", lambda: self.ta.SMA(self.c, timeperiod=n))

    def realised_vol(self, n: int) -> np.ndarray:
        return self.get(f"rv{n}", lambda: self.ta.STDDEV(self.r1, timeperiod=n, nbdev=1.0))

    @property
    def reference_close(self) -> np.ndarray:
        """Reference symbol's close as of each bar (last reference bar <= t), aligned to these bars."""
        if self._reference is None:
            raise ValueError("cross-asset features need a reference close series")
        return self.get("ref_c", lambda: _asof(self._reference, self.ts))

    @property
    def reference_r1(self) -> np.ndarray:
        return self.get("ref_r1", lambda: np.log(self.ta.ROCR(self.reference_close, timeperiod=1)))


def _asof(reference: pd.Series, ts: pd.DatetimeIndex) -> np.ndarray:
    """Backward as-of alignment (causal): the reference value at the latest reference time <= t."""
    ref = reference.sort_index()
    idx = ref.index.searchsorted(ts, side="right") - 1
    out = np.full(len(ts), np.nan)
    ok = idx >= 0
    out[ok] = ref.to_numpy(dtype=np.float64)[idx[ok]]
    return out


def _lag(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` shifted n bars into the future of the index (value of t-n at t); NaN for the first n."""
    out = np.full(len(a), np.nan)
    if n < len(a):
        out[n:] = a[: len(a) - n]
    return out


def _safe_div(num: np.ndarray, den: np.ndarray, where_zero: float = 0.0) -> np.ndarray:
    """num / den, ``where_zero`` where den == 0, NaN where either is NaN (warm-up stays NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den  # NaN stays NaN; only finite num / 0 needs replacing
    zero = den == 0
    if zero.any():
        out[zero & ~np.isnan(num)] = where_zero
    return out


def _rolling_z(x: _Inputs, a: np.ndarray, n: int) -> np.ndarray:
    """(a - SMA_n(a)) / STDDEV_n(a) (population std, TA-Lib); 0 where the window is constant."""
    mean = x.ta.SMA(a, timeperiod=n)
    std = x.ta.STDDEV(a, timeperiod=n, nbdev=1.0)
    return _safe_div(a - mean, np.where(std > 1e-12, std, 0.0))


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: ``lookback`` = leading bars whose value is undefined (the warm-up it needs)."""

    name: str
    group: str
    lookback: int
    formula: str
    fn: Callable[[_Inputs], np.ndarray]


def _specs(cfg: FeatureConfig) -> list[FeatureSpec]:
    """The registry for ``cfg`` (return lags are configurable; the rest use standard periods)."""
    S = FeatureSpec
    specs: list[FeatureSpec] = []
    for lag in cfg.return_lags:
        specs.append(S(f"log_ret_{lag}", "returns", lag, f"ln(close_t / close_t-{lag}) (TA-Lib ROCR)",
                       lambda x, lag=lag: np.log(x.ta.ROCR(x.c, timeperiod=lag))))

    # ---- momentum (oscillators rescaled to about [0, 1] or [-1, 1]) ----------------------------
    for n in (7, 14, 28):
        specs.append(S(f"rsi_{n}", "momentum", n, f"RSI({n}) / 100, Wilder 1978 (TA-Lib RSI)",
                       lambda x, n=n: x.ta.RSI(x.c, timeperiod=n) / 100.0))
    specs += [
        S("stoch_k", "momentum", 8, "slow %K(5,3,3) / 100, Lane (TA-Lib STOCH)",
          lambda x: x.stoch[0] / 100.0),
        S("stoch_d", "momentum", 8, "slow %D(5,3,3) / 100 (TA-Lib STOCH)",
          lambda x: x.stoch[1] / 100.0),
        S("willr_14", "momentum", 13, "Williams %R(14) / 100, in [-1, 0] (TA-Lib WILLR)",
          lambda x: x.ta.WILLR(x.h, x.low, x.c, timeperiod=14) / 100.0),
        S("cci_20", "momentum", 19, "CCI(20) / 100, Lambert 1980 (TA-Lib CCI)",
          lambda x: x.ta.CCI(x.h, x.low, x.c, timeperiod=20) / 100.0),
        S("mfi_14", "momentum", 14, "Money Flow Index(14) / 100 (TA-Lib MFI)",
          lambda x: x.ta.MFI(x.h, x.low, x.c, x.v, timeperiod=14) / 100.0),
        S("cmo_14", "momentum", 14, "Chande Momentum Oscillator(14) / 100 (TA-Lib CMO)",
          lambda x: x.ta.CMO(x.c, timeperiod=14) / 100.0),
        S("ultosc", "momentum", 28, "Ultimate Oscillator(7,14,28) / 100, Williams (TA-Lib ULTOSC)",
          lambda x: x.ta.ULTOSC(x.h, x.low, x.c) / 100.0),
        S("ppo_12_26", "momentum", 25, "Percentage Price Oscillator(12,26, EMA) / 100 (TA-Lib PPO)",
          lambda x: x.ta.PPO(x.c, fastperiod=12, slowperiod=26, matype=1) / 100.0),
        S("roc_10", "momentum", 10, "rate of change (close_t / close_t-10 - 1) (TA-Lib ROCP)",
          lambda x: x.ta.ROCP(x.c, timeperiod=10)),
        S("trix_15", "momentum", 43, "TRIX(15): 1-bar % change of triple EMA, / 100 (TA-Lib TRIX)",
          lambda x: x.ta.TRIX(x.c, timeperiod=15) / 100.0),
    ]

    # ---- trend ---------------------------------------------------------------------------------
    def macd(x: _Inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return x.get("macd", lambda: x.ta.MACD(x.c, fastperiod=12, slowperiod=26, signalperiod=9))

    specs += [
        S("adx_14", "trend", 27, "ADX(14) / 100, Wilder (TA-Lib ADX)", lambda x: x.adx14 / 100.0),
        S("plus_di_14", "trend", 14, "+DI(14) / 100 (TA-Lib PLUS_DI)",
          lambda x: x.ta.PLUS_DI(x.h, x.low, x.c, timeperiod=14) / 100.0),
        S("minus_di_14", "trend", 14, "-DI(14) / 100 (TA-Lib MINUS_DI)",
          lambda x: x.ta.MINUS_DI(x.h, x.low, x.c, timeperiod=14) / 100.0),
        S("aroonosc_14", "trend", 14, "Aroon oscillator(14) / 100 (TA-Lib AROONOSC)",
          lambda x: x.ta.AROONOSC(x.h, x.low, timeperiod=14) / 100.0),
        S("macd", "trend", 33, "MACD(12,26) line / close, Appel (TA-Lib MACD)", lambda x: macd(x)[0] / x.c),
        S("macd_signal", "trend", 33, "MACD signal(9) / close (TA-Lib MACD)", lambda x: macd(x)[1] / x.c),
        S("macd_hist", "trend", 33, "MACD histogram / close (TA-Lib MACD)", lambda x: macd(x)[2] / x.c),
        S("linreg_slope_20", "trend", 19, "slope of the 20-bar least-squares line of close, / close "
          "(TA-Lib LINEARREG_SLOPE)", lambda x: x.ta.LINEARREG_SLOPE(x.c, timeperiod=20) / x.c),
    ]
    for n in (10, 20, 50, 100, 200):
        specs.append(S(f"dist_sma_{n}", "trend", n - 1, f"close / SMA({n}) - 1 (TA-Lib SMA)",
                       lambda x, n=n: x.c / x.sma(n) - 1.0))
    for n in (12, 26):
        specs.append(S(f"dist_ema_{n}", "trend", n - 1, f"close / EMA({n}) - 1 (TA-Lib EMA)",
                       lambda x, n=n: x.c / x.ta.EMA(x.c, timeperiod=n) - 1.0))
    specs.append(S("sma_10_50", "trend", 49, "SMA(10) / SMA(50) - 1 (TA-Lib SMA)",
                   lambda x: x.sma(10) / x.sma(50) - 1.0))

    # ---- volatility ----------------------------------------------------------------------------
    def bbands(x: _Inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return x.get("bb", lambda: x.ta.BBANDS(x.c, timeperiod=20, nbdevup=2.0, nbdevdn=2.0))

    def garman_klass(x: _Inputs, n: int) -> np.ndarray:
        # per-bar variance 0.5 ln(H/L)^2 - (2 ln2 - 1) ln(C/O)^2; Garman & Klass, J. Business 53 (1980)
        var = 0.5 * np.log(x.h / x.low) ** 2 - (2 * np.log(2) - 1) * np.log(x.c / x.o) ** 2
        return np.sqrt(np.maximum(x.ta.SMA(var, timeperiod=n), 0.0))

    def parkinson(x: _Inputs, n: int) -> np.ndarray:
        # ln(H/L)^2 / (4 ln 2) per bar; Parkinson, J. Business 53 (1980)
        return np.sqrt(x.ta.SMA(np.log(x.h / x.low) ** 2 / (4 * np.log(2)), timeperiod=n))

    specs += [
        S("natr_14", "volatility", 14, "ATR(14) / close, Wilder (TA-Lib NATR / 100)",
          lambda x: x.ta.NATR(x.h, x.low, x.c, timeperiod=14) / 100.0),
        S("natr_28", "volatility", 28, "ATR(28) / close (TA-Lib NATR / 100)",
          lambda x: x.ta.NATR(x.h, x.low, x.c, timeperiod=28) / 100.0),
        S("bb_pctb_20", "volatility", 19, "Bollinger %B(20, 2 std) = (close - lower) / (upper - lower); "
          "0.5 on a zero-width band (TA-Lib BBANDS)",
          lambda x: _safe_div(x.c - bbands(x)[2], bbands(x)[0] - bbands(x)[2], where_zero=0.5)),
        S("bb_width_20", "volatility", 19, "(upper - lower) / middle Bollinger band (TA-Lib BBANDS)",
          lambda x: _safe_div(bbands(x)[0] - bbands(x)[2], bbands(x)[1])),
        S("garman_klass_24", "volatility", 23, "sqrt(mean_24(0.5 ln(H/L)^2 - (2ln2-1) ln(C/O)^2)), Garman-Klass "
          "1980", lambda x: garman_klass(x, 24)),
        S("parkinson_24", "volatility", 23, "sqrt(mean_24(ln(H/L)^2 / 4ln2)), Parkinson 1980",
          lambda x: parkinson(x, 24)),
        S("hl_range", "volatility", 0, "ln(high / low) of the bar", lambda x: np.log(x.h / x.low)),
        S("oc_return", "volatility", 0, "ln(close / open) of the bar", lambda x: np.log(x.c / x.o)),
        S("upper_shadow", "volatility", 0, "(high - max(open, close)) / close",
          lambda x: (x.h - np.maximum(x.o, x.c)) / x.c),
        S("lower_shadow", "volatility", 0, "(min(open, close) - low) / close",
          lambda x: (np.minimum(x.o, x.c) - x.low) / x.c),
    ]
    for n in (12, 24, 72):
        specs.append(S(f"realised_vol_{n}", "volatility", n, f"std of 1-bar log returns over {n} bars "
                       "(population; TA-Lib STDDEV)", lambda x, n=n: x.realised_vol(n)))

    # ---- volume --------------------------------------------------------------------------------
    def vwap_dist(x: _Inputs, n: int) -> np.ndarray:
        typical = (x.h + x.low + x.c) / 3.0
        vwap = _safe_div(x.ta.SUM(typical * x.v, timeperiod=n), x.ta.SUM(x.v, timeperiod=n), where_zero=np.nan)
        return np.where(np.isnan(vwap) & ~np.isnan(x.ta.SUM(x.v, timeperiod=n)), 0.0, x.c / vwap - 1.0)

    def obv_flow(x: _Inputs, n: int) -> np.ndarray:
        obv = x.get("obv", lambda: x.ta.OBV(x.c, x.v))
        change = obv - x.lag(obv, n)
        return _safe_div(change, x.ta.SUM(x.v, timeperiod=n))

    specs += [
        S("volume_z_24", "volume", 23, "z-score of ln(1 + volume) over 24 bars; 0 when constant",
          lambda x: _rolling_z(x, np.log1p(x.v), 24)),
        S("volume_z_72", "volume", 71, "z-score of ln(1 + volume) over 72 bars; 0 when constant",
          lambda x: _rolling_z(x, np.log1p(x.v), 72)),
        S("vwap_dist_24", "volume", 23, "close / VWAP_24 - 1, VWAP = sum(typical price x volume) / sum(volume); "
          "0 when no volume traded", lambda x: vwap_dist(x, 24)),
        S("obv_flow_24", "volume", 24, "(OBV_t - OBV_t-24) / sum_24(volume), in [-1, 1] (TA-Lib OBV, SUM)",
          lambda x: obv_flow(x, 24)),
        S("adosc", "volume", 9, "Chaikin A/D oscillator(3,10) / SMA_10(volume) (TA-Lib ADOSC)",
          lambda x: _safe_div(x.ta.ADOSC(x.h, x.low, x.c, x.v), x.ta.SMA(x.v, timeperiod=10))),
        S("volume_ratio_24", "volume", 23, "ln((1 + volume) / (1 + SMA_24(volume)))",
          lambda x: np.log1p(x.v) - np.log1p(x.ta.SMA(x.v, timeperiod=24))),
    ]

    # ---- regime --------------------------------------------------------------------------------
    def efficiency(x: _Inputs, n: int) -> np.ndarray:
        path = x.ta.SUM(np.abs(x.c - x.lag(x.c, 1)), timeperiod=n)
        net = np.abs(x.c - x.lag(x.c, n))
        return _safe_div(net, path)

    specs += [
        S("vol_regime_24_240", "regime", 240, "realised_vol_24 / realised_vol_240 (volatility regime)",
          lambda x: _safe_div(x.realised_vol(24), x.realised_vol(240), where_zero=1.0)),
        S("vol_regime_z", "regime", 263, "z-score of ln(realised_vol_24) over 240 bars",
          lambda x: _rolling_z(x, np.log(np.maximum(x.realised_vol(24), 1e-12)), 240)),
        S("trend_regime", "regime", 199, "(SMA(50) - SMA(200)) / close (trend regime)",
          lambda x: (x.sma(50) - x.sma(200)) / x.c),
        S("adx_trending", "regime", 27, "1 if ADX(14) > 25 else 0 (trending market)",
          lambda x: np.where(np.isnan(x.adx14), np.nan, (x.adx14 > 25).astype(float))),
        S("efficiency_24", "regime", 24, "Kaufman efficiency ratio |c_t - c_t-24| / sum_24 |dc|, in [0, 1]",
          lambda x: efficiency(x, 24)),
    ]

    # ---- calendar (bar open time, UTC) ---------------------------------------------------------
    if cfg.calendar:
        specs += [
            S("hour_sin", "calendar", 0, "sin(2 pi hour / 24)", lambda x: np.sin(2 * np.pi * x.ts.hour / 24.0)),
            S("hour_cos", "calendar", 0, "cos(2 pi hour / 24)", lambda x: np.cos(2 * np.pi * x.ts.hour / 24.0)),
            S("dow_sin", "calendar", 0, "sin(2 pi day_of_week / 7)",
              lambda x: np.sin(2 * np.pi * x.ts.dayofweek / 7.0)),
            S("dow_cos", "calendar", 0, "cos(2 pi day_of_week / 7)",
              lambda x: np.cos(2 * np.pi * x.ts.dayofweek / 7.0)),
            S("month_sin", "calendar", 0, "sin(2 pi (month - 1) / 12)",
              lambda x: np.sin(2 * np.pi * (x.ts.month - 1) / 12.0)),
            S("month_cos", "calendar", 0, "cos(2 pi (month - 1) / 12)",
              lambda x: np.cos(2 * np.pi * (x.ts.month - 1) / 12.0)),
        ]
    return specs


def _cross_specs(window: int) -> list[FeatureSpec]:
    """Cross-asset features against the reference symbol (as-of aligned close, causal)."""
    S = FeatureSpec
    return [
        S(f"corr_ref_{window}", "cross_asset", window,
          f"correlation of 1-bar log returns with the reference symbol over {window} bars (TA-Lib CORREL)",
          lambda x: x.ta.CORREL(x.r1, x.reference_r1, timeperiod=window)),
        S(f"beta_ref_{window}", "cross_asset", window,
          f"beta of 1-bar log returns on the reference's over {window} bars: cov / var(ref)",
          lambda x: _safe_div(x.ta.CORREL(x.r1, x.reference_r1, timeperiod=window) * x.ta.STDDEV(
              x.r1, timeperiod=window), x.ta.STDDEV(x.reference_r1, timeperiod=window))),
        S("rel_strength_24", "cross_asset", 24, "ln(c_t / c_t-24) - ln(ref_t / ref_t-24) (relative strength)",
          lambda x: np.log(x.ta.ROCR(x.c, timeperiod=24)) - np.log(x.ta.ROCR(x.reference_close, timeperiod=24))),
    ]


def feature_specs(cfg: FeatureConfig, cross_asset: bool = False) -> list[FeatureSpec]:
    """The selected feature specs, in column order (``cross_asset`` adds the reference features)."""
    specs = [s for s in _specs(cfg) if s.group in cfg.groups]
    if cross_asset:
        specs += _cross_specs(cfg.correlation_window)
    return specs


def feature_columns(cfg: FeatureConfig, cross_asset: bool = False) -> list[str]:
    """Names of the feature columns :func:`compute_features` adds, in order."""
    return [s.name for s in feature_specs(cfg, cross_asset)]


def warmup_bars(cfg: FeatureConfig, cross_asset: bool = False, names: Iterable[str] | None = None) -> int:
    """Leading bars of a series whose features are undefined (NaN): the largest selected lookback."""
    wanted = set(names) if names is not None else None
    return max(s.lookback for s in feature_specs(cfg, cross_asset) if wanted is None or s.name in wanted)


def feature_set_version(cfg: FeatureConfig, columns: Iterable[str]) -> str:
    """Short hash of the feature settings and column list: the online store keys windows by it, so a
    model never reads windows computed by another feature set."""
    import hashlib
    import json

    payload = json.dumps({"cfg": cfg.model_dump(mode="json"), "columns": list(columns)}, sort_keys=True)
    return "fs-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def compute_features(
    bars: pd.DataFrame,
    cfg: FeatureConfig,
    reference: pd.Series | None = None,
    names: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Add the feature columns to ONE symbol's bars (sorted by time).

    Args:
        bars: one symbol's validated bars (schema of :mod:`raytrade.data.schema`), oldest first.
        cfg: feature settings.
        reference: close of the reference symbol indexed by timestamp (UTC) for the cross-asset
            features; None leaves them out.
        names: compute only these features (default: all selected by ``cfg``).

    Returns:
        A new DataFrame: ``timestamp``, ``symbol``, the OHLCV columns, then the feature columns
        (float64). The first :func:`warmup_bars` rows hold NaN features; nothing is dropped here.
    """
    specs = feature_specs(cfg, cross_asset=reference is not None)
    if names is not None:
        wanted = set(names)
        specs = [s for s in specs if s.name in wanted]
    x = _Inputs(bars, reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {s.name: np.asarray(s.fn(x), dtype=np.float64) for s in specs}
    columns = {c: bars[c].reset_index(drop=True) for c in (TIMESTAMP, SYMBOL)}  # keep their dtypes
    columns.update({c: bars[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")})
    return pd.DataFrame({**columns, **out}, copy=False)
