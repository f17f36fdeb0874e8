"""The portfolio env on real data: a tradable mask (orders that cannot fill keep their units), exposure limits as the
action mapping, the asset-major observation layout, VecTradingEnv parity, and gymnasium's / SB3's env checkers.

Data: 4 daily US symbols of ``lean_us_equity_etf_1d.parquet`` (2012-2013), where FB lists in May 2012 (95 bars
after the others): a real late-starting asset on one union calendar.
"""

from __future__ import annotations

import pickle

import gymnasium
import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade_envs import ENV_ID, TradingEnv, VecTradingEnv, simulate
from raytrade_envs.actions import project_weights

SYMBOLS = ["SPY", "FB", "AAPL", "BNO"]
WINDOW = 5
F_ASSET = 3
LIMITS = {"long_only": True, "max_weight": 0.4, "max_gross": 1.0, "max_net": 1.0}


@pytest.fixture(scope="module")
def panel():
    from raytrade.data.universe import load_universe

    return load_universe(shared("lean_us_equity_etf_1d.parquet"), symbols=SYMBOLS, start="2012-01-01",
                         end="2013-12-31").panel


@pytest.fixture(scope="module")
def data(panel) -> dict[str, np.ndarray]:
    """Per-asset causal features (1- and 5-bar log return, 20-bar volatility, from closes <= t) laid out asset-major,
    2 per-asset 'forecast' columns (the same returns' sign and size), next-bar returns, gaps and the mask: a bar is
    tradable when the asset trades at the next open and its features are defined."""
    close = pd.DataFrame(panel.close)
    past = np.log(close / close.shift(1))
    per_asset = np.stack([past.to_numpy(), past.rolling(5).sum().to_numpy(), past.rolling(20).std().to_numpy()],
                         axis=2)  # (T, A, F_asset)
    defined = np.isfinite(per_asset).all(axis=2)
    feats = np.where(np.isfinite(per_asset), per_asset * 20.0, 0.0)
    fc = np.stack([np.sign(feats[:, :, 1]), feats[:, :, 0]], axis=2)
    n = len(close) - 1  # the last calendar row has no next bar
    return {"features": feats[:n].reshape(n, -1).astype(np.float32), "forecasts": fc[:n].reshape(n, -1),
            "returns": panel.next_log_returns()[:n], "gap_returns": panel.next_gap_returns()[:n],
            "tradable": (panel.fillable("next_open") & defined)[:n], "per_asset": feats[:n].astype(np.float32)}


def _kwargs(data, **extra):
    base = {"features": data["features"], "returns": data["returns"], "forecasts": data["forecasts"],
            "gap_returns": data["gap_returns"], "window": WINDOW, "cost_bps": 10.0, "tradable": data["tradable"],
            "weight_limits": LIMITS}
    return {**base, **extra}


def reference_projection(action, long_only, max_weight, max_gross, max_net) -> list[float]:
    """The exposure-limit mapping written out as plain Python (actions.py's documented steps, after the clip)."""
    w = [min(max(float(a), -1.0), 1.0) for a in action]
    if long_only:
        w = [max(x, 0.0) for x in w]
    w = [min(max(x, -max_weight), max_weight) for x in w]
    gross = sum(abs(x) for x in w)
    if gross > max_gross:
        w = [x * max_gross / gross for x in w]
    longs = sum(x for x in w if x > 0)
    shorts = sum(-x for x in w if x < 0)
    if longs - shorts > max_net:
        w = [x * (max_net + shorts) / longs if x > 0 else x for x in w]
    elif shorts - longs > max_net:
        w = [x * (max_net + longs) / shorts if x < 0 else x for x in w]
    return w


def _episode(env, actions, start=None):
    obs, info = env.reset(seed=0, options=None if start is None else {"start": start})
    infos, obs_seen, rewards = [info], [obs], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        infos.append(info)
        obs_seen.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return obs_seen, rewards, infos


def test_check_env_on_the_portfolio_env(data):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    for extra in ({}, {"weight_limits": {"long_only": False, "max_weight": 0.5, "max_gross": 1.5, "max_net": 0.3},
                       "random_start": True, "episode_length": 60, "reward": "drawdown_penalty"}):
        check_env(TradingEnv(**_kwargs(data, **extra)), skip_render_check=True)
        sb3_check_env(TradingEnv(**_kwargs(data, **extra)), warn=True)
    env = gymnasium.make(ENV_ID, **_kwargs(data))
    assert env.action_space.shape == (len(SYMBOLS),)
    assert env.observation_space.shape == (WINDOW * len(SYMBOLS) * F_ASSET + 2 * len(SYMBOLS) + len(SYMBOLS) + 2,)


@pytest.mark.parametrize("limits", [
    LIMITS,
    {"long_only": False, "max_weight": 0.5, "max_gross": 1.0, "max_net": 0.2},
    {"long_only": False, "max_weight": 1.0, "max_gross": 1.6, "max_net": 1.0},
])
def test_actions_map_through_project_weights_within_every_limit(data, limits):
    rng = np.random.default_rng(3)
    actions = rng.uniform(-1.5, 1.5, size=(150, len(SYMBOLS))).astype(np.float32)
    actions[::7] = 0.0  # flat bars
    _, _, infos = _episode(TradingEnv(**_kwargs(data, weight_limits=limits)), actions)
    orders = np.array([i["order"] for i in infos[1:]])
    expected = np.array([reference_projection(a, **limits) for a in actions[: len(orders)]])
    np.testing.assert_allclose(orders, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(orders, project_weights(np.clip(actions[: len(orders)], -1, 1), **limits))
    tol = 1e-12
    if limits["long_only"]:
        assert (orders >= 0).all()
    assert (np.abs(orders) <= limits["max_weight"] + tol).all()
    assert (np.abs(orders).sum(axis=1) <= limits["max_gross"] + tol).all()
    assert (np.abs(orders.sum(axis=1)) <= limits["max_net"] + tol).all()
    assert np.abs(orders).sum(axis=1).max() > 0.5 * limits["max_gross"]  # the actions did reach the limits


def test_untradable_assets_keep_their_units_and_the_book_is_simulate(data):
    """Fills at the close (no gaps) so units can be read off prices: across every bar whose order for asset ``a``
    cannot fill, the units held (position * equity / price) are the same before and after."""
    kwargs = _kwargs(data, gap_returns=None, cost_bps=25.0)
    tradable = kwargs["tradable"]
    assert not tradable[: 95 + 20, 1].any() and tradable[200:, 1].all()  # FB: not listed, then its warm-up
    rng = np.random.default_rng(7)
    actions = rng.uniform(-0.2, 1.0, size=(len(data["returns"]), len(SYMBOLS))).astype(np.float32)
    tradable_blocked = tradable.copy()
    tradable_blocked[150:170, 0] = False  # and SPY's orders blocked for 20 bars (e.g. a halt)
    kwargs["tradable"] = tradable_blocked
    env = TradingEnv(**kwargs)
    _, _, infos = _episode(env, actions)
    n = len(infos) - 1
    ts = np.arange(WINDOW - 1, WINDOW - 1 + n)
    equity = np.array([i["equity"] for i in infos])
    position = np.array([i["position"] for i in infos])  # held at the close of bar ts[k] (k = 0 .. n)
    price = np.exp(np.vstack([np.zeros(len(SYMBOLS)), np.cumsum(data["returns"], axis=0)]))  # mark of each bar
    units = position * equity[:, None] / price[np.append(ts, ts[-1] + 1)]
    blocked = ~tradable_blocked[ts]
    assert blocked[146:166, 0].all() and blocked[:, 1].sum() > 90
    np.testing.assert_allclose(units[1:][blocked], units[:-1][blocked], rtol=1e-12, atol=1e-15)
    moved = ~blocked & (np.abs(units[1:] - units[:-1]) > 1e-9)
    assert moved.sum() > 0.9 * (~blocked).sum()  # elsewhere the book does trade

    orders = np.array([i["order"] for i in infos[1:]])
    book = simulate(orders, data["returns"][ts], 25.0, tradable=tradable_blocked[ts])
    np.testing.assert_allclose(np.array([i["net_return"] for i in infos[1:]]), book.net, rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.array([i["target"] for i in infos[1:]]), book.target, rtol=0, atol=1e-13)
    np.testing.assert_allclose(env.equity, np.prod(1.0 + book.net), rtol=1e-12)
    assert env._market.simulate(orders, WINDOW - 1).net.tolist() == book.net.tolist()


def test_without_the_new_fields_the_env_is_unchanged(data):
    rng = np.random.default_rng(11)
    actions = rng.uniform(-1, 1, size=(120, len(SYMBOLS))).astype(np.float32)
    plain = {k: data[k] for k in ("features", "returns", "forecasts", "gap_returns")}
    old_obs, old_rewards, old_infos = _episode(TradingEnv(**plain, window=WINDOW), actions)
    new_obs, new_rewards, new_infos = _episode(
        TradingEnv(**plain, window=WINDOW, tradable=None, weight_limits=None), actions)
    assert old_rewards == new_rewards and all((a == b).all() for a, b in zip(old_obs, new_obs, strict=True))
    assert all("order" not in i for i in new_infos)
    # an all-True mask goes through the masked book: the same numbers, and the orders are the targets
    _, rewards, infos = _episode(TradingEnv(**plain, window=WINDOW, tradable=np.ones_like(data["tradable"])), actions)
    np.testing.assert_allclose(rewards, old_rewards, rtol=0, atol=1e-14)
    for a, b in zip(infos[1:], old_infos[1:], strict=True):
        np.testing.assert_array_equal(a["order"], a["target"])
        np.testing.assert_allclose(a["target"], b["target"], rtol=0, atol=1e-15)


def test_vec_env_matches_single_envs(data):
    n_envs, steps = 3, 60
    kwargs = _kwargs(data, episode_length=steps, reward="cost_penalty",
                     weight_limits={"long_only": False, "max_weight": 0.6, "max_gross": 1.2, "max_net": 0.5})
    vec = VecTradingEnv(n_envs, **kwargs)
    starts = np.array([WINDOW - 1, 90, 300])  # FB not yet listed, listing, trading
    obs, infos = vec.reset(seed=1, options={"starts": starts})
    singles = [TradingEnv(**kwargs) for _ in range(n_envs)]
    single_obs = [env.reset(options={"start": int(s)})[0] for env, s in zip(singles, starts, strict=True)]
    np.testing.assert_array_equal(obs, np.stack(single_obs))
    rng = np.random.default_rng(5)
    for _ in range(steps):
        actions = rng.uniform(-1.2, 1.2, size=(n_envs, len(SYMBOLS))).astype(np.float32)
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i])
            np.testing.assert_allclose(obs[i], o, rtol=0, atol=1e-6)
            assert abs(rewards[i] - r) < 1e-12 and terminated[i] == term and truncated[i] == trunc
            for key in ("order", "target", "position"):
                np.testing.assert_allclose(infos[key][i], info[key], rtol=0, atol=1e-13)
            assert abs(infos["equity"][i] - info["equity"]) < 1e-12
    assert truncated.all()


def test_observation_is_asset_major(data):
    env = TradingEnv(**_kwargs(data))
    layout = env.observation_layout
    obs, _ = env.reset(options={"start": 200})
    rng = np.random.default_rng(2)
    for _ in range(3):
        obs, *_ , info = env.step(rng.uniform(0, 1, len(SYMBOLS)).astype(np.float32))
    t = info["t"]
    blocks = obs[layout["features"]].reshape(WINDOW, len(SYMBOLS), F_ASSET)
    np.testing.assert_array_equal(blocks, data["per_asset"][t - WINDOW + 1 : t + 1])
    np.testing.assert_allclose(obs[layout["forecasts"]].reshape(len(SYMBOLS), 2),
                               data["forecasts"][t].reshape(len(SYMBOLS), 2), rtol=1e-6)
    np.testing.assert_allclose(obs[layout["positions"]], info["position"], rtol=1e-6)


def test_pickled_mid_episode_env_continues_identically(data):
    env = TradingEnv(**_kwargs(data, random_start=True, episode_length=80))
    env.reset(seed=4)
    rng = np.random.default_rng(4)
    for _ in range(10):
        env.step(rng.uniform(-1, 1, len(SYMBOLS)).astype(np.float32))
    copy = pickle.loads(pickle.dumps(env))
    for _ in range(20):
        a = rng.uniform(-1, 1, len(SYMBOLS)).astype(np.float32)
        out, out_copy = env.step(a), copy.step(a)
        assert out[1] == out_copy[1]
        np.testing.assert_array_equal(out[4]["order"], out_copy[4]["order"])


def test_bad_fields_raise_naming_them(data):
    with pytest.raises(ValueError, match="tradable must be a bool array"):
        TradingEnv(**_kwargs(data, tradable=data["tradable"].astype(float)))
    with pytest.raises(ValueError, match="tradable must be a bool array"):
        TradingEnv(**_kwargs(data, tradable=data["tradable"][:, :2]))
    with pytest.raises(ValueError, match=r"missing \['max_net'\]"):
        TradingEnv(**_kwargs(data, weight_limits={"long_only": True, "max_weight": 1, "max_gross": 1}))
    with pytest.raises(ValueError, match=r"unknown \['max_position'\]"):
        TradingEnv(**_kwargs(data, weight_limits={**LIMITS, "max_position": 1}))
    with pytest.raises(ValueError, match="max_weight must be a finite number"):
        TradingEnv(**_kwargs(data, weight_limits={**LIMITS, "max_weight": 1.5}))
    with pytest.raises(ValueError, match="long_only"):
        TradingEnv(**_kwargs(data, weight_limits={**LIMITS, "long_only": "yes"}))
    with pytest.raises(ValueError, match="weight_limits replaces max_position and allow_short"):
        TradingEnv(**_kwargs(data, max_position=0.5))
    with pytest.raises(ValueError, match="weight_limits replaces max_position and allow_short"):
        VecTradingEnv(2, **_kwargs(data, allow_short=False))
    with pytest.raises(TypeError, match="did you mean 'tradable'"):
        TradingEnv(**{**_kwargs(data), "tradeable": data["tradable"]})
