"""Incremental features (raytrade.features.streaming) equal the batch computation bit for bit, on real bars.

A row computed one bar at a time must be exactly what ``compute_features`` gives over the whole history, for every
feature and every bar; a bad bar is refused with the batch path's error and leaves the state as it was.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from raytrade.config import FeatureConfig
from raytrade.data import load_bars
from raytrade.data.validation import validate_bars, validate_next_bar
from raytrade.errors import DataValidationError, InsufficientDataError
from raytrade.features import compute_features, warmup_bars
from raytrade.features.streaming import StreamingFeatures

KEYS = ("timestamp", "open", "high", "low", "close", "volume")


def _records(bars: pd.DataFrame) -> list[dict]:
    return [dict(zip(KEYS, row, strict=True)) for row in bars[list(KEYS)].itertuples(index=False)]


def _stream_equals_batch(bars: pd.DataFrame, cfg: FeatureConfig, extra: int = 3) -> None:
    batch = compute_features(bars, cfg)
    start = warmup_bars(cfg) + 1 + extra
    state = StreamingFeatures(bars.iloc[:start].reset_index(drop=True), cfg, keep=64)
    opened = state.history[state.columns].to_numpy()
    assert np.array_equal(opened, batch.iloc[:start][state.columns].to_numpy(), equal_nan=True)
    expected = batch[state.columns].to_numpy()
    for i, bar in enumerate(_records(bars.iloc[start:]), start=start):
        row = state.update(bar)
        diff = ~((row == expected[i]) | (np.isnan(row) & np.isnan(expected[i])))
        assert not diff.any(), f"bar {i}: {[c for c, d in zip(state.columns, diff, strict=True) if d]} differ"
    tail = batch.iloc[-64:][["timestamp", *state.columns]].reset_index(drop=True)
    pd.testing.assert_frame_equal(state.rows(), tail, check_exact=True)


@pytest.mark.parametrize("calendar", [True, False])
def test_every_streamed_row_equals_the_batch_row_on_hourly_crypto(btc_bars, calendar):
    _stream_equals_batch(btc_bars.iloc[:800].reset_index(drop=True), FeatureConfig(calendar=calendar))


def test_every_streamed_row_equals_the_batch_row_on_daily_equities():
    bars = load_bars(REPO / "data" / "lean_us_equity_etf_1d.parquet")
    one = bars[bars["symbol"] == sorted(bars["symbol"].unique())[0]].reset_index(drop=True).iloc[:600]
    _stream_equals_batch(one, FeatureConfig())


def test_a_bad_bar_is_refused_like_the_batch_path_and_changes_nothing(btc_bars):
    cfg = FeatureConfig()
    bars = btc_bars.iloc[:400].reset_index(drop=True)
    start = warmup_bars(cfg) + 1
    state = StreamingFeatures(bars.iloc[:start].reset_index(drop=True), cfg)
    good = _records(bars.iloc[start : start + 1])[0]
    bad_bars = {
        "ohlc_relation": {**good, "high": good["low"] * 0.5},
        "non_positive_price": {**good, "close": 0.0},
        "nan": {**good, "open": float("nan")},
        "negative_volume": {**good, "volume": -1.0},
        "duplicate_timestamp": {**good, "timestamp": state.last_bar["timestamp"]},
        "unsorted_timestamps": {**good, "timestamp": state.last_bar["timestamp"] - pd.Timedelta(hours=1)},
    }
    for rule, bar in bad_bars.items():
        with pytest.raises(DataValidationError) as streamed:
            state.update(bar)
        pair = pd.DataFrame([state.last_bar, bar]).assign(symbol=state.symbol)
        pair["timestamp"] = pd.to_datetime(pair["timestamp"], utc=True)
        with pytest.raises(DataValidationError) as batch:
            validate_bars(pair)
        assert streamed.value.rule == batch.value.rule == rule
        assert str(streamed.value) == str(batch.value)
    # nothing moved: the good bar still gets exactly the batch row
    row = state.update(good)
    expected = compute_features(bars.iloc[: start + 1], cfg)[state.columns].to_numpy()[-1]
    assert np.array_equal(row, expected, equal_nan=True)


def test_validate_next_bar_accepts_what_validate_bars_accepts(btc_bars):
    bars = btc_bars.iloc[:300].reset_index(drop=True)
    records = _records(bars)
    for prev, bar in zip(records, records[1:], strict=False):
        validate_next_bar("BTC-USD", prev, bar)  # a real, clean series passes bar by bar


def test_too_short_a_history_is_refused(btc_bars):
    cfg = FeatureConfig()
    with pytest.raises(InsufficientDataError, match="at least"):
        StreamingFeatures(btc_bars.iloc[: warmup_bars(cfg)].reset_index(drop=True), cfg)
