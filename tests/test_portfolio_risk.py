"""The portfolio risk layer and FinRL's turbulence rule (raytrade.rl.portfolio_risk) on real daily universes.

References written here know nothing of the module: turbulence from explicit loops over assets and
``np.linalg.pinv``, the quantile by sorting and interpolating, drawdowns from the returned net returns, and the
book from :func:`raytrade_envs.simulate` (a path independent of the risk layer's callback).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.errors import ConfigError, InsufficientDataError
from raytrade.evaluation.portfolio_baselines import equal_weight_rebalanced
from raytrade.rl.ensemble import risk_limit
from raytrade.rl.portfolio_risk import (
    risk_limit_weights,
    risk_limited_weights,
    turbulence_index,
    turbulence_threshold,
)
from raytrade_envs import bar_step, simulate
from raytrade_envs.accounting import step_book
from raytrade_envs.actions import project_weights

COST_BPS = 10.0


def _closes(name: str, start: str | None = None) -> pd.DataFrame:
    """Closes ``(T, A)`` on the union calendar of the file's symbols (NaN where a symbol has no bar)."""
    bars = pd.read_parquet(shared(name))
    close = bars.pivot(index="timestamp", columns="symbol", values="close").sort_index()
    return close.loc[start:] if start else close


@pytest.fixture(scope="module")
def dow() -> pd.DataFrame:
    return _closes("stooq_dow30_1d.parquet")


@pytest.fixture(scope="module")
def lean() -> pd.DataFrame:
    close = _closes("lean_us_equity_etf_1d.parquet", "2012-05-18")
    assert close.notna().all().all() and close.shape[1] == 13
    return close


@pytest.fixture(scope="module")
def dow_turbulence(dow) -> pd.Series:
    return pd.Series(turbulence_index(np.log(dow).diff().to_numpy(), 252), index=dow.index)


# --------------------------------------------------------------------------- turbulence


def _reference_turbulence(r: np.ndarray, t: int, window: int) -> float:
    """``(y - mu) pinv(S) (y - mu)'`` with mu, S of rows ``t - window .. t - 1`` by explicit loops over assets."""
    cols = [a for a in range(r.shape[1]) if all(math.isfinite(r[s, a]) for s in range(t - window, t + 1))]
    n = len(cols)
    mu = [sum(r[s, a] for s in range(t - window, t)) / window for a in cols]
    cov = np.empty((n, n))
    for i in range(n):
        xi = r[t - window: t, cols[i]] - mu[i]
        for j in range(n):
            cov[i, j] = float(np.dot(xi, r[t - window: t, cols[j]] - mu[j])) / (window - 1)
    dev = np.array([r[t, a] - mu[i] for i, a in enumerate(cols)])
    return float(dev @ np.linalg.pinv(cov) @ dev)


def test_turbulence_equals_a_plain_loop_reference(dow, dow_turbulence):
    r = np.log(dow).diff().to_numpy()
    window = 252
    d = dow_turbulence.to_numpy()
    first = window + 1  # row 0 has no return: the first full window is rows 1..252, for bar 253
    assert np.isnan(d[:first]).all() and np.isfinite(d[first:]).all() and (d[first:] >= 0).all()
    gap = dow.index.get_loc(pd.Timestamp("2010-11-19", tz="UTC"))  # CVX has no bar: left out for 254 bars
    for t in (first, first + 1, gap + 1, gap + 100, 1500, len(dow) - 1):
        assert d[t] == pytest.approx(_reference_turbulence(r, t, window), rel=1e-8)
    # at gap + 1 CVX is left out, so the value differs from one computed with CVX's gap bridged by 0
    bridged = np.nan_to_num(r)
    assert abs(_reference_turbulence(bridged, gap + 1, window) - d[gap + 1]) > 1e-3


def test_turbulence_is_causal(dow):
    r = np.log(dow).diff().to_numpy()[:700]
    full = turbulence_index(r, 126)
    cut = 450
    np.testing.assert_array_equal(full[: cut + 1], turbulence_index(r[: cut + 1], 126))
    changed = r.copy()
    changed[cut + 1:] *= -3.0
    np.testing.assert_array_equal(full[: cut + 1], turbulence_index(changed, 126)[: cut + 1])
    assert not np.array_equal(full[cut + 1:], turbulence_index(changed, 126)[cut + 1:])


def test_threshold_is_the_in_sample_quantile(dow_turbulence):
    values = dow_turbulence[:"2014-12-31"].to_numpy()
    ordered = sorted(v for v in values if v == v)
    for q in (0.9, 0.99):
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        expected = ordered[lo] + (pos - lo) * (ordered[lo + 1] - ordered[lo])
        assert turbulence_threshold(values, q) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError, match="turbulence_quantile"):
        turbulence_threshold(values, 1.0)
    with pytest.raises(InsufficientDataError, match="turbulence_window"):
        turbulence_threshold(values[:252], 0.99)  # the warm-up only: all NaN


def test_turbulence_spikes_above_the_in_sample_threshold_in_august_2011_and_2015(dow_turbulence):
    """Real-data sanity check on the 29 Dow stocks, threshold = 99th percentile of 2009-2014 (Yang et al. 2020).

    The August 2011 sell-off (US downgrade) peaks on 10-11 August above the threshold. In August 2015 the
    month's peak is 5 August (Disney's -9 % day: with 29 single stocks an idiosyncratic move is as "unusual" as a
    market one); the crash week of 20-25 August is above FinRL's code's 90th percentile, not the 99th.
    """
    s = dow_turbulence
    high = turbulence_threshold(s[:"2014-12-31"].to_numpy(), 0.99)
    assert s["2011-08-10":"2011-08-11"].min() > high
    assert s["2015-08"].max() > high
    assert s["2015-08-20":"2015-08-24"].max() > turbulence_threshold(s[:"2014-12-31"].to_numpy(), 0.90)
    calm = s["2017-01":"2017-03"]  # a quiet quarter
    assert calm.median() < s["2011-08-08":"2011-08-11"].min()


# --------------------------------------------------------------------------- one bar of the risk layer


LIMITS = {"long_only": False, "max_weight": 0.3, "max_gross": 1.2, "max_net": 0.5}


def test_risk_limited_weights_projects_then_cuts_then_goes_to_cash(lean):
    r = np.log(lean).diff().to_numpy()[1:]
    raw = pd.DataFrame(r).rolling(20).sum().to_numpy()[19:] * 10.0  # momentum scores as raw weights
    for row in raw[::50]:
        proj = project_weights(row, **LIMITS)
        out = risk_limited_weights(row, drawdown=0.05, **LIMITS, max_drawdown=0.1)
        np.testing.assert_array_equal(out, proj)
        assert np.abs(out).max() <= 0.3 + 1e-12 and np.abs(out).sum() <= 1.2 + 1e-12
        assert abs(out.sum()) <= 0.5 + 1e-12
        cut = risk_limited_weights(row, drawdown=0.15, **LIMITS, max_drawdown=0.1, drawdown_cut=0.4)
        np.testing.assert_allclose(cut, 0.4 * proj, rtol=0, atol=0)
        at_limit = risk_limited_weights(row, drawdown=0.1, **LIMITS, max_drawdown=0.1, drawdown_cut=0.4)
        np.testing.assert_array_equal(at_limit, proj)  # the trigger is strict: drawdown > max_drawdown
        cash = risk_limited_weights(row, drawdown=0.15, turbulence=120.0, threshold=100.0, **LIMITS)
        assert (cash == 0).all()
        calm = risk_limited_weights(row, turbulence=100.0, threshold=100.0, **LIMITS)
        np.testing.assert_array_equal(calm, proj)
        warm_up = risk_limited_weights(row, turbulence=float("nan"), threshold=100.0, **LIMITS)
        np.testing.assert_array_equal(warm_up, proj)
    with pytest.raises(ConfigError, match="drawdown_cut"):
        risk_limited_weights(raw[0], drawdown_cut=1.5)
    with pytest.raises(ConfigError, match="max_drawdown"):
        risk_limited_weights(raw[0], max_drawdown=0.0)


# --------------------------------------------------------------------------- the risk layer over a series


def _step(next_lr: np.ndarray, cost_bps: float):
    """The book of raytrade_envs.accounting on bar t (fills at the close)."""
    rate = np.full(next_lr.shape[1], cost_bps * 1e-4)

    def step(t: int, held: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        net, _, _, held_next = step_book(held, target, np.zeros_like(target), np.expm1(next_lr[t]), rate)
        return float(net), held_next

    return step


def test_risk_limit_weights_cuts_at_the_right_bars_by_hand():
    """Two assets moving alike (the ensemble test's path): a 20 % loss, then a recovery; turbulence on bar 3."""
    lr = np.log([0.80, 0.95, 1.10, 1.10, 1.10])
    next_lr = np.column_stack([lr, lr])
    turb = np.array([np.nan, 1.0, 1.0, 9.0, 1.0])
    out, net = risk_limit_weights(np.full((5, 2), 0.75), _step(next_lr, 0.0), turbulence=turb, threshold=5.0,
                                  max_drawdown=0.1, drawdown_cut=0.5)
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.25, 0.25], [0.25, 0.25], [0, 0], [0.25, 0.25]])
    eq = np.cumprod(1 + net)
    np.testing.assert_allclose(eq, np.cumprod([0.8, 1 + 0.5 * -0.05, 1 + 0.5 * 0.1, 1.0, 1 + 0.5 * 0.1]))


def test_risk_limit_weights_on_one_asset_equals_the_single_asset_risk_layer(lean):
    spy = lean["SPY"].to_numpy()
    next_lr = np.log(spy[1:] / spy[:-1])
    desired = np.clip(np.sin(np.arange(len(next_lr)) / 15.0) * 1.4, 0.0, None)  # long-only, sometimes > 1

    def bar(t, held, new):
        s = bar_step(held, new, float(next_lr[t]), COST_BPS)
        return s.net, s.held

    single, _ = risk_limit(desired, bar, max_position=0.8, max_drawdown=0.05, drawdown_cut=0.3)
    out, _ = risk_limit_weights(desired[:, None], _step(next_lr[:, None], COST_BPS), max_weight=0.8,
                                max_gross=0.8, max_net=0.8, max_drawdown=0.05, drawdown_cut=0.3)
    np.testing.assert_allclose(out[:, 0], single, rtol=0, atol=1e-12)


def test_risk_limit_weights_on_a_rebalanced_baseline_follows_its_own_equity(lean):
    close = lean.to_numpy()
    past = np.log(lean).diff().to_numpy()
    next_lr = np.log(close[1:] / close[:-1])
    n = len(next_lr)
    tradable = np.ones((n, close.shape[1]), dtype=bool)
    weights = equal_weight_rebalanced(tradable, 21)
    turb = turbulence_index(past, 63)[:n]
    threshold = turbulence_threshold(turb[: n // 2], 0.95)
    max_dd, cut_by = 0.08, 0.5
    out, net = risk_limit_weights(weights, _step(next_lr, COST_BPS), turbulence=turb, threshold=threshold,
                                  max_weight=0.25, max_drawdown=max_dd, drawdown_cut=cut_by)
    # the book: simulate() on the targets traded reproduces the returns the layer saw
    path = simulate(out, next_lr, COST_BPS)
    np.testing.assert_allclose(net, path.net, rtol=0, atol=1e-12)
    # the rules, bar by bar, from the layer's own equity
    equity = np.concatenate([[1.0], np.cumprod(1 + net)])
    drawdown = 1 - equity[:-1] / np.maximum.accumulate(equity)[:-1]
    turbulent = turb > threshold
    in_dd = (drawdown > max_dd) & ~turbulent
    assert turbulent.sum() > 10 and in_dd.sum() > 10  # both rules fire on these years of real data
    assert (out[turbulent] == 0).all()
    desired = np.where(np.isnan(weights), path.held, weights)  # keep units between rebalances
    hold = np.isnan(weights).all(axis=1)  # no order: the held book
    assert (hold & in_dd).sum() > 10 and (~hold & in_dd).sum() > 0
    for t in np.flatnonzero(~turbulent):
        expected = project_weights(desired[t], long_only=True, max_weight=0.25, max_gross=1.0, max_net=1.0)
        if in_dd[t] and not hold[t]:  # a new order in drawdown: times the cut
            expected = expected * cut_by
        elif in_dd[t]:  # the held book in drawdown: gross capped at cut x max_gross, never cut again and again
            expected = expected * min(1.0, cut_by * 1.0 / np.abs(expected).sum())
        np.testing.assert_allclose(out[t], expected, rtol=0, atol=1e-12)
    # held through a drawdown, the book stays at the cut's exposure instead of halving bar after bar
    gross = out.sum(axis=1)
    held_in_dd = np.flatnonzero(hold & in_dd & np.roll(in_dd & ~turbulent, 1))[1:]
    assert len(held_in_dd) > 10
    assert (gross[held_in_dd] >= 0.9 * gross[held_in_dd - 1]).all()  # the old layer halved it every bar
    assert out.max() <= 0.25 + 1e-12 and out.sum(axis=1).max() <= 1 + 1e-12


def test_the_held_book_is_capped_in_drawdown_not_cut_again():
    """Between rebalances (``held_book``) the drawdown cut caps gross exposure at drawdown_cut x max_gross; applied
    to its own output the layer changes nothing, so a held book in drawdown is not cut on every bar."""
    held = np.array([0.3, 0.2, 0.1])
    kwargs = {"drawdown": 0.3, "max_drawdown": 0.2, "drawdown_cut": 0.5, "max_gross": 1.0}
    new_order = risk_limited_weights(held, **kwargs)
    np.testing.assert_allclose(new_order, 0.5 * held, rtol=0, atol=1e-15)  # a new order: times the cut
    capped = risk_limited_weights(held, held_book=True, **kwargs)
    np.testing.assert_allclose(capped, held * 0.5 / 0.6, rtol=1e-15, atol=0)  # gross 0.6 -> 0.5
    np.testing.assert_array_equal(risk_limited_weights(capped, held_book=True, **kwargs), capped)
    cut_before = 0.5 * held  # the book a new order in drawdown bought: gross 0.3, under the cap, kept
    np.testing.assert_array_equal(risk_limited_weights(cut_before, held_book=True, **kwargs), cut_before)
    np.testing.assert_array_equal(risk_limited_weights(held, held_book=True, **{**kwargs, "drawdown": 0.1}), held)
    calm_cash = risk_limited_weights(held, held_book=True, turbulence=3.0, threshold=2.0, **kwargs)
    assert (calm_cash == 0).all()
