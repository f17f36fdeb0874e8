"""Portfolio baselines (raytrade.evaluation.portfolio_baselines) on real daily universes.

References written here know nothing of the module: equal weights from pandas counts, minimum variance from
scipy.optimize (SLSQP) and the closed form ``S^-1 1 / 1' S^-1 1``, top-k picks from pandas ranks, realised
variance from a plain units loop.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from sklearn.covariance import ledoit_wolf

from conftest import shared
from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError
from raytrade.evaluation.portfolio_baselines import (
    equal_weight_buy_and_hold,
    equal_weight_rebalanced,
    minimum_variance,
    rebalance_bars,
    top_k_weights,
)


def _closes(name: str, start: str | None = None) -> pd.DataFrame:
    """Closes ``(T, A)`` on the union calendar of the file's symbols (NaN where a symbol has no bar)."""
    bars = pd.read_parquet(shared(name))
    close = bars.pivot(index="timestamp", columns="symbol", values="close").sort_index()
    return close.loc[start:] if start else close


def _inputs(close: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``past_log_returns[t] = ln(c_t / c_{t-1})`` (NaN unless both bars exist) and ``tradable``."""
    return np.log(close).diff().to_numpy(), close.notna().to_numpy()


def _held_returns(weights: np.ndarray, simple: np.ndarray, start: int) -> np.ndarray:
    """Per-bar simple returns of a cash + units book: buy ``weights[t]`` at a rebalance (finite row), hold the
    units between (NaN rows); ``simple[t]`` ``(A,)`` is the return from close t to close t+1. From ``start`` on."""
    out = []
    value = 1.0
    for t in range(start, len(weights)):
        if np.isfinite(weights[t]).all():
            units = weights[t] * value  # price index 1 at the trade
            cash = value - units.sum()
            prices = np.ones(len(units))
        prices = prices * (1.0 + simple[t])
        new_value = cash + (units * prices).sum()
        out.append(new_value / value - 1.0)
        value = new_value
    return np.array(out)


@pytest.fixture(scope="module")
def lean_all() -> pd.DataFrame:
    """The 13 Lean symbols from 1998: symbols list on different days (FB on 2012-05-18, QQQ 2011-03-23, ...)."""
    return _closes("lean_us_equity_etf_1d.parquet")


@pytest.fixture(scope="module")
def lean() -> pd.DataFrame:
    close = _closes("lean_us_equity_etf_1d.parquet", "2012-05-18")
    assert close.notna().all().all() and close.shape[1] == 13  # all 13 trade on every bar from 2012-05-18
    return close


@pytest.fixture(scope="module")
def dow() -> pd.DataFrame:
    close = _closes("stooq_dow30_1d.parquet")
    assert close.shape[1] == 29 and close.isna().any().any()  # CVX, CRM, TRV, V each miss a day
    return close


# --------------------------------------------------------------------------- equal weight


def test_equal_weight_baselines_buy_the_assets_tradable_at_each_rebalance(lean_all):
    close = lean_all.loc["2011-01-01":"2013-12-31"]  # FB lists inside this span, QQQ too
    _, tradable = _inputs(close)
    counts = close.notna().sum(axis=1).to_numpy()
    assert counts[0] == 11 and counts[-1] == 13

    hold = equal_weight_buy_and_hold(tradable)
    np.testing.assert_allclose(hold[0], np.where(tradable[0], 1.0 / counts[0], 0.0))
    assert np.isnan(hold[1:]).all()

    every = 21
    reb = equal_weight_rebalanced(tradable, every)
    for t in range(len(close)):
        if t % every:
            assert np.isnan(reb[t]).all()
        else:
            expected = np.where(close.iloc[t].notna(), 1.0 / counts[t], 0.0)
            np.testing.assert_allclose(reb[t], expected)
    fb = list(close.columns).index("FB")
    listed = int(np.argmax(tradable[:, fb]))
    first_fb = next(t for t in range(0, len(close), every) if t >= listed)
    assert (reb[:first_fb:every, fb] == 0).all() and reb[first_fb, fb] == pytest.approx(1 / 13)


def test_schedule_starts_at_the_first_bar_with_a_tradable_asset(lean_all):
    close = lean_all.loc["2012-05-10":"2012-07-31", ["FB"]]  # FB lists on 2012-05-18: 6 bars without it
    _, tradable = _inputs(close)
    first = int(np.argmax(tradable[:, 0]))
    assert first == 6
    np.testing.assert_array_equal(rebalance_bars(tradable, 10), np.arange(first, len(close), 10))
    hold = equal_weight_buy_and_hold(tradable)
    assert (hold[:first] == 0).all() and hold[first, 0] == 1.0 and np.isnan(hold[first + 1:]).all()


def test_baselines_run_through_the_portfolio_backtest_as_a_units_book(lean):
    """NaN between rebalances = keep the units: the backtest's equity equals a plain units book's."""
    from raytrade.evaluation.portfolio import portfolio_backtest

    close = lean.to_numpy()
    next_lr = np.log(close[1:] / close[:-1])
    tradable = np.ones(next_lr.shape, dtype=bool)
    simple = np.expm1(next_lr)
    for weights in (equal_weight_buy_and_hold(tradable), equal_weight_rebalanced(tradable, 21)):
        res = portfolio_backtest(weights, next_lr, 0.0, 252.0, symbols=list(lean.columns), name="baseline")
        np.testing.assert_allclose(res.returns, _held_returns(weights, simple, 0), rtol=0, atol=1e-12)
    hold = portfolio_backtest(equal_weight_buy_and_hold(tradable), next_lr, 0.0, 252.0, symbols=list(lean.columns))
    assert hold.equity[-1] == pytest.approx(np.mean(close[-1] / close[0]), rel=1e-12)


# --------------------------------------------------------------------------- causality


def _assert_causal(fn, past_log_returns: np.ndarray, tradable: np.ndarray, cut: int, seed: int = 0):
    """Weights up to ``cut`` are unchanged when rows after ``cut`` are removed, or their returns replaced."""
    full = fn(past_log_returns, tradable)
    truncated = fn(past_log_returns[: cut + 1], tradable[: cut + 1])
    np.testing.assert_array_equal(full[: cut + 1], truncated)
    changed = past_log_returns.copy()
    rng = np.random.default_rng(seed)
    changed[cut + 1:] = rng.normal(0.0, 0.05, changed[cut + 1:].shape)
    np.testing.assert_array_equal(full[: cut + 1], fn(changed, tradable)[: cut + 1])
    return full


def test_every_baseline_is_causal(dow):
    r, tradable = _inputs(dow.iloc[:1100])  # 2009-2013, including CVX's, CRM's, TRV's and V's missing days
    for cut in (399, 1000):  # a rebalance bar (19 * 21) and a bar between rebalances
        _assert_causal(lambda x, m: equal_weight_rebalanced(m, 21), r, tradable, cut)
        _assert_causal(lambda x, m: equal_weight_buy_and_hold(m), r, tradable, cut)
        _assert_causal(lambda x, m: minimum_variance(x, m, 63, 21, True, 0.2), r, tradable, cut)
        # the forecaster's stand-in: 20-bar momentum, known at the close of t
        _assert_causal(lambda x, m: top_k_weights(pd.DataFrame(x).rolling(20).sum().to_numpy(), m, 5, True),
                       r, tradable, cut)


# --------------------------------------------------------------------------- minimum variance


def _slsqp_min_variance(cov: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """``min w'Sw, sum w = 1, lower <= w <= upper`` by scipy's SLSQP (S scaled to unit mean variance)."""
    s = cov / np.mean(np.diag(cov))
    n = len(s)
    res = minimize(lambda w: w @ s @ w, np.full(n, 1.0 / n), jac=lambda w: 2.0 * s @ w, method="SLSQP",
                   bounds=[(lower, upper)] * n,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(n)}],
                   options={"ftol": 1e-16, "maxiter": 1000})
    assert res.success, res.message
    return res.x


def test_minimum_variance_matches_scipy_and_the_closed_form_on_one_window(dow, lean):
    r, tradable = _inputs(dow)
    window, every = 63, 21
    w = minimum_variance(r, tradable, window, every, True, 0.1)  # FinRL-Tutorials' bounds (0, 0.1)
    t = 21 * 40  # a rebalance bar in 2012 with a full window for all 29
    assert np.isfinite(r[t + 1 - window: t + 1]).all()
    cov, _ = ledoit_wolf(r[t + 1 - window: t + 1])
    expected = _slsqp_min_variance(cov, 0.0, 0.1)
    assert (expected > 0.1 - 1e-6).any() and (expected < 1e-6).any()  # both bounds bind: a real bounded problem
    np.testing.assert_allclose(w[t], expected, atol=1e-4)

    # long/short with loose bounds: the closed form S^-1 1 / (1' S^-1 1) of the same covariance
    rl, tl = _inputs(lean)
    wl = minimum_variance(rl, tl, window, every, False, 1.0, max_gross=2.0)
    t = 21 * 10
    cov, _ = ledoit_wolf(rl[t + 1 - window: t + 1])
    x = np.linalg.solve(cov, np.ones(len(cov)))
    closed = x / x.sum()
    assert closed.min() < 0 and np.abs(closed).max() < 1 and np.abs(closed).sum() < 2  # no bound binds
    np.testing.assert_allclose(wl[t], closed, atol=1e-4)


def test_minimum_variance_budget_bounds_warm_up_and_eligibility(dow):
    r, tradable = _inputs(dow)
    window, every, cap = 63, 21, 0.2
    w = minimum_variance(r, tradable, window, every, True, cap)
    bars = np.arange(0, len(dow), every)
    between = np.setdiff1d(np.arange(len(dow)), bars)
    assert np.isnan(w[between]).all() and np.isfinite(w[bars]).all()
    np.testing.assert_allclose(w[bars].sum(axis=1), 1.0, atol=1e-9)
    assert w[bars].min() >= 0.0 and w[bars].max() <= cap + 1e-12
    # row 0 of the returns is NaN: the first full window ends at bar 63; earlier rebalances hold 1/29 each
    for t in bars[bars < window]:
        np.testing.assert_allclose(w[t], np.full(29, 1 / 29))
    # an asset with a missing bar in its window is not eligible (weight 0); CVX misses 2010-11-19
    cvx = list(dow.columns).index("CVX")
    gap = dow.index.get_loc(pd.Timestamp("2010-11-19", tz="UTC"))
    assert np.isnan(dow["CVX"].iloc[gap])
    assert np.isnan(r[gap, cvx]) and np.isnan(r[gap + 1, cvx])
    hit = [t for t in bars if gap <= t <= gap + window]  # windows holding the NaN returns around the gap
    assert len(hit) == 3 and all(w[t, cvx] == 0.0 for t in hit)


def test_minimum_variance_realises_lower_variance_than_equal_weight_out_of_window(dow):
    common = dow.dropna()  # the days all 29 trade (the test's own calendar: drops 2 of 2232 days)
    r, tradable = _inputs(common)
    simple = np.expm1(r[1:])  # close t -> t+1 for bars 0..T-2, used only to score, never by the weights
    window, every = 63, 21
    mv = minimum_variance(r, tradable, window, every, True, 1.0)[:-1]
    ew = equal_weight_rebalanced(tradable, every)[:-1]
    start = 84  # a rebalance after the first full window (rows 1..63 -> bar 63; schedule 0, 21, ...)
    var_mv = np.var(_held_returns(mv, simple, start))
    var_ew = np.var(_held_returns(ew, simple, start))
    assert var_mv < 0.85 * var_ew, (var_mv, var_ew)


def test_minimum_variance_errors_name_the_setting_and_the_bar(dow):
    r, tradable = _inputs(dow.iloc[:200])
    with pytest.raises(ConfigError, match="min_variance_window"):
        minimum_variance(r, tradable, 1, 21)
    with pytest.raises(ConfigError, match="rebalance_bars"):
        minimum_variance(r, tradable, 63, 0)
    with pytest.raises(ConfigError, match="max_weight"):
        minimum_variance(r, tradable, 63, 21, True, 0.0)
    with pytest.raises(ConfigError, match="max_gross"):
        minimum_variance(r, tradable, 63, 21, False, 0.5, max_gross=0.8)
    bad = r.copy()
    bad[150, 3] = np.inf
    with pytest.raises(DataValidationError, match=f"symbol={dow.columns[3]}.*{dow.index[150].date()}"):
        minimum_variance(bad, tradable, 63, 21, symbols=list(dow.columns), index=dow.index)
    flat = np.where(np.isfinite(r), 0.0, np.nan)  # a window of constant prices: nothing to minimise
    with pytest.raises(InsufficientDataError, match=str(dow.index[63].date())):
        minimum_variance(flat, tradable, 63, 21, symbols=list(dow.columns), index=dow.index)
    with pytest.raises(InsufficientDataError, match="no asset is tradable"):
        equal_weight_rebalanced(np.zeros((5, 3), dtype=bool), 2)


def test_minimum_variance_with_fewer_assets_than_the_cap_allows_holds_cash(lean):
    r, tradable = _inputs(lean.iloc[:130, :4])
    w = minimum_variance(r, tradable, 63, 21, True, 0.2)  # 4 * 0.2 < 1: the budget cannot be met
    for t in range(0, 130, 21):
        np.testing.assert_allclose(w[t], 0.2)


# --------------------------------------------------------------------------- top k


def test_top_k_weights_equal_pandas_ranks(lean_all):
    close = lean_all.loc["2003-01-01":"2013-12-31"]  # 6 symbols tradable in 2003, 13 by 2012
    r, tradable = _inputs(close)
    score = pd.DataFrame(r, index=close.index, columns=close.columns).rolling(20).sum()
    k = 3
    long_only = top_k_weights(score.to_numpy(), tradable, k)
    long_short = top_k_weights(score.to_numpy(), tradable, k, long_short=True)

    ranks = score.where(close.notna()).rank(axis=1, ascending=False, method="first")
    m = ranks.notna().sum(axis=1).to_numpy()
    expected = np.where(ranks.to_numpy() <= k, 1.0 / k, 0.0)
    np.testing.assert_allclose(long_only, expected)
    side = np.minimum(k, m // 2)
    worst = ranks.to_numpy() > (m - side)[:, None]
    expected_ls = np.where(ranks.to_numpy() <= side[:, None], 0.5 / k, 0.0) - np.where(worst, 0.5 / k, 0.0)
    np.testing.assert_allclose(long_short, expected_ls)

    full = m >= 2 * k
    np.testing.assert_allclose(long_only[m >= k].sum(axis=1), 1.0)
    np.testing.assert_allclose(np.abs(long_short[full]).sum(axis=1), 1.0)
    np.testing.assert_allclose(long_short[full].sum(axis=1), 0.0, atol=1e-15)
    assert (long_only[~tradable] == 0).all() and (long_short[~np.isfinite(score.to_numpy())] == 0).all()
    assert (m[:20] == 0).all() and (long_only[:20] == 0).all()  # the 20-bar warm-up: no score, all cash


def test_top_k_with_fewer_candidates_keeps_position_sizes_and_breaks_ties_by_column():
    tradable = np.array([[True, True, True, False], [True, False, False, False]])
    scores = np.array([[1.0, 1.0, np.nan, 5.0], [2.0, 3.0, 4.0, 5.0]])
    np.testing.assert_allclose(top_k_weights(scores, tradable, 3), [[1 / 3, 1 / 3, 0, 0], [1 / 3, 0, 0, 0]])
    np.testing.assert_allclose(top_k_weights(scores, tradable, 2, long_short=True),
                               [[0.25, -0.25, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ConfigError, match="top_k"):
        top_k_weights(scores, tradable, 0)
