"""Causal technical features for one symbol's bars, computed with TA-Lib.

Every feature at bar t uses bars at times <= t only (TA-Lib indicators are trailing). The SAME
function runs in training (over a symbol's full history) and in serving (over the bars of a
request). EMA-based indicators (RSI, MACD, ATR) carry memory of their seed, so serving needs at
least :func:`warmup_bars` bars before the first window.

Features (all scale-free, so one model can serve many symbols):

===================  ====================================================================
``log_ret_{k}``      ln(close_t / close_{t-k}), k in ``return_lags`` (TA-Lib ``ROCR``)
``rsi``              RSI(``rsi_period``) / 100, in [0, 1] (Wilder 1978; TA-Lib ``RSI``)
``macd``...          MACD line, signal and histogram divided by close (Appel; TA-Lib ``MACD``)
``bb_pctb``          Bollinger %B = (close - lower) / (upper - lower), bands at 2 std
                     (Bollinger; TA-Lib ``BBANDS``); 0.5 where the band has zero width
``natr``             ATR(``atr_period``) / close as a fraction (Wilder; TA-Lib ``NATR`` / 100)
``volatility``       std of 1-bar log returns over ``volatility_window`` bars (TA-Lib ``STDDEV``)
``volume_z``         z-score of ln(1 + volume) over ``volume_window`` bars; 0 where std is 0
``hl_range``         ln(high / low) of the bar
===================  ====================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import talib

from raytrade.config import FeatureConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP


def feature_columns(cfg: FeatureConfig) -> list[str]:
    """Names of the feature columns :func:`compute_features` adds, in order."""
    return [
        *(f"log_ret_{lag}" for lag in cfg.return_lags),
        "rsi", "macd", "macd_signal", "macd_hist", "bb_pctb", "natr", "volatility", "volume_z", "hl_range",
    ]


def warmup_bars(cfg: FeatureConfig) -> int:
    """Bars at the start of a series whose features are undefined (NaN) and are left out."""
    return max(
        max(cfg.return_lags),
        cfg.rsi_period,
        cfg.macd_slow + cfg.macd_signal - 2,
        cfg.bbands_period - 1,
        cfg.atr_period,
        cfg.volatility_window,
        cfg.volume_window - 1,
    )


def compute_features(bars: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """Add the feature columns to ONE symbol's bars (sorted by time).

    Args:
        bars: one symbol's validated bars (schema of :mod:`raytrade.data.schema`), oldest first.
        cfg: feature windows (bars).

    Returns:
        A new DataFrame: ``timestamp``, ``symbol``, the OHLCV columns, then
        :func:`feature_columns`. The first :func:`warmup_bars` rows hold NaN features; nothing
        is dropped here.
    """
    close = bars["close"].to_numpy(dtype=np.float64)
    high = bars["high"].to_numpy(dtype=np.float64)
    low = bars["low"].to_numpy(dtype=np.float64)
    volume = bars["volume"].to_numpy(dtype=np.float64)

    out: dict[str, np.ndarray] = {}
    for lag in cfg.return_lags:
        out[f"log_ret_{lag}"] = np.log(talib.ROCR(close, timeperiod=lag))
    out["rsi"] = talib.RSI(close, timeperiod=cfg.rsi_period) / 100.0
    macd, signal, hist = talib.MACD(
        close, fastperiod=cfg.macd_fast, slowperiod=cfg.macd_slow, signalperiod=cfg.macd_signal
    )
    out["macd"], out["macd_signal"], out["macd_hist"] = macd / close, signal / close, hist / close
    upper, _, lower = talib.BBANDS(close, timeperiod=cfg.bbands_period, nbdevup=2.0, nbdevdn=2.0)
    width = upper - lower
    with np.errstate(invalid="ignore", divide="ignore"):
        pctb = np.where(width > 0, (close - lower) / width, 0.5)
    out["bb_pctb"] = np.where(np.isnan(width), np.nan, pctb)
    out["natr"] = talib.NATR(high, low, close, timeperiod=cfg.atr_period) / 100.0
    one_bar = np.log(talib.ROCR(close, timeperiod=1))
    out["volatility"] = talib.STDDEV(one_bar, timeperiod=cfg.volatility_window, nbdev=1.0)
    log_vol = np.log1p(volume)
    vol_mean = talib.SMA(log_vol, timeperiod=cfg.volume_window)
    vol_std = talib.STDDEV(log_vol, timeperiod=cfg.volume_window, nbdev=1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        vz = np.where(vol_std > 1e-12, (log_vol - vol_mean) / vol_std, 0.0)
    out["volume_z"] = np.where(np.isnan(vol_std), np.nan, vz)
    out["hl_range"] = np.log(high / low)

    result = bars[[TIMESTAMP, SYMBOL, "open", "high", "low", "close", "volume"]].reset_index(drop=True)
    return pd.concat([result, pd.DataFrame(out)], axis=1)
