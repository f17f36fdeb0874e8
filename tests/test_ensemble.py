"""Agent ensembles and the risk layer (raytrade.rl.ensemble), the forecaster-input layout and agent names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raytrade.config import parse_agent_name
from raytrade.errors import ConfigError
from raytrade.evaluation.metrics import sharpe_ratio
from raytrade.rl.ensemble import combine_positions, risk_limit, rolling_selection, sharpe_vote
from raytrade.rl.inputs import forecast_inputs
from raytrade_envs import bar_net_return

PPY = 8766.0


def _members(n: int = 30, seed: int = 0):
    """Three members: positions in [-1, 1] and returns whose quality changes window to window."""
    rng = np.random.default_rng(seed)
    pos = {name: rng.uniform(-1, 1, n) for name in ("a", "b", "c")}
    rets = {name: rng.normal(0.0, 0.01, n) for name in pos}
    return pos, rets


def test_rolling_selection_trades_each_window_with_the_previous_windows_best_member():
    pos, rets = _members()
    window = 10
    res = rolling_selection(pos, rets, {"a": 0.1, "b": 2.0, "c": -1.0}, window, PPY)
    assert res.window_starts == [0, 10, 20]
    # window 0: the prior (VAL) Sharpe picks b
    assert res.weights[0] == {"a": 0.0, "b": 1.0, "c": 0.0}
    np.testing.assert_allclose(res.positions[:10], pos["b"][:10])
    for k, start in enumerate(res.window_starts[1:], start=1):
        prev = slice(start - window, start)
        best = max(rets, key=lambda m: sharpe_ratio(rets[m][prev], PPY))
        assert res.weights[k][best] == 1.0
        np.testing.assert_allclose(res.positions[start:start + window], pos[best][start:start + window])


def test_ensembles_are_causal_future_returns_do_not_change_past_positions():
    pos, rets = _members()
    base = sharpe_vote(pos, rets, {}, 10, PPY).positions
    future = {m: r.copy() for m, r in rets.items()}
    for r in future.values():
        r[20:] = np.random.default_rng(1).normal(0, 0.05, 10)  # rewrite the last window's returns
    changed = sharpe_vote(pos, future, {}, 10, PPY).positions
    np.testing.assert_array_equal(base, changed)  # window 2's weights use window 1's returns only
    rolled = rolling_selection(pos, rets, {}, 10, PPY).positions
    assert np.array_equal(rolled, rolling_selection(pos, future, {}, 10, PPY).positions)


def test_sharpe_vote_weights_are_the_softmax_of_previous_window_sharpe():
    pos, rets = _members()
    res = sharpe_vote(pos, rets, {"a": 1.0, "b": 0.0, "c": 0.0}, 10, PPY, temperature=2.0)
    e = np.exp(np.array([1.0, 0.0, 0.0]) / 2.0)
    assert res.weights[0] == pytest.approx(dict(zip("abc", e / e.sum(), strict=True)))
    s = np.array([sharpe_ratio(rets[m][0:10], PPY) for m in "abc"]) / 2.0
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    assert res.weights[1] == pytest.approx(dict(zip("abc", w, strict=True)))
    expected = sum(w[i] * pos[m][10:20] for i, m in enumerate("abc"))
    np.testing.assert_allclose(res.positions[10:20], np.clip(expected, -1, 1))
    assert sum(res.final_weights.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        sharpe_vote(pos, rets, {}, 10, PPY, temperature=0.0)
    with pytest.raises(ValueError, match="length"):
        sharpe_vote({"a": np.zeros(3)}, {"a": np.zeros(4)}, {}, 2, PPY)


def test_risk_limit_caps_positions_and_cuts_exposure_in_excess_drawdown():
    lr = np.log([0.80, 0.95, 1.10, 1.10, 1.10])  # a 20% loss, then recovery

    def bar(t, prev, new):
        return bar_net_return(prev, new, float(lr[t]), 0.0)

    out, cut = risk_limit(np.full(5, 1.5), bar, max_position=1.0, max_drawdown=0.1, drawdown_cut=0.5)
    # bar 0: no drawdown yet -> capped at 1.0; equity 0.8 -> drawdown 20% > 10% -> cut to 0.5
    assert out[0] == 1.0 and not cut[0]
    assert cut[1] and out[1] == 0.5
    # by hand: equity after bar 1 = 0.8 * (1 + 0.5 * (0.95 - 1)) = 0.78
    assert cut[2] and out[2] == 0.5
    eq = 0.8 * (1 + 0.5 * -0.05) * (1 + 0.5 * 0.10)  # 0.819 < 0.9 -> still cut at bar 3
    assert 1 - eq > 0.1 and cut[3]
    eq *= 1 + 0.5 * 0.10  # 0.85995 -> drawdown 14% -> still cut
    assert cut[4] == (1 - eq > 0.1)
    flat, never = risk_limit(np.full(5, -0.3), bar, max_drawdown=0.5)
    assert not never.any() and np.all(flat == -0.3)


def test_combine_positions_is_a_clipped_weighted_mean():
    out = combine_positions({"a": np.array([1.0, -1.0]), "b": np.array([0.0, 1.0])}, {"a": 3, "b": 1}, 0.5)
    np.testing.assert_allclose(out, [0.5, -0.5])


def test_forecast_inputs_layout_and_errors():
    out = {"probs": np.array([[0.2, 0.3, 0.5]]), "expected_return": np.array([0.02]),
           "return_std": np.array([0.01]), "mutual_information": np.array([0.05]),
           "embedding": np.array([[1.0, 2.0]])}
    row = forecast_inputs(out, 0.01, ["probs", "expected_return", "uncertainty", "embedding"])
    np.testing.assert_allclose(row[0], [0.2, 0.3, 0.5, 2.0, 1.0, 0.05, 1.0, 2.0], rtol=1e-6)
    with pytest.raises(ConfigError, match="uncertainty"):
        forecast_inputs({"probs": out["probs"], "expected_return": out["expected_return"]}, 1.0, ["uncertainty"])


@pytest.mark.parametrize(("name", "expected"), [("ppo", ("rllib", "ppo")), ("td3", ("rllib", "td3")),
                                                ("sb3_ddpg", ("sb3", "ddpg")), ("sb3_a2c", ("sb3", "a2c"))])
def test_agent_names(name, expected):
    assert parse_agent_name(name) == expected


@pytest.mark.parametrize("name", ["a2c", "ddpg", "sb3_dqn", "sb3_", "ppo2"])
def test_unknown_agent_names_are_rejected(name):
    with pytest.raises(ValueError, match="unknown agent"):
        parse_agent_name(name)


def test_rl_config_rejects_unknown_agents_and_inputs():
    from raytrade.config import parse_config

    with pytest.raises(ConfigError, match="rl"):
        parse_config({"rl": {"agents": ["ppo", "dqn"]}})
    with pytest.raises(ConfigError, match="forecast_inputs"):
        parse_config({"rl": {"forecast_inputs": ["probs", "volume"]}})
    assert math.isclose(parse_config({}).ensemble.max_drawdown, 0.2)
