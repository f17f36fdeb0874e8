"""Publish each symbol's latest window from a preprocessing run to the Redis online store."""

from __future__ import annotations

from typing import Any

import pandas as pd

from raytrade.config import FeatureConfig, StoreConfig
from raytrade.dataset.preprocess import PreprocessResult
from raytrade.dataset.windows import latest_windows
from raytrade.features.technical import feature_set_version, warmup_bars
from raytrade.store.online import OnlineFeatureStore


def publish_latest_windows(pre: PreprocessResult, bars: pd.DataFrame, features: FeatureConfig, lookback: int,
                           store_cfg: StoreConfig, min_bars: int = 0) -> dict[str, Any]:
    """Write, per symbol, the last ``lookback`` rows of unscaled features and the last warm-up + lookback raw
    bars (at least ``min_bars``: a universe's turbulence index needs ``portfolio.turbulence_window + 2``), under the
    feature-set version of ``features`` + the run's columns, with ``store_cfg.ttl_s``; the same bars also start each
    symbol's bar log (:meth:`~raytrade.store.OnlineFeatureStore.write_bars`), which a server appends new bars to.
    For a universe the rows carry the cross-sectional ``xs_`` columns computed across the whole universe, as trained.

    Returns ``{"url", "version", "keys", "ttl_s"}``. Raises StoreUnavailableError when Redis is unreachable.
    """
    version = feature_set_version(features, pre.feature_columns)
    store = OnlineFeatureStore(store_cfg.url, feature_set_version=version, ttl_s=store_cfg.ttl_s,
                               prefix=store_cfg.prefix)
    n_bars = max(warmup_bars(features, cross_asset=pre.reference_symbol is not None) + lookback, int(min_bars))
    windows = latest_windows(pre.frame, bars, pre.feature_columns, lookback, n_bars)
    keys = store.write_many(windows, meta={"lookback": lookback, "reference_symbol": pre.reference_symbol})
    for symbol, (_, symbol_bars) in windows.items():  # the bar logs a streaming server appends new bars to
        store.write_bars(symbol, symbol_bars, max_bars=len(symbol_bars))
    return {"url": store_cfg.url, "version": version, "keys": keys, "ttl_s": store_cfg.ttl_s}
