"""Incremental universe features (raytrade.features.streaming_universe) against the batch path of ``POST /portfolio``.

Real data: six Dow stocks of ``stooq_dow30_1d.parquet`` (CVX misses 2010-11-19, TRV 2011-02-17: other calendars
than the rest) and SPY of ``lean_us_equity_etf_1d.parquet`` as the cross-asset reference, 2009-2011. The state is
opened on the bars up to a cut and then fed one timestamp at a time; every row it holds is compared with the batch
features over the whole history (per-symbol + cross-asset columns and the turbulence index bit for bit, the ``xs_``
columns to 1e-9), and at some timestamps with :func:`raytrade.serving.portfolio_steps.universe_features` on the
bars up to there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.config import FeatureConfig
from raytrade.data import load_bars
from raytrade.data.universe import Panel
from raytrade.errors import DataValidationError
from raytrade.features.cross_sectional import add_cross_sectional, cross_sectional_columns
from raytrade.features.streaming_universe import StreamingUniverse
from raytrade.features.technical import compute_features, feature_columns
from raytrade.rl.portfolio_decision import past_log_returns
from raytrade.rl.portfolio_risk import turbulence_index
from raytrade.serving.portfolio_steps import turbulence_at_last, universe_features

CFG = FeatureConfig(reference_symbol="SPY")
OWN = feature_columns(CFG, cross_asset=True)
XS = cross_sectional_columns(CFG)
COLUMNS = OWN + XS
LOOKBACK = 8
TURBULENCE = 63
DOW = ["AAPL", "CVX", "KO", "TRV", "JPM", "MSFT"]


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    dow = load_bars(shared("stooq_dow30_1d.parquet"))
    spy = load_bars(shared("lean_us_equity_etf_1d.parquet"))
    out = pd.concat([dow[dow["symbol"].isin(DOW)], spy[spy["symbol"] == "SPY"]], ignore_index=True)
    out = out[(out["timestamp"] >= "2009-01-01") & (out["timestamp"] < "2011-07-01")]
    out["symbol"] = out["symbol"].astype(str)
    return out.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


def frames_of(bars: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {s: g.reset_index(drop=True) for s, g in bars.groupby("symbol", sort=False)}


@pytest.fixture(scope="module")
def batch(bars) -> pd.DataFrame:
    """The batch features of the whole history, as universe_features computes them."""
    frames = frames_of(bars)
    ref = frames["SPY"]
    reference = pd.Series(ref["close"].to_numpy(), index=pd.DatetimeIndex(ref["timestamp"]))
    frame = pd.concat([compute_features(f, CFG, reference=reference) for f in frames.values()], ignore_index=True)
    return add_cross_sectional(frame, CFG, columns=OWN)


def open_at(bars: pd.DataFrame, cut: pd.Timestamp) -> StreamingUniverse:
    return StreamingUniverse(frames_of(bars[bars["timestamp"] <= cut]), CFG, COLUMNS, LOOKBACK, OWN,
                             reference_symbol="SPY", keep_closes=TURBULENCE + 2)


def turbulence_of(state: StreamingUniverse) -> float:
    close, times = state.closes()
    return turbulence_at_last(close, state.symbols, times, TURBULENCE)[0]


def records(rows: pd.DataFrame) -> dict[str, list[dict]]:
    cols = ["timestamp", "open", "high", "low", "close", "volume"]
    return {s: g[cols].to_dict("records") for s, g in rows.groupby("symbol", sort=False)}


def test_every_streamed_row_equals_the_batch_features(bars, batch):
    stamps = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    cut = stamps[300]
    state = open_at(bars, cut)
    complete = {s: g.set_index("timestamp") for s, g in batch[batch[COLUMNS].notna().all(axis=1)].groupby("symbol")}
    panel = Panel.from_bars(bars, state.symbols)
    turbulence = turbulence_index(past_log_returns(panel.close), TURBULENCE)
    at = {t: i for i, t in enumerate(pd.DatetimeIndex(panel.timestamps))}
    checked = 0
    for t in stamps[301:]:
        now = bars[bars["timestamp"] == t]
        assert state.update(records(now)) == 1
        assert state.timestamp == t
        got = turbulence_of(state)
        assert got == turbulence[at[t]] or (np.isnan(got) and np.isnan(turbulence[at[t]]))
        for symbol in now["symbol"]:
            got = state.window(symbol)
            rows = complete.get(symbol, batch.iloc[:0].set_index("timestamp"))
            expect = rows.iloc[max(rows.index.searchsorted(t, side="right") - LOOKBACK, 0): rows.index.searchsorted(
                t, side="right")]
            if len(expect) < LOOKBACK or expect.index[-1] != t:  # no complete batch window at t: none streamed
                assert got is None
                continue
            values, times = got
            assert list(pd.DatetimeIndex(times, tz="UTC")) == list(expect.index)
            np.testing.assert_array_equal(values[:, : len(OWN)], expect[OWN].to_numpy())
            np.testing.assert_allclose(values[:, len(OWN):], expect[XS].to_numpy(), rtol=0, atol=1e-9)
            checked += 1
    assert checked > 6 * 250  # every symbol on (nearly) every bar: the two missed days are the exceptions


def test_a_few_timestamps_equal_the_served_batch_path(bars):
    stamps = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    state = open_at(bars, stamps[400])
    spec = {"features": CFG.model_dump(mode="json"), "columns": COLUMNS, "lookback": LOOKBACK}
    for t in stamps[401:420]:
        state.update(records(bars[bars["timestamp"] == t]))
    served = universe_features(frames_of(bars[bars["timestamp"] <= stamps[419]]), spec, "SPY", TURBULENCE)
    assert served["timestamp"] == state.timestamp
    assert served["turbulence"] == turbulence_of(state)
    assert set(served["rows"]) == {s for s in state.symbols if state.window(s) is not None}
    for symbol, rows in served["rows"].items():
        values, times = state.window(symbol)
        assert list(pd.DatetimeIndex(times, tz="UTC")) == list(pd.DatetimeIndex(rows["timestamp"]))
        np.testing.assert_allclose(values, rows[COLUMNS].to_numpy(), rtol=0, atol=1e-9)


def test_bars_sent_again_are_skipped_and_bad_bars_change_nothing(bars):
    stamps = pd.DatetimeIndex(sorted(bars["timestamp"].unique()))
    state = open_at(bars, stamps[300])
    at = records(bars[bars["timestamp"] == stamps[300]])
    assert state.update(at) == 0  # the last bars again: nothing new
    nxt = records(bars[bars["timestamp"] == stamps[301]])
    before = {s: state.window(s)[0].copy() for s in state.symbols if state.window(s) is not None}

    bad = {s: [dict(b) for b in rows] for s, rows in nxt.items()}
    bad["KO"][0]["low"] = bad["KO"][0]["high"] * 1.01  # high below low
    with pytest.raises(DataValidationError) as err:
        state.update(bad)
    assert "KO" in str(err.value)
    assert state.timestamp == stamps[300]  # AAPL's good bar was not taken in either
    for s, values in before.items():
        np.testing.assert_array_equal(state.window(s)[0], values)

    changed = {s: [dict(b) for b in rows] for s, rows in at.items()}
    changed["AAPL"][0]["close"] *= 1.001
    with pytest.raises(DataValidationError) as err:
        state.update(changed)
    assert err.value.rule == "duplicate_timestamp"

    assert state.update(nxt) == 1
    late = records(bars[(bars["timestamp"] == stamps[301]) & (bars["symbol"] == "CVX")])
    late["CVX"][0]["timestamp"] = stamps[301] - pd.Timedelta(hours=1)
    with pytest.raises(DataValidationError) as err:
        state.update(late)
    assert err.value.rule in {"late_bar", "unsorted_timestamps"}

    with pytest.raises(DataValidationError) as err:
        state.update({"XOM": nxt["AAPL"]})
    assert err.value.rule == "unknown_symbol"
