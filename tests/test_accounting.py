"""The book of raytrade_envs.accounting against a plain cash-and-units reference loop, on real daily bars.

The reference below knows nothing of weights, drift formulas or Newton steps: it holds cash and units per asset,
values them at prices, and at each fill trades to ``target * equity-after-costs / fill price`` units, paying
``rate * |units traded| * fill price`` out of cash (the post-cost equity found by bisection). The backtester, the
env and ``simulate`` must end with the same equity to 1e-9 and report the same notional traded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.evaluation import backtest
from raytrade_envs import TradingEnv, VecTradingEnv, simulate

COST_BPS = 10.0


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    """20 years of daily bars (1998-2017) of SPY, IBM and AAPL: open and close side by side, ``(time, assets)``."""
    bars = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet"))
    bars = bars[bars["symbol"].isin(["SPY", "IBM", "AAPL"])]
    wide = bars.pivot(index="timestamp", columns="symbol", values=["open", "close"]).dropna()
    assert len(wide) > 4900  # every one of these three trades on every day of the file
    return wide


def _reference_book(open_: np.ndarray, close: np.ndarray, targets: np.ndarray, cost_bps: float,
                    slippage: np.ndarray, next_open: bool) -> tuple[float, np.ndarray]:
    """Final equity and per-bar traded notional (fraction of the equity at the fill) of a cash + units book.

    ``targets[t]`` ``(A,)`` is decided at ``close[t]`` and filled at ``open[t+1]`` (``next_open``) or ``close[t]``;
    the book is valued at ``close[t+1]``. Prices ``(T + 1, A)``; ``slippage[t]`` ``(A,)`` extra cost fractions.
    """
    cash, units = 1.0, np.zeros(targets.shape[1])
    traded = np.zeros(len(targets))
    for t in range(len(targets)):
        price = open_[t + 1] if next_open else close[t]
        value = cash + units @ price
        rate = cost_bps * 1e-4 + slippage[t]
        holding = units * price
        # the equity left after paying for the trade to `targets[t]` of it: bisect on
        # surplus(after) = value - sum(rate * |targets[t] * after - holding|) - after, > 0 at 0 and <= 0 at value
        lo, hi = 0.0, value
        for _ in range(64):  # the bracket shrinks to 2**-64 of the equity
            mid = 0.5 * (lo + hi)
            if value - float(np.sum(rate * np.abs(targets[t] * mid - holding))) - mid > 0.0:
                lo = mid
            else:
                hi = mid
        after = 0.5 * (lo + hi)
        new_units = targets[t] * after / price
        traded[t] = float(np.sum(np.abs(new_units - units) * price)) / value
        cash = after - new_units @ price
        units = new_units
    return cash + units @ close[len(targets)], traded


def _inputs(daily: pd.DataFrame, symbols: list[str]):
    open_ = daily["open"][symbols].to_numpy()
    close = daily["close"][symbols].to_numpy()
    lr = np.diff(np.log(close), axis=0)
    gap = np.log(open_[1:]) - np.log(close[:-1])
    vol = pd.DataFrame(np.vstack([np.zeros((1, len(symbols))), lr])).rolling(20).std().bfill().to_numpy()[:-1]
    return open_, close, lr, gap, 0.05 * vol


def _momentum(close: np.ndarray, lookback: int = 20) -> np.ndarray:
    """Sign of the trailing ``lookback``-bar return, known at each close ``(T, A)`` (0 before enough history)."""
    past = np.vstack([np.full((lookback, close.shape[1]), np.nan), close[:-lookback]])
    return np.nan_to_num(np.sign(close / past - 1.0))


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_backtest_equals_cash_and_units_book_long_short_and_fractional(daily, fill):
    open_, close, lr, gap, slip = _inputs(daily, ["SPY"])
    signal = _momentum(close)[:-1, 0]
    strategies = {
        "long_short": signal,  # +1 / -1 daily: the short drifts every bar
        "fractional": 0.3 + 0.4 * signal,  # 0.7 long / 0.1 short
    }
    next_open = fill == "next_open"
    for name, targets in strategies.items():
        res = backtest(targets, lr[:, 0], COST_BPS, 252.0, name=name, gap_returns=gap[:, 0] if next_open else None,
                       slippage=slip[:, 0])
        ref_equity, ref_traded = _reference_book(open_, close, targets[:, None], COST_BPS, slip, next_open)
        assert res.equity[-1] == pytest.approx(ref_equity, rel=1e-9, abs=0.0), name
        np.testing.assert_allclose(res.traded, ref_traded, rtol=1e-9, atol=1e-12, err_msg=name)
        assert res.metrics["turnover"] == pytest.approx(ref_traded.mean(), rel=1e-9)
        # the trades that keep a short or a fraction constant are real: on bars where such a target did not change,
        # the book still traded (the old accounting charged nothing there); a 100% long never drifts
        unchanged = np.flatnonzero(np.diff(targets) == 0.0) + 1
        drifting = unchanged[(targets[unchanged] != 0.0) & (targets[unchanged] != 1.0)]
        assert drifting.size > 1000 and np.mean(res.traded[drifting] > 0.0) > 0.95  # 0 only after a flat bar
        assert np.all(res.traded[unchanged[targets[unchanged] == 1.0]] == 0.0)


def test_portfolio_book_per_asset_equals_cash_and_units(daily):
    symbols = ["SPY", "IBM", "AAPL"]
    open_, close, lr, gap, slip = _inputs(daily, symbols)
    mom = _momentum(close)[:-1]
    targets = 0.25 * mom + np.array([0.1, 0.0, -0.05])  # fractional long/short per asset, gross <= 0.9
    book = simulate(targets, lr, COST_BPS, gap_returns=gap, slippage=slip)
    ref_equity, ref_traded = _reference_book(open_, close, targets, COST_BPS, slip, next_open=True)
    assert float(np.prod(1.0 + book.net)) == pytest.approx(ref_equity, rel=1e-9, abs=0.0)
    np.testing.assert_allclose(book.turnover, ref_traded, rtol=1e-9, atol=1e-12)


def test_buy_and_hold_reproduces_the_instruments_total_return(daily):
    """First fill (the open after the first decision) to last close, in the backtester, the env and the vector env."""
    open_, close, lr, gap, _ = _inputs(daily, ["SPY"])
    n = len(lr)
    instrument = close[-1, 0] / open_[1, 0]
    res = backtest(np.ones(n), lr[:, 0], 0.0, 252.0, gap_returns=gap[:, 0])
    assert res.equity[-1] == pytest.approx(instrument, rel=1e-9, abs=0.0)
    # with costs, the entry is the only trade: a 100% long never drifts, so it never pays again
    r = COST_BPS * 1e-4
    res_cost = backtest(np.ones(n), lr[:, 0], COST_BPS, 252.0, gap_returns=gap[:, 0])
    assert res_cost.equity[-1] == pytest.approx(instrument / (1.0 + r), rel=1e-9, abs=0.0)
    assert np.all(res_cost.traded[1:] == 0.0)

    feats = np.zeros((n + 1, 1), dtype=np.float32)
    rets = np.append(lr[:, 0], 0.0)  # the env never trades the last bar's return
    gaps = np.append(gap[:, 0], 0.0)
    env = TradingEnv(feats, rets, window=1, cost_bps=0.0, gap_returns=gaps)
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))
        done = terminated or truncated
    assert info["equity"] == pytest.approx(instrument, rel=1e-9, abs=0.0)
    vec = VecTradingEnv(2, features=feats, returns=rets, window=1, cost_bps=0.0, gap_returns=gaps)
    vec.reset(seed=0)
    for _ in range(n):
        _, _, _, truncated, infos = vec.step(np.ones((2, 1), dtype=np.float32))
    assert truncated.all()
    np.testing.assert_allclose(infos["equity"], instrument, rtol=1e-9, atol=0.0)
