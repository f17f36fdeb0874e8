"""Universe loading and calendar alignment (raytrade.data.universe) on real multi-asset files.

Every expected value is computed here, independently, from the raw bars of the shared files (plain pandas per
symbol), never by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.config import DataConfig
from raytrade.data.ingest import read_many
from raytrade.data.universe import ALIGNMENT_POLICY, Panel, load_universe, universe_from_config
from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError

LEAN = "lean_us_equity_etf_1d.parquet"
STOOQ = "stooq_dow30_1d.parquet"


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture(scope="module")
def lean():
    return load_universe(shared(LEAN))


@pytest.fixture(scope="module")
def stooq():
    return load_universe(shared(STOOQ))


def _raw(name: str) -> pd.DataFrame:
    return pd.read_parquet(shared(name))


def _reference_next_returns(raw: pd.DataFrame, symbol: str, calendar: pd.DatetimeIndex) -> np.ndarray:
    """The alignment rule written out per symbol: the log return between two consecutive real bars of the symbol
    is credited once, on the calendar row just before the later bar; 0 everywhere else; NaN on the last row."""
    rows = raw[raw["symbol"] == symbol].sort_values("timestamp")
    closes = rows["close"].to_numpy()
    where = [calendar.get_loc(t) for t in rows["timestamp"]]
    expected = np.zeros(len(calendar))
    for k in range(1, len(closes)):
        expected[where[k] - 1] = np.log(closes[k] / closes[k - 1])
    expected[-1] = np.nan
    return expected


# ------------------------------------------------------------------ symbols that start late (Lean, 13 symbols)


def test_union_calendar_and_late_starter(lean):
    raw = _raw(LEAN)
    p = lean.panel
    assert lean.symbols == tuple(pd.unique(raw["symbol"]))  # order of first appearance
    assert p.timestamps.equals(pd.DatetimeIndex(sorted(set(raw["timestamp"]))))
    assert p.shape == (len(p.timestamps), 13)
    assert int(p.has_bar.sum()) == len(raw)

    fb = lean.symbols.index("FB")
    fb_raw = raw[raw["symbol"] == "FB"].sort_values("timestamp")
    start = p.timestamps.get_loc(fb_raw["timestamp"].iloc[0])
    assert p.timestamps[start] == _ts("2012-05-18") and start > 3000
    before = slice(0, start)
    assert not p.has_bar[before, fb].any()
    assert np.isnan(p.close[before, fb]).all() and np.isnan(p.open[before, fb]).all()
    assert np.isnan(p.marks()[before, fb]).all()
    returns = p.next_log_returns()
    assert (returns[before, fb] == 0).all()  # no return before it lists, none at the row before its first bar
    # its first real return is earned once, on its first bar's row, from its first close to its second
    first_return = np.log(fb_raw["close"].iloc[1] / fb_raw["close"].iloc[0])
    assert returns[start, fb] == pytest.approx(first_return, rel=1e-12)
    np.testing.assert_allclose(returns[:, fb], _reference_next_returns(raw, "FB", p.timestamps), rtol=1e-12)
    assert np.nansum(returns[:, fb]) == pytest.approx(np.log(fb_raw["close"].iloc[-1] / fb_raw["close"].iloc[0]))
    assert p.first_bar()[fb] == start and p.life()[start:, fb].all() and not p.life()[before, fb].any()
    # prices on the panel are the raw bars, untouched
    on = p.has_bar[:, fb]
    np.testing.assert_array_equal(p.close[on, fb], fb_raw["close"].to_numpy())
    np.testing.assert_array_equal(p.volume[on, fb], fb_raw["volume"].to_numpy())


def test_panel_arrays_are_read_only(lean):
    with pytest.raises(ValueError):
        lean.panel.close[0, 0] = 1.0
    with pytest.raises(ValueError):
        lean.panel.has_bar[0, 0] = True


# ------------------------------------------------------------------ missed days (stooq Dow 30)


def test_missed_day_is_credited_at_the_next_bar(stooq):
    raw = _raw(STOOQ)
    p = stooq.panel
    returns, marks = p.next_log_returns(), p.marks()
    for symbol, day in (("CVX", "2010-11-19"), ("CRM", "2011-02-17"), ("TRV", "2011-02-17"), ("V", "2011-02-17")):
        a, t = stooq.symbols.index(symbol), p.timestamps.get_loc(_ts(day))
        rows = raw[raw["symbol"] == symbol].set_index("timestamp")["close"]
        prev_close = rows[rows.index < _ts(day)].iloc[-1]
        next_close = rows[rows.index > _ts(day)].iloc[0]
        assert not p.has_bar[t, a] and np.isnan(p.close[t, a])  # never filled
        assert marks[t, a] == prev_close  # marked at the last real close
        assert returns[t - 1, a] == 0.0  # nothing earned into the missed day ...
        assert returns[t, a] == pytest.approx(np.log(next_close / prev_close), rel=1e-12)  # ... all at the next bar
        assert not p.fillable("close")[t, a] and not p.fillable("next_open")[t - 1, a]
    assert stooq.summary()["per_symbol"]["CVX"]["missing_bars"] == 1


def test_returns_over_each_life_reproduce_first_to_last_close(stooq):
    raw = _raw(STOOQ)
    p = stooq.panel
    returns = p.next_log_returns()
    assert np.isnan(returns[-1]).all() and np.isfinite(returns[:-1]).all()
    for a, symbol in enumerate(stooq.symbols):
        closes = raw[raw["symbol"] == symbol].sort_values("timestamp")["close"].to_numpy()
        assert returns[:-1, a].sum() == pytest.approx(np.log(closes[-1] / closes[0]), abs=1e-9)
        np.testing.assert_allclose(returns[:, a], _reference_next_returns(raw, symbol, p.timestamps), rtol=1e-12)


def test_gap_returns_split_the_bar_at_the_open(stooq):
    raw = _raw(STOOQ)
    p = stooq.panel
    gap, full = p.next_gap_returns(), p.next_log_returns()
    a = stooq.symbols.index("CVX")
    cvx = raw[raw["symbol"] == "CVX"].sort_values("timestamp").set_index("timestamp")
    t = p.timestamps.get_loc(_ts("2010-11-19"))  # missed: the gap into 11-22 is from the close of 11-18
    assert gap[t - 1, a] == 0.0
    assert gap[t, a] == pytest.approx(np.log(cvx.loc[_ts("2010-11-22"), "open"] / cvx.loc[_ts("2010-11-18"), "close"]))
    nxt = p.has_bar[1:]
    intrabar = np.log(p.close[1:] / p.open[1:])
    np.testing.assert_allclose((full - gap)[:-1][nxt], intrabar[nxt], rtol=1e-9, atol=1e-12)
    assert np.isnan(gap[-1]).all()


def test_slice_keeps_the_mark_from_before_its_first_row(stooq):
    p = stooq.panel
    cut = p.slice_time("2010-11-19", "2011-03-01")
    rows = np.flatnonzero((p.timestamps >= _ts("2010-11-19")) & (p.timestamps <= _ts("2011-03-01")))
    assert cut.timestamps.equals(p.timestamps[rows])
    a = stooq.symbols.index("CVX")
    assert not cut.has_bar[0, a] and cut.marks()[0, a] == p.close[rows[0] - 1, a]
    np.testing.assert_allclose(cut.next_log_returns()[:-1], p.next_log_returns()[rows[:-1]], rtol=0, atol=0)
    assert list(p.index_of(["2010-11-19", _ts("2010-11-22")])) == [rows[0], rows[1]]
    with pytest.raises(KeyError, match="2010-11-20"):
        p.index_of("2010-11-20")  # a Saturday


# ------------------------------------------------------------------ weekday equities beside 24/7 crypto


def _crypto_daily() -> pd.DataFrame:
    """Daily bars of two Binance pairs, resampled from their real hourly bars (pandas, UTC days)."""
    hourly = pd.read_parquet(shared("cdd_binance_crypto_1h.parquet"))
    hourly = hourly[hourly["symbol"].isin(["BTC/USDT", "ETH/USDT"])]
    daily = (hourly.set_index("timestamp").groupby("symbol")
             .resample("1D").agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
             .dropna().reset_index())
    return daily[["timestamp", "symbol", "open", "high", "low", "close", "volume"]]


def test_mixed_calendar_weekends_for_crypto_only(tmp_path):
    # Lean's equities end 2017-11-10, before these crypto bars start; ^DJI (weekday index) overlaps them
    crypto = _crypto_daily()
    crypto.to_parquet(tmp_path / "crypto_1d.parquet")
    pd.read_parquet(shared("finrl_dji_1d.parquet")).to_parquet(tmp_path / "dji_1d.parquet")
    u = load_universe(tmp_path, start="2017-12-13", end="2018-10-05")  # the DJI's corrupt 2015 bar is outside
    assert set(u.symbols) == {"^DJI", "BTC/USDT", "ETH/USDT"} and u.interval_s == 86400.0
    p = u.panel
    weekend = p.timestamps.dayofweek >= 5
    assert weekend.sum() > 70
    dji, btc = u.symbols.index("^DJI"), u.symbols.index("BTC/USDT")
    assert not p.has_bar[weekend, dji].any() and p.has_bar[weekend, btc].all()
    np.testing.assert_array_equal(p.fillable("close"), p.has_bar)
    np.testing.assert_array_equal(p.fillable("next_open")[:-1], p.has_bar[1:])
    assert not p.fillable("next_open")[-1].any()
    raw = pd.concat([crypto, pd.read_parquet(shared("finrl_dji_1d.parquet"))])
    raw = raw[(raw["timestamp"] >= _ts("2017-12-13")) & (raw["timestamp"] <= _ts("2018-10-05"))]
    assert p.timestamps.equals(pd.DatetimeIndex(sorted(set(raw["timestamp"]))))
    for symbol in u.symbols:
        np.testing.assert_allclose(p.next_log_returns()[:, u.symbols.index(symbol)],
                                   _reference_next_returns(raw, symbol, p.timestamps), rtol=1e-12)
    # a Friday-to-Monday move of the index is earned on the Sunday row, from Friday's close
    friday = p.timestamps.get_loc(_ts("2018-01-05"))
    dji_raw = raw[raw["symbol"] == "^DJI"].set_index("timestamp")["close"]
    assert p.next_log_returns()[friday, dji] == 0 and p.next_log_returns()[friday + 1, dji] == 0
    assert p.next_log_returns()[friday + 2, dji] == pytest.approx(
        np.log(dji_raw[_ts("2018-01-08")] / dji_raw[_ts("2018-01-05")]))


def test_mixed_intervals_are_refused():
    hourly = pd.read_parquet(shared("cdd_binance_crypto_1h.parquet"))
    frame = pd.concat([_raw(STOOQ).query("symbol == 'AAPL'"), hourly[hourly["symbol"] == "BTC/USDT"]],
                      ignore_index=True)
    with pytest.raises(ConfigError, match=r"AAPL has 86400 s bars and BTC/USDT has 3600 s bars"):
        load_universe(frame)


# ------------------------------------------------------------------ a symbol that fails validation


@pytest.fixture(scope="module")
def dji_and_aapl() -> pd.DataFrame:
    return pd.concat([_raw("finrl_dji_1d.parquet"), _raw(STOOQ).query("symbol == 'AAPL'")], ignore_index=True)


def test_symbol_policy_fail_names_the_symbol(dji_and_aapl):
    with pytest.raises(DataValidationError) as caught:
        load_universe(dji_and_aapl)
    err = caught.value
    assert (err.rule, err.symbol, err.timestamp) == ("ohlc_relation", "^DJI", _ts("2015-08-31"))
    assert "^DJI" in str(err) and "2015-08-31" in str(err)


def test_symbol_policy_exclude_goes_on_without_it(dji_and_aapl):
    before = dji_and_aapl.copy(deep=True)
    u = load_universe(dji_and_aapl, symbol_policy="exclude")
    pd.testing.assert_frame_equal(dji_and_aapl, before)  # the input is neither reordered nor filled
    assert u.symbols == ("AAPL",) and list(u.excluded) == ["^DJI"]
    assert "ohlc_relation" in u.excluded["^DJI"] and "2015-08-31" in u.excluded["^DJI"]
    assert "\n" not in u.excluded["^DJI"]
    aapl = dji_and_aapl[dji_and_aapl["symbol"] == "AAPL"].reset_index(drop=True)
    pd.testing.assert_frame_equal(u.bars, aapl)
    # the merged report covers the whole universe: the excluded symbol's error, with its row in the input
    (err,) = u.validation.errors()
    assert (err.symbol, err.rule, err.first_timestamp) == ("^DJI", "ohlc_relation", _ts("2015-08-31"))
    row = err.examples[0]["row"]
    assert dji_and_aapl["timestamp"].iloc[row] == _ts("2015-08-31") and dji_and_aapl["symbol"].iloc[row] == "^DJI"
    assert set(u.validation.symbols) == {"^DJI", "AAPL"}
    summary = u.summary()
    json.dumps(summary)
    assert summary["excluded"] == u.excluded and summary["alignment"] == ALIGNMENT_POLICY
    assert summary["symbols"] == ["AAPL"] and summary["per_symbol"]["AAPL"]["bars"] == len(aapl)


def test_policy_drop_keeps_the_symbol_without_its_bad_bar(dji_and_aapl):
    u = load_universe(dji_and_aapl, policy="drop")
    assert u.symbols == ("^DJI", "AAPL") and u.excluded == {}
    dji = u.bars[u.bars["symbol"] == "^DJI"]
    assert len(dji) == (dji_and_aapl["symbol"] == "^DJI").sum() - 1 and _ts("2015-08-31") not in set(dji["timestamp"])
    assert u.validation.dropped == {"ohlc_relation": {"^DJI": 1}}


def test_a_symbol_emptied_by_drop_is_named():
    # FinRL's Dow file: adjusted close beside unadjusted open/high/low, so `drop` removes every bar of some symbols
    raw = _raw("finrl_dow30_1d.parquet")
    low_bad = raw["low"] > np.minimum(raw["open"], raw["close"]) * (1 + 1e-9)
    high_bad = raw["high"] < np.maximum(np.maximum(raw["open"], raw["close"]), raw["low"]) * (1 - 1e-9)
    bad = (low_bad | high_bad).groupby(raw["symbol"]).all()
    emptied = list(bad[bad].index)
    assert emptied
    with pytest.raises(DataValidationError) as caught:
        load_universe(shared("finrl_dow30_1d.parquet"), policy="drop")
    assert caught.value.symbol == emptied[0] and "policy 'drop'" in str(caught.value)
    u = load_universe(shared("finrl_dow30_1d.parquet"), policy="drop", symbol_policy="exclude")
    assert sorted(u.excluded) == sorted(emptied) and set(u.symbols) == set(bad[~bad].index)


def test_every_symbol_excluded_is_an_error():
    with pytest.raises(DataValidationError, match=r"\^DJI") as caught:
        load_universe(shared("finrl_dji_1d.parquet"), symbol_policy="exclude")
    assert caught.value.rule == "all_symbols_excluded"


# ------------------------------------------------------------------ data.symbols, start/end, max_bars, config


def test_symbols_keep_the_given_order(stooq):
    u = load_universe(shared(STOOQ), symbols=["V", "AAPL", "CVX"])
    assert u.symbols == u.panel.symbols == ("V", "AAPL", "CVX")
    assert list(pd.unique(u.bars["symbol"])) == ["V", "AAPL", "CVX"]
    a, b = u.symbols.index("CVX"), stooq.symbols.index("CVX")
    np.testing.assert_array_equal(u.panel.close[:, a], stooq.panel.close[:, b])


def test_missing_symbol_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        load_universe(shared(STOOQ), symbols=["AAPL", "TSLA", "XOM"])
    text = str(caught.value)
    assert text.startswith("data.symbols") and "'TSLA'" in text and "'XOM'" in text and STOOQ in text
    assert "AAPL, AMGN" in text  # some of what the file holds


def test_start_end_window_utc():
    raw = _raw(LEAN)
    u = load_universe(shared(LEAN), start="2012-05-18", end="2013-01-31")
    expected = raw[(raw["timestamp"] >= _ts("2012-05-18")) & (raw["timestamp"] <= _ts("2013-01-31"))]
    assert len(u.bars) == len(expected) and u.panel.timestamps[0] == _ts("2012-05-18")
    assert u.panel.timestamps[-1] == _ts("2013-01-31") and len(u.symbols) == 13
    # an aware bound is converted to UTC: 2012-05-18 00:00 New York is 04:00 UTC, after that day's bar
    later = load_universe(shared(LEAN), start="2012-05-18T00:00:00-04:00", end="2013-01-31")
    assert later.panel.timestamps[0] == _ts("2012-05-21")
    with pytest.raises(ConfigError, match="data.start"):
        load_universe(shared(LEAN), start="2013-02-01", end="2013-01-31")
    with pytest.raises(ConfigError, match="data.end"):
        load_universe(shared(LEAN), end="not a date")


def test_symbol_without_bars_in_the_window():
    with pytest.raises(DataValidationError, match="BNO") as caught:  # the first in file order of BNO, FB, QQQ
        load_universe(shared(LEAN), end="2010-01-01")
    assert (caught.value.rule, caught.value.symbol) == ("empty", "BNO")
    u = load_universe(shared(LEAN), end="2010-01-01", symbol_policy="exclude")
    assert {"FB", "QQQ", "BNO"} == set(u.excluded) and "WM" in u.symbols


def test_max_bars_and_min_bars(stooq):
    raw = _raw(STOOQ)
    u = load_universe(shared(STOOQ), symbols=["CVX", "AAPL"], max_bars=100)
    for symbol in u.symbols:
        tail = raw[raw["symbol"] == symbol].sort_values("timestamp").tail(100)
        np.testing.assert_array_equal(u.bars.loc[u.bars["symbol"] == symbol, "close"], tail["close"])
    late = load_universe(shared(LEAN), symbols=["SPY", "FB"], min_bars=2000, symbol_policy="exclude")
    assert late.symbols == ("SPY",) and "min_bars=2000" in late.excluded["FB"]
    with pytest.raises(InsufficientDataError, match="FB"):
        load_universe(shared(LEAN), symbols=["SPY", "FB"], min_bars=2000)


def test_single_symbol_file_is_a_universe_of_one():
    path = shared("gymanytrading_googl_1d_yahoo.csv")
    u = load_universe(path, symbol="GOOGL")
    raw = read_many(path, "GOOGL")
    assert u.symbols == ("GOOGL",) and u.panel.shape == (len(raw), 1) and u.panel.has_bar.all()
    np.testing.assert_array_equal(u.panel.close[:, 0], raw["close"].to_numpy())
    np.testing.assert_allclose(u.panel.next_log_returns()[:-1, 0], np.diff(np.log(raw["close"].to_numpy())))


def test_universe_from_config(stooq):
    cfg = DataConfig(path=shared(STOOQ), symbols=("TRV", "IBM"), start="2011-01-01", end="2011-12-31")
    u = universe_from_config(cfg)
    assert u.symbols == ("TRV", "IBM") and u.path == shared(STOOQ)
    assert u.panel.timestamps[0] >= _ts("2011-01-01") and u.panel.timestamps[-1] <= _ts("2011-12-31")
    summary = u.summary()
    assert summary["start"] == "2011-01-01T00:00:00+00:00" and summary["per_symbol"]["TRV"]["missing_bars"] == 1


def test_panel_from_bars_refuses_duplicates():
    bars = _raw(STOOQ).query("symbol == 'AAPL'").head(5)
    with pytest.raises(DataValidationError, match="duplicate_timestamp"):
        Panel.from_bars(pd.concat([bars, bars.tail(1)]))
