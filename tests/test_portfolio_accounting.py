"""Portfolio accounting on a real universe: the portfolio backtest against a plain cash-and-units reference loop,
orders that cannot fill (an asset before it lists, NaN "hold" targets), the exposure-limit projection, and the
unmasked book staying bit-identical.

The universe: SPY, IBM, AAPL, GOOGL (lists 2004-08-19), QQQ (2011-03-23 in this file) and FB (2012-05-18) from
``lean_us_equity_etf_1d.parquet``, on the union of their calendars (no symbol misses a day once it trades). The
reference below knows nothing of weights, drift or Newton steps: it holds cash and units per asset, values them at
prices, and at each fill trades the assets that can trade to ``target * equity-after-costs / fill price`` units,
paying ``rate * |units traded| * fill price`` out of cash (the post-cost equity found by bisection); the others keep
their units.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.evaluation.backtest import metrics_table
from raytrade.evaluation.portfolio import (
    PortfolioResult,
    portfolio_backtest,
    portfolio_metrics_table,
    run_portfolio_backtests,
)
from raytrade_envs.accounting import simulate
from raytrade_envs.actions import WEIGHT_TOLERANCE, project_weights

SYMBOLS = ["SPY", "IBM", "AAPL", "GOOGL", "QQQ", "FB"]
COST_BPS = 10.0
PPY = 252.0


@pytest.fixture(scope="module")
def universe() -> dict:
    """Union-calendar arrays built from the raw bars: prices ``(T + 1, A)`` (NaN before an asset lists), and
    ``(T, A)`` log returns, gap returns, slippage and the tradable mask (0 / False where a bar is missing)."""
    bars = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet"))
    bars = bars[bars["symbol"].isin(SYMBOLS)]
    wide = bars.pivot(index="timestamp", columns="symbol", values=["open", "close"]).sort_index()
    open_ = wide["open"][SYMBOLS].to_numpy()
    close = wide["close"][SYMBOLS].to_numpy()
    listed = ~np.isnan(close)
    first = listed.argmax(axis=0)
    assert all(listed[f:, a].all() for a, f in enumerate(first))  # no symbol misses a day once it trades
    assert str(wide.index[first[SYMBOLS.index("FB")]].date()) == "2012-05-18"
    both = listed[:-1] & listed[1:]
    with np.errstate(invalid="ignore"):
        lr = np.where(both, np.log(close[1:]) - np.log(close[:-1]), 0.0)
        gap = np.where(both, np.log(open_[1:]) - np.log(close[:-1]), 0.0)
    # slippage 0.05 * trailing 20-bar volatility of close-to-close log returns known at t (0 until 20 returns)
    past = pd.DataFrame(np.vstack([np.full((1, len(SYMBOLS)), np.nan), np.where(both, lr, np.nan)]))
    vol = past.rolling(20).std().to_numpy()[:-1]
    slip = 0.05 * np.nan_to_num(vol, nan=0.0)
    return {"open": open_, "close": close, "lr": lr, "gap": gap, "slip": slip, "tradable": both, "first": first,
            "timestamps": wide.index[:-1]}


def _reference_book(u: dict, targets: np.ndarray, tradable: np.ndarray, next_open: bool) -> dict[str, np.ndarray]:
    """Cash + units per asset, bar by bar. ``targets[t]`` (NaN = no order) fill at ``open[t+1]`` or ``close[t]``
    where ``tradable[t]``; the book is valued at ``close[t+1]``. Returns per-bar equity, traded notional (fraction of
    the equity at the fill), costs (fraction of the equity at ``close[t]``), the weights held just after the trade
    (fraction of the equity after costs) and each asset's P&L over the bar (fraction of the equity at ``close[t]``).
    """
    open_, close = np.nan_to_num(u["open"]), np.nan_to_num(u["close"])  # price 0 only where no units are held
    n, n_assets = targets.shape
    cash, units = 1.0, np.zeros(n_assets)
    out = {k: np.zeros(n) for k in ("equity", "traded", "costs")}
    out["weights"], out["pnl"] = np.zeros((n, n_assets)), np.zeros((n, n_assets))
    for t in range(n):
        start = cash + units @ close[t]
        price = open_[t + 1] if next_open else close[t]
        value = cash + units @ price
        trade = tradable[t] & ~np.isnan(targets[t])
        goal = np.where(trade, targets[t], 0.0)
        rate = np.where(trade, COST_BPS * 1e-4 + u["slip"][t], 0.0)
        holding = units * price
        lo, hi = 0.0, value  # surplus(after) = value - costs(after) - after: > 0 at 0, <= 0 at value
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            if value - float(np.sum(rate * np.abs(goal * mid - holding))) - mid > 0.0:
                lo = mid
            else:
                hi = mid
        after = 0.5 * (lo + hi)
        new_units = np.where(trade, goal * after / np.where(trade, price, 1.0), units)
        out["traded"][t] = float(np.sum(np.abs(new_units - units) * price)) / value
        out["costs"][t] = (value - after) / start
        out["weights"][t] = new_units * price / after
        out["pnl"][t] = (units * (price - close[t]) + new_units * (close[t + 1] - price)) / start
        cash = after - new_units @ price
        units = new_units
        out["equity"][t] = cash + units @ close[t + 1]
    return out


def _check_against_reference(res: PortfolioResult, ref: dict[str, np.ndarray]) -> None:
    assert res.equity[-1] == pytest.approx(ref["equity"][-1], rel=1e-9, abs=0.0)
    np.testing.assert_allclose(res.equity, ref["equity"], rtol=1e-9, atol=0.0)
    np.testing.assert_allclose(res.traded, ref["traded"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.costs, ref["costs"], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(res.weights, ref["weights"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.asset_pnl, ref["pnl"], rtol=1e-8, atol=1e-12)
    assert res.metrics["turnover"] == pytest.approx(ref["traded"].mean(), rel=1e-9)
    assert res.metrics["costs_paid"] == pytest.approx(ref["costs"].sum(), rel=1e-9)
    # the attribution: asset P&L less costs is each bar's return, so contributions - costs_paid = sum of returns
    np.testing.assert_allclose(res.asset_pnl.sum(axis=1) - res.costs, res.returns, rtol=0.0, atol=1e-14)
    assert sum(res.contributions.values()) - res.metrics["costs_paid"] == pytest.approx(res.returns.sum(), abs=1e-12)


def _momentum(u: dict, lookback: int = 20) -> np.ndarray:
    """``ln(close[t] / close[t - lookback])`` ``(T, A)`` known at each close; 0 without ``lookback`` bars of history."""
    logc = np.log(u["close"][:-1])
    mom = np.full_like(logc, np.nan)
    mom[lookback:] = logc[lookback:] - logc[:-lookback]
    return np.nan_to_num(mom, nan=0.0)


def _long_only_weights(u: dict) -> np.ndarray:
    """Softmax of 10 x momentum over the assets that can trade, capped at 35 % each, 95 % gross: changes every bar."""
    score = np.where(u["tradable"], np.exp(10.0 * _momentum(u)), 0.0)
    raw = score / score.sum(axis=1, keepdims=True)
    return project_weights(raw, long_only=True, max_weight=0.35, max_gross=0.95, max_net=0.95)


def _long_short_weights(u: dict) -> np.ndarray:
    """Cross-sectionally demeaned momentum x 8 over the assets that can trade; 30 % per asset, 150 % gross, 20 % net."""
    mom = np.where(u["tradable"], _momentum(u), np.nan)
    raw = np.nan_to_num(8.0 * (mom - np.nanmean(mom, axis=1, keepdims=True)), nan=0.0)
    return project_weights(raw, long_only=False, max_weight=0.3, max_gross=1.5, max_net=0.2)


def _interval_weights(n: int, n_assets: int, every: int = 21) -> np.ndarray:
    """Equal weights over all assets on every ``every``-th bar, NaN ("keep the units") in between."""
    w = np.full((n, n_assets), np.nan)
    w[::every] = 1.0 / n_assets
    return w


# --------------------------------------------------------------------------- the backtest against the reference


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_long_only_weights_changing_every_bar_equal_cash_and_units(universe, fill):
    u, next_open = universe, fill == "next_open"
    w = _long_only_weights(u)
    assert np.mean(np.any(np.diff(w, axis=0) != 0.0, axis=1)) > 0.99
    res = portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="momentum", tradable=u["tradable"],
                             gap_returns=u["gap"] if next_open else None, slippage=u["slip"])
    _check_against_reference(res, _reference_book(u, w, u["tradable"], next_open))
    assert np.all(res.weights >= 0.0) and np.all(res.gross <= 0.95 + 1e-12)
    np.testing.assert_array_equal(res.net, res.gross)  # long-only
    np.testing.assert_allclose(res.metrics["avg_gross_exposure"], res.gross.mean())


def test_long_short_weights_equal_cash_and_units(universe):
    u = universe
    w = _long_short_weights(u)
    assert (w < 0).any(axis=1).mean() > 0.9 and np.abs(w).sum(axis=1).max() > 1.0  # short and leveraged
    res = portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="long_short", tradable=u["tradable"],
                             gap_returns=u["gap"], slippage=u["slip"])
    _check_against_reference(res, _reference_book(u, w, u["tradable"], next_open=True))
    assert np.all(np.abs(res.net) <= 0.2 + 1e-9) and np.all(res.gross <= 1.5 + 1e-9)
    assert res.metrics["avg_net_exposure"] == pytest.approx(res.net.mean())


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_interval_rebalancing_with_hold_targets_and_a_late_listing(universe, fill):
    """Equal weights over all six every 21 bars, NaN in between; FB (and GOOGL, QQQ) cannot trade before they list."""
    u, next_open = universe, fill == "next_open"
    n, n_assets = u["lr"].shape
    w = _interval_weights(n, n_assets)
    res = portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="equal_weight_21",
                             tradable=u["tradable"], gap_returns=u["gap"] if next_open else None, slippage=u["slip"])
    _check_against_reference(res, _reference_book(u, w, u["tradable"], next_open))
    fb = SYMBOLS.index("FB")
    listing = u["first"][fb]
    assert np.all(res.weights[:listing, fb] == 0.0) and np.all(res.held[: listing + 1, fb] == 0.0)
    held_fb = np.flatnonzero(res.weights[:, fb] > 0.0)
    assert held_fb[0] == -(-listing // 21) * 21  # FB enters at the first rebalance on or after its listing
    # between rebalances nothing trades: NaN keeps the units, so no notional and no costs there
    between = np.ones(n, dtype=bool)
    between[::21] = False
    assert np.all(res.traded[between] == 0.0) and np.all(res.costs[between] == 0.0)
    assert np.all(res.traded[~between][1:] > 0.0)  # a real rebalance of drifted weights
    # the weights drift between rebalances (what the strategy really held), from 1/6 at each rebalance
    assert np.ptp(res.weights[22:41, 0]) > 1e-3


def test_staggered_long_short_orders_keep_the_other_assets_units(universe):
    """Each asset gets an order only every 7 bars, on its own day (asset ``a`` on bars ``t % 7 == a``), NaN else:
    on every bar one asset trades while the others, long or short, keep their units and pay nothing."""
    u = universe
    n, n_assets = u["lr"].shape
    w = _long_short_weights(u)
    staggered = np.where(np.arange(n)[:, None] % 7 == np.arange(n_assets)[None, :], w, np.nan)
    res = portfolio_backtest(staggered, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="staggered",
                             tradable=u["tradable"], gap_returns=u["gap"], slippage=u["slip"])
    ref = _reference_book(u, staggered, u["tradable"], next_open=True)
    _check_against_reference(res, ref)
    kept = np.isnan(staggered) & (res.held != 0.0)
    assert kept.sum() > 10000 and np.any(res.weights[kept] < 0.0)


def test_buy_and_hold_equal_weight_is_the_average_instrument_return_less_the_entry_cost(universe):
    """From the first bar all six trade: one equal-weight fill at the next open, NaN after; closed form."""
    u = universe
    start = int(u["first"].max())
    lr, gap, slip, ok = (u[k][start:] for k in ("lr", "gap", "slip", "tradable"))
    n, n_assets = lr.shape
    w = np.full((n, n_assets), np.nan)
    w[0] = 1.0 / n_assets
    res = portfolio_backtest(w, lr, COST_BPS, PPY, symbols=SYMBOLS, name="buy_and_hold", tradable=ok,
                             gap_returns=gap, slippage=slip)
    rate = COST_BPS * 1e-4 + slip[0]
    x = 1.0 / (1.0 + np.sum(rate * w[0]))  # x = 1 - sum rate |w x - 0| from a flat book
    growth = u["close"][-1] / u["open"][start + 1]
    assert res.equity[-1] == pytest.approx(x * np.sum(w[0] * growth), rel=1e-9, abs=0.0)
    assert np.all(res.traded[1:] == 0.0)
    np.testing.assert_allclose(res.metrics["costs_paid"], 1.0 - x, rtol=1e-12)
    # the last "target" is what the book really held at the last fill: the entry's units at the last open
    units = x * w[0] / u["open"][start + 1]
    value = units * u["open"][-1]
    assert res.last_weights == pytest.approx(dict(zip(SYMBOLS, value / value.sum(), strict=True)), rel=1e-9)


# --------------------------------------------------------------------------- the result, errors and the table


def test_result_is_read_only_and_its_report_is_json(universe):
    u = universe
    res = run_portfolio_backtests({"momentum": _long_only_weights(u), "ew": _interval_weights(*u["lr"].shape)},
                                  u["lr"], COST_BPS, PPY, symbols=SYMBOLS, tradable=u["tradable"],
                                  gap_returns=u["gap"], slippage=u["slip"])
    assert list(res) == ["momentum", "ew"]
    r = res["momentum"]
    for arr in (r.weights, r.held, r.returns, r.equity, r.traded, r.costs, r.gross, r.net, r.asset_pnl):
        assert not arr.flags.writeable
    report = json.loads(json.dumps(r.report()))
    assert list(report["weights"]) == SYMBOLS and report["weights"]["SPY"] == float(r.weights[-1, 0])
    assert set(report) >= {"sharpe", "turnover", "avg_gross_exposure", "avg_net_exposure", "costs_paid", "weights",
                           "contributions"}
    assert all(isinstance(v, (int, float)) for v in r.metrics.values())
    np.testing.assert_array_equal(r.equity, np.cumprod(1.0 + r.returns))
    # hit_rate scores the bars in the market (gross > 0): bars before the first position do not count
    active = r.gross > 1e-12
    assert r.metrics["hit_rate"] == pytest.approx(np.mean(r.returns[active] > 0.0))
    table = portfolio_metrics_table(res)
    base = metrics_table(res).split("\n")
    lines = table.split("\n")
    assert len(lines) == 4 and all(line.startswith(b) for line, b in zip(lines[2:], base[2:], strict=True))
    assert lines[0].split()[-3:] == ["gross%", "net%", "costs%"] and set(lines[1]) == {"-"}
    assert lines[2].split()[-1] == f"{100.0 * r.metrics['costs_paid']:.2f}"


def test_errors_name_the_strategy_bar_and_symbol(universe):
    u = universe
    w = _long_only_weights(u)
    bad = w.copy()
    bad[10, 2] = 1.5
    with pytest.raises(ValueError, match=r"'mom'.*weights\[10, 2\] = 1\.5 at bar 10 \(1998-01-16.*'AAPL'"):
        portfolio_backtest(bad, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="mom", timestamps=u["timestamps"])
    bad[10, 2] = np.inf
    with pytest.raises(ValueError, match=r"'mom'.*bar 10, symbol 'AAPL'"):
        portfolio_backtest(bad, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="mom")
    lr = u["lr"].copy()
    lr[7, 5] = np.nan
    with pytest.raises(ValueError, match=r"'mom'.*next_log_returns.*bar 7, symbol 'FB'"):
        portfolio_backtest(w, lr, COST_BPS, PPY, symbols=SYMBOLS, name="mom")
    with pytest.raises(ValueError, match=r"'mom'.*5 symbols for 6"):
        portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS[:5], name="mom")
    with pytest.raises(ValueError, match=r"unique"):
        portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS[:5] + ["SPY"], name="mom")
    with pytest.raises(ValueError, match=r"'mom'.*tradable must be a bool"):
        portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="mom", tradable=u["tradable"] * 1)
    with pytest.raises(ValueError, match=r"'mom'.*gap_returns must have shape"):
        portfolio_backtest(w, u["lr"], COST_BPS, PPY, symbols=SYMBOLS, name="mom", gap_returns=u["gap"][1:])
    with pytest.raises(ValueError, match=r"'mom'.*cost_bps"):
        portfolio_backtest(w, u["lr"], -1.0, PPY, symbols=SYMBOLS, name="mom")
    with pytest.raises(ValueError, match=r"'mom'.*shape \(T, A\)"):
        portfolio_backtest(w[:, 0], u["lr"][:, 0], COST_BPS, PPY, symbols=["SPY"], name="mom")


# --------------------------------------------------------------------------- simulate: the mask


def test_simulate_without_a_mask_is_bit_identical_to_an_all_true_mask_and_to_the_one_asset_path(universe):
    u = universe
    start = int(u["first"].max())
    lr, gap, slip = (u[k][start:] for k in ("lr", "gap", "slip"))
    w = _long_short_weights(u)[start:]
    plain = simulate(w, lr, COST_BPS, gap_returns=gap, slippage=slip)
    masked = simulate(w, lr, COST_BPS, gap_returns=gap, slippage=slip, tradable=np.ones(w.shape, dtype=bool))
    for field in ("net", "cost", "traded", "held", "held_end", "target"):
        np.testing.assert_array_equal(getattr(masked, field), getattr(plain, field), err_msg=field)
    np.testing.assert_array_equal(plain.target, w)
    one = simulate(w[:, 0], lr[:, 0], COST_BPS, gap_returns=gap[:, 0], slippage=slip[:, 0])
    one_masked = simulate(w[:, 0], lr[:, 0], COST_BPS, gap_returns=gap[:, 0], slippage=slip[:, 0],
                          tradable=np.ones(len(w), dtype=bool))
    two = simulate(w[:, :1], lr[:, :1], COST_BPS, gap_returns=gap[:, :1], slippage=slip[:, :1],
                   tradable=np.ones((len(w), 1), dtype=bool))
    for field in ("net", "cost", "traded", "held", "target"):
        np.testing.assert_array_equal(getattr(one_masked, field), getattr(one, field), err_msg=field)
        np.testing.assert_array_equal(getattr(two, field).reshape(-1), getattr(one, field), err_msg=field)


def test_masked_path_agrees_bit_for_bit_on_bars_where_everything_trades_and_keeps_units_elsewhere(universe):
    u = universe
    w = _long_short_weights(u)
    ok = np.ones(w.shape, dtype=bool)
    ok[-1, 0] = False  # only the last bar is masked: every earlier bar must be the vectorised path's, bit for bit
    plain = simulate(w, u["lr"], COST_BPS, gap_returns=u["gap"], slippage=u["slip"])
    masked = simulate(w, u["lr"], COST_BPS, gap_returns=u["gap"], slippage=u["slip"], tradable=ok)
    for field in ("net", "cost", "traded", "held", "target"):
        np.testing.assert_array_equal(getattr(masked, field)[:-1], getattr(plain, field)[:-1], err_msg=field)
    assert masked.traded[-1, 0] == 0.0 and masked.target[-1, 0] != w[-1, 0]
    # the kept position is the drifted holding at the fill, as a fraction of the equity after costs
    held, em_gap = masked.held[-1], np.expm1(u["gap"][-1])
    drifted = held * (1.0 + em_gap) / (1.0 + held @ em_gap)
    x = 1.0 - masked.cost[-1] / (1.0 + held @ em_gap)
    assert masked.target[-1, 0] == pytest.approx(drifted[0] / x, rel=1e-12)


def test_masked_path_is_fast_enough():
    rng = np.random.default_rng(16)
    n, n_assets = 5000, 30
    w = project_weights(rng.normal(0.0, 0.2, (n, n_assets)), long_only=False, max_weight=0.2, max_gross=1.5,
                        max_net=0.5)
    lr = rng.normal(0.0, 0.02, (n, n_assets))
    ok = rng.random((n, n_assets)) > 0.05
    t0 = time.perf_counter()
    path = simulate(w, lr, COST_BPS, gap_returns=0.3 * lr, slippage=1e-4, tradable=ok)
    elapsed = time.perf_counter() - t0
    assert np.all(path.traded[~ok] == 0.0)
    assert elapsed < 3.0, f"{elapsed:.2f} s for T=5000, A=30 (about 0.2 s on one free core)"


def test_simulate_rejects_a_bad_mask():
    w = np.zeros((5, 2))
    with pytest.raises(ValueError, match="tradable must be a bool array of shape"):
        simulate(w, w, 1.0, tradable=np.ones((5, 3), dtype=bool))
    with pytest.raises(ValueError, match="tradable must be a bool array of shape"):
        simulate(w, w, 1.0, tradable=np.ones((5, 2)))


# --------------------------------------------------------------------------- project_weights


def _reference_projection(row: list[float], long_only: bool, mw: float, mg: float, mn: float) -> list[float]:
    """The documented steps, one plain Python float at a time."""
    w = [max(x, 0.0) if long_only else x for x in row]
    w = [min(max(x, -mw), mw) for x in w]
    gross = sum(abs(x) for x in w)
    if gross > mg + WEIGHT_TOLERANCE:
        w = [x * mg / gross for x in w]
    longs = sum(x for x in w if x > 0)
    shorts = -sum(x for x in w if x < 0)
    if longs - shorts > mn + WEIGHT_TOLERANCE:
        w = [x * (mn + shorts) / longs if x > 0 else x for x in w]
    elif shorts - longs > mn + WEIGHT_TOLERANCE:
        w = [x * (mn + longs) / shorts if x < 0 else x for x in w]
    return w


LIMITS = [  # (long_only, max_weight, max_gross, max_net)
    (True, 1.0, 1.0, 1.0),
    (True, 0.25, 1.0, 0.6),
    (True, 0.1, 2.0, 0.0),
    (False, 1.0, 1.0, 1.0),
    (False, 0.3, 1.5, 0.2),
    (False, 0.5, 2.0, 0.0),
    (False, 0.05, 0.3, 1.0),
]


def _adversarial(n_assets: int) -> np.ndarray:
    rows = [
        np.zeros(n_assets), np.full(n_assets, np.inf), np.full(n_assets, -np.inf), np.full(n_assets, 1e300),
        np.full(n_assets, -1e-300), np.full(n_assets, 0.5), np.linspace(-3.0, 3.0, n_assets),
        np.r_[np.inf, -np.inf, np.zeros(n_assets - 2)], np.r_[1.0, np.full(n_assets - 1, -1e-9)],
        np.r_[-1.0, np.full(n_assets - 1, 1e-9)], np.r_[np.full(n_assets - 1, 1.0 / (n_assets - 1)), 0.0],
    ]
    return np.vstack(rows)


@pytest.mark.parametrize(("long_only", "mw", "mg", "mn"), LIMITS)
def test_project_weights_respects_every_limit_and_is_idempotent(long_only, mw, mg, mn):
    rng = np.random.default_rng(7)
    n_assets = 8
    raw = np.vstack([rng.standard_t(2, (3000, n_assets)) * rng.choice([0.01, 0.1, 1.0, 10.0], (3000, 1)),
                     _adversarial(n_assets)])
    out = project_weights(raw, long_only=long_only, max_weight=mw, max_gross=mg, max_net=mn)
    assert out.shape == raw.shape and out.dtype == np.float64 and np.all(np.isfinite(out))
    if long_only:
        assert np.all(out >= 0.0)
    assert np.all(np.abs(out) <= mw)
    assert np.all(np.abs(out).sum(axis=1) <= mg + WEIGHT_TOLERANCE)
    assert np.all(np.abs(out.sum(axis=1)) <= mn + WEIGHT_TOLERANCE)
    # never grows a weight, never flips a sign
    clipped = np.clip(np.maximum(raw, 0.0) if long_only else raw, -mw, mw)
    assert np.all(np.abs(out) <= np.abs(clipped)) and np.all(out * clipped >= 0.0)
    # idempotent, bit for bit; rows inside the limits come back unchanged
    np.testing.assert_array_equal(project_weights(out, long_only=long_only, max_weight=mw, max_gross=mg,
                                                  max_net=mn), out)
    with np.errstate(invalid="ignore"):  # inf - inf in the rows of +-inf: those are not inside
        inside = (np.all(raw == clipped, axis=1) & (np.abs(raw).sum(axis=1) <= mg)
                  & (np.abs(raw.sum(axis=1)) <= mn))
    np.testing.assert_array_equal(out[inside], raw[inside])
    # the documented steps, written as a plain loop
    ref = np.array([_reference_projection(list(map(float, r)), long_only, mw, mg, mn) for r in raw])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-15)
    # a binding limit binds exactly: the net at max_net where it was cut, the gross at max_gross where only it was
    gross = np.abs(clipped).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        after_gross = np.where(gross > mg, clipped * mg / gross, clipped)
    net_cut = np.abs(after_gross.sum(axis=1)) > mn + 1e-6
    gross_cut = (gross[:, 0] > mg + 1e-6) & ~net_cut
    assert net_cut.sum() > 100 or mn >= mg  # the net limit binds on many rows where it can
    np.testing.assert_allclose(np.abs(out[net_cut].sum(axis=1)), mn, atol=1e-12)
    np.testing.assert_allclose(np.abs(out[gross_cut]).sum(axis=1), mg, rtol=1e-12)


def test_project_weights_vectorises_over_leading_axes_and_rejects_nan_and_bad_limits():
    rng = np.random.default_rng(3)
    raw = rng.normal(0.0, 1.0, (4, 5, 6))
    before = raw.copy()
    kw = {"long_only": False, "max_weight": 0.3, "max_gross": 1.2, "max_net": 0.1}
    out = project_weights(raw, **kw)
    np.testing.assert_array_equal(out.reshape(-1, 6), project_weights(raw.reshape(-1, 6), **kw))
    np.testing.assert_array_equal(out[2, 3], project_weights(raw[2, 3], **kw))
    np.testing.assert_array_equal(raw, before)  # the input is not written to
    raw[1, 2, 4] = np.nan
    with pytest.raises(ValueError, match=r"NaN at index \(1, 2, 4\)"):
        project_weights(raw, **kw)
    for bad in ({"max_weight": 0.0}, {"max_weight": 1.5}, {"max_gross": 0.0}, {"max_gross": np.inf},
                {"max_net": -0.1}, {"max_net": np.nan}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            project_weights(np.zeros(3), **{**kw, **bad})
    with pytest.raises(ValueError, match=r"shape \(\.\.\., A\)"):
        project_weights(0.5, **kw)
