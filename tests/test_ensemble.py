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
from raytrade_envs import bar_step

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

    def bar(t, held, new):
        step = bar_step(held, new, float(lr[t]), 0.0)
        return step.net, step.held

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


class _ConstantPolicy:
    """Always targets ``value``: enough to see which policy acts at each step of a switching rollout."""

    def __init__(self, value: float):
        self.value = value

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.full(len(np.atleast_2d(obs)), self.value)


def _env_kwargs(n: int = 40, window: int = 4):
    rng = np.random.default_rng(1)
    return {"features": rng.normal(size=(n, 2)).astype(np.float32), "returns": rng.normal(0, 0.01, n),
            "forecasts": None, "window": window, "cost_bps": 10.0, "episode_length": 30, "random_start": True}


def test_switching_rollout_hands_over_at_each_window_and_keeps_the_account():
    from raytrade.rl.policy import switching_rollout
    from raytrade_envs import TradingEnv

    env = TradingEnv(**{**_env_kwargs(), "episode_length": None, "random_start": False})
    positions, returns = switching_rollout(env, [_ConstantPolicy(0.5), _ConstantPolicy(-1.0), _ConstantPolicy(0.0)],
                                           [0, 10, 25])
    assert len(positions) == 40 - 4
    np.testing.assert_allclose(positions[:10], 0.5)
    np.testing.assert_allclose(positions[10:25], -1.0)
    np.testing.assert_allclose(positions[25:], 0.0)
    # one episode: the hand-over trades from the previous policy's position (0.5 drifted, ~1.5 of turnover at step 10)
    r = _env_kwargs()["returns"]
    held = 0.0
    for k in range(10):
        held = bar_step(held, 0.5, float(r[3 + k]), 10.0).held
    assert held != 0.5  # a fractional long drifts with the price
    assert returns[10] == bar_step(held, -1.0, float(r[3 + 10]), 10.0).net
    for bad in ([1, 10, 25], [0, 10], [0, 10, 10]):
        with pytest.raises(ValueError, match="switch_at"):
            switching_rollout(env, [_ConstantPolicy(0.0)] * 3, bad)


def test_slice_env_keeps_bars_in_order_and_caps_the_episode():
    from raytrade.rl.env import slice_env

    kw = _env_kwargs()
    part = slice_env(kw, 5, 20)
    np.testing.assert_array_equal(part["returns"], kw["returns"][5:20])
    np.testing.assert_array_equal(part["features"], kw["features"][5:20])
    assert part["episode_length"] == 15 - 4 - 1 and kw["episode_length"] == 30
    with pytest.raises(ValueError, match="window \\+ 1"):
        slice_env(kw, 0, 4)


def test_retrain_plan_trains_each_window_only_on_bars_before_its_validation_window():
    from raytrade.config import PipelineConfig
    from raytrade.rl.env_inputs import AgentData, all_bars
    from raytrade.rl.strategies import retrain_plan

    rng = np.random.default_rng(2)

    def split(n: int, first: float) -> dict[str, np.ndarray]:
        return {"features": rng.normal(size=(n, 2)).astype(np.float32), "forecasts": np.zeros((n, 3), np.float32),
                "returns": np.arange(n) + first, "gap_returns": np.zeros(n), "volatility": np.full(n, 0.01)}

    arrays = {"train": split(200, 0.0), "val": split(60, 1000.0), "test": split(75, 2000.0)}
    data = AgentData(arrays=arrays, timestamps={}, feature_names=["a", "b"], forecasts={})
    cfg = PipelineConfig.model_validate({
        "rl": {"window": 4, "episode_length": 50},
        "ensemble": {"methods": ["rolling", "vote"], "window_bars": 20}})
    assert retrain_plan(cfg, data) is None
    cfg = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(
        update={"methods": ("rolling_retrain",), "retrain_iterations": 2})})
    plan = retrain_plan(cfg, data)
    bars = all_bars(data)
    np.testing.assert_array_equal(bars["returns"][[0, 200, 260, 334]], [0.0, 1000.0, 2000.0, 2074.0])
    # test steps 0..70 -> windows at steps 0, 20, 40, 60; window k's first decision is at bar 260 + 3 + 20k
    first_decisions = [263, 283, 303, 323]
    assert plan.ends == [d - 20 for d in first_decisions] and plan.iterations == 2
    assert plan.env["random_start"] and len(plan.env["returns"]) == 335
