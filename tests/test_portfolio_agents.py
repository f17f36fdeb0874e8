"""Portfolio agents on a real universe: the env inputs built from the prepared universe and a forecaster bundle,
RLlib PPO (new API stack, vectorised env runners) and SB3 PPO trained through ``train_agents``, their target weights
within every exposure limit, and the portfolio backtest of those weights reproducing the env's equity.

Data: SPY, FB, AAPL, BNO of ``lean_us_equity_etf_1d.parquet`` from 2012 to 2014 (FB lists in May 2012, so its early
bars are not tradable). The forecaster is the config's CNN+LSTM with seeded, untrained weights: its outputs are real
forward passes (what the env's forecast columns carry), without the minutes a Ray Train run would add.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import shared
from raytrade.data.schema import SYMBOL, TIMESTAMP

SYMBOLS = ["SPY", "FB", "AAPL", "BNO"]
LIMITS = {"long_only": False, "max_weight": 0.5, "max_gross": 1.0, "max_net": 0.5}
PERIODS_PER_YEAR = 252.0


def _config(tmp_path):
    from conftest import REPO
    from raytrade.config import load_config

    return load_config(REPO / "jobs" / "configs" / "universe_smoke.yaml", overrides={
        "output_dir": str(tmp_path),
        "data": {"path": str(shared("lean_us_equity_etf_1d.parquet")), "symbols": SYMBOLS, "start": "2012-01-01",
                 "end": "2014-12-31"},
        "model": {"lookback": 16, "mc_samples": 2},
        "rl": {"agents": ["ppo", "sb3_ppo"], "iterations": 1, "train_batch_size": 128, "minibatch_size": 64,
               "num_epochs": 1, "hidden": [16, 16], "window": 4, "episode_length": 100, "slippage_vol_mult": 0.5,
               "forecast_inputs": ["probs", "expected_return", "uncertainty"]},
        "portfolio": LIMITS,
    })


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    """The universe prepared with Ray Data, a seeded forecaster bundle and the portfolio env inputs."""
    import torch

    from raytrade.dataset.prepare import load_universe_data, prepare_data
    from raytrade.models.bundle import ForecasterBundle
    from raytrade.models.registry import build_from_config, model_kwargs_from_config
    from raytrade.rl.env_inputs import bundle_windows
    from raytrade.rl.portfolio_inputs import portfolio_data

    cfg = _config(tmp_path_factory.mktemp("portfolio_agents"))
    universe = load_universe_data(cfg)
    prepared = prepare_data(cfg, universe)
    torch.manual_seed(0)
    n_features = len(prepared.feature_columns)
    bundle = ForecasterBundle(model=build_from_config(cfg.model, n_features, 0.02), model_name=cfg.model.name,
                              model_kwargs=model_kwargs_from_config(cfg.model, n_features, 0.02),
                              scaler=prepared.scaler, features=cfg.features, labels=cfg.labels,
                              lookback=cfg.model.lookback, mc_samples=cfg.model.mc_samples)
    windows = bundle_windows(prepared, bundle)
    data = portfolio_data(cfg, universe, prepared, bundle, windows)
    return {"cfg": cfg, "universe": universe, "prepared": prepared, "bundle": bundle, "windows": windows,
            "data": data}


def _respects(weights: np.ndarray, limits: dict) -> None:
    tol = 1e-12
    assert np.isfinite(weights).all()
    if limits["long_only"]:
        assert (weights >= 0).all()
    assert (np.abs(weights) <= limits["max_weight"] + tol).all()
    assert (np.abs(weights).sum(axis=1) <= limits["max_gross"] + tol).all()
    assert (np.abs(weights.sum(axis=1)) <= limits["max_net"] + tol).all()


def test_env_inputs_are_the_universes_rows(run):
    cfg, universe, prepared, bundle, data = run["cfg"], run["universe"], run["prepared"], run["bundle"], run["data"]
    panel = universe.panel
    n_assets, f_asset = len(SYMBOLS), len(cfg.rl.features)
    # every symbol's scaled feature rows, looked up by (timestamp, symbol) with pandas
    frame = bundle.scaler.transform(prepared.features.frame)
    lookup = frame.set_index([TIMESTAMP, SYMBOL])[list(cfg.rl.features)]
    scale = float(bundle.model_kwargs["return_scale"])
    fill_ok = panel.fillable(cfg.rl.fill)
    for split in ("train", "val", "test"):
        arrays, rows = data.arrays[split], data.rows[split]
        w = run["windows"][split]
        # decision bars: every calendar row from the split's first window to its last (the portfolio stage's rule)
        w_rows = panel.index_of(pd.DatetimeIndex(np.unique(w.timestamp)))
        np.testing.assert_array_equal(data.decisions(split), np.arange(w_rows.min(), w_rows.max() + 1))
        assert len(rows) == len(data.decisions(split)) + cfg.rl.window
        feats = arrays["features"].reshape(len(rows), n_assets, f_asset)
        for k, row in enumerate(rows):
            stamp = panel.timestamps[row]
            for a, symbol in enumerate(SYMBOLS):
                if (stamp, symbol) in lookup.index:
                    np.testing.assert_allclose(feats[k, a], lookup.loc[(stamp, symbol)].to_numpy(np.float32))
                    assert arrays["tradable"][k, a] == fill_ok[row, a]
                else:
                    assert not feats[k, a].any() and not arrays["tradable"][k, a]
        # the forecast columns of each window sit at its (bar, asset): P(buy) and the z-scored expected return
        out = bundle.forecast_windows(w.x)
        fc = arrays["forecasts"].reshape(len(rows), n_assets, data.n_forecast_inputs)
        at = {(pd.Timestamp(t), s): i for i, (t, s) in enumerate(zip(w.timestamp, w.symbol, strict=True))}
        for k, row in enumerate(rows):
            for a, symbol in enumerate(SYMBOLS):
                i = at.get((panel.timestamps[row].tz_convert(None), symbol), at.get((panel.timestamps[row], symbol)))
                if i is None:
                    assert not fc[k, a].any()
                else:
                    np.testing.assert_allclose(fc[k, a, :3], out["probs"][i], rtol=1e-6)
                    np.testing.assert_allclose(fc[k, a, 3], out["expected_return"][i] / scale, rtol=1e-5)
        np.testing.assert_array_equal(arrays["returns"][:-1], panel.next_log_returns()[rows[:-1]])
        np.testing.assert_array_equal(arrays["gap_returns"][:-1], panel.next_gap_returns()[rows[:-1]])
    first_fb = panel.first_bar()[SYMBOLS.index("FB")]
    # FB lists late: its orders cannot fill before its own first bar and feature warm-up
    fb_rows = data.rows["train"]
    assert not data.arrays["train"]["tradable"][fb_rows <= first_fb, 1].any()
    assert not data.arrays["train"]["tradable"][0, 1] and data.arrays["train"]["tradable"][-1, 1]
    assert data.arrays["test"]["tradable"].all()
    assert data.feature_names[:f_asset] == [f"SPY/{n}" for n in cfg.rl.features]


@pytest.fixture(scope="module")
def agents(run, tmp_path_factory):
    """RLlib PPO and SB3 PPO trained (one iteration each) on the train split's portfolio env."""
    from raytrade.rl.agents import train_agents
    from raytrade.rl.portfolio_inputs import portfolio_env_kwargs

    cfg, data = run["cfg"], run["data"]
    train_env = portfolio_env_kwargs(cfg, data.arrays["train"], train=True)
    val_env = portfolio_env_kwargs(cfg, data.arrays["val"], train=False)
    return train_agents(cfg.rl.agents, cfg.rl, train_env, val_env, PERIODS_PER_YEAR, data.feature_names,
                        tmp_path_factory.mktemp("agents"))


def test_agents_train_and_their_weights_reproduce_the_env_equity(run, agents):
    from raytrade.evaluation.portfolio import portfolio_backtest
    from raytrade.rl.portfolio_inputs import (
        backtest_inputs,
        portfolio_agent_weights,
        portfolio_env_kwargs,
        portfolio_rollout,
    )

    cfg, data = run["cfg"], run["data"]
    assert list(agents) == ["ppo", "sb3_ppo"]
    assert {o.backend for o in agents.values()} == {"rllib", "sb3"}
    assert all(int(o.history["env_steps"].iloc[-1]) >= cfg.rl.train_batch_size for o in agents.values())
    policies = {name: o.policy for name, o in agents.items()}
    # the test split, and the train bars replayed (where FB's first orders cannot fill)
    for split in ("test", "train"):
        env_kwargs = portfolio_env_kwargs(cfg, data.arrays[split], train=False)
        weights = portfolio_agent_weights(policies, env_kwargs)
        market = backtest_inputs(env_kwargs)
        for name, w in weights.items():
            assert w.shape == (len(data.decisions(split)), len(SYMBOLS))
            _respects(w, LIMITS)
            assert np.abs(w).sum(axis=1).max() > 1e-3  # the agent does hold positions (one iteration: small ones)
            _, env_returns = portfolio_rollout(policies[name], env_kwargs)
            result = portfolio_backtest(w, cost_bps=cfg.backtest.cost_bps, periods_per_year=PERIODS_PER_YEAR,
                                        symbols=SYMBOLS, name=name, **market)
            np.testing.assert_allclose(result.equity, np.cumprod(1.0 + env_returns), rtol=0, atol=1e-9)
            # and the env's own episode (Policy.evaluate, as fit_agent scores VAL) ends on the same equity
            from raytrade_envs import TradingEnv

            _, evaluated = policies[name].evaluate(TradingEnv(**env_kwargs))
            np.testing.assert_allclose(np.prod(1.0 + evaluated), result.equity[-1], rtol=1e-12)
        if split == "train":
            assert not market["tradable"].all()


def test_rllib_env_runners_step_the_vectorised_portfolio_env(run):
    from raytrade.rl.portfolio_inputs import portfolio_env_kwargs
    from raytrade.rl.rllib_agents import PORTFOLIO_ENVS_PER_RUNNER, algo_config

    cfg, data = run["cfg"], run["data"]
    rl = cfg.rl.model_copy(update={"num_env_runners": 1})
    config = algo_config("ppo", rl, portfolio_env_kwargs(cfg, data.arrays["train"], train=True))
    assert config.num_envs_per_env_runner == PORTFOLIO_ENVS_PER_RUNNER > 1
    algo = config.build_algo()
    try:
        result = algo.train()
        kinds = algo.env_runner_group.foreach_env_runner(
            lambda r: (type(r.env.unwrapped).__name__, r.num_envs), local_env_runner=False)
    finally:
        algo.stop()
    assert kinds == [("VecTradingEnv", PORTFOLIO_ENVS_PER_RUNNER)]
    assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= rl.train_batch_size


def test_env_creator_builds_a_vector_env_when_asked(run):
    from raytrade.rl.env import make_env
    from raytrade.rl.portfolio_inputs import portfolio_env_kwargs
    from raytrade.rl.rllib_agents import envs_per_runner
    from raytrade_envs import TradingEnv, VecTradingEnv

    kwargs = portfolio_env_kwargs(run["cfg"], run["data"].arrays["val"], train=False)
    vec = make_env({**kwargs, "num_envs": 3})
    assert isinstance(vec, VecTradingEnv) and vec.num_envs == 3
    assert isinstance(make_env(kwargs), TradingEnv)
    assert envs_per_runner(kwargs) > 1
    assert envs_per_runner({**kwargs, "returns": kwargs["returns"][:, 0]}) == 1  # one asset: unchanged


def test_served_agent_weights_equal_the_env_rollouts_at_every_checked_bar(run, agents):
    """The serving path (request bars -> features per symbol and across the universe -> the forecaster's batched
    pass -> :func:`portfolio_observation` -> :func:`agent_weights`) rebuilds, at test bars mid-episode (positions
    held, drawdown, unrealised P&L all non-zero), the env's own observation and the target weights it traded."""
    from raytrade.rl.portfolio_inputs import portfolio_env_kwargs
    from raytrade.serving.portfolio_steps import agent_weights, portfolio_observation, universe_features
    from raytrade.serving.steps import forecast_items, forecaster_spec
    from raytrade_envs import TradingEnv

    cfg, data, universe, bundle = run["cfg"], run["data"], run["universe"], run["bundle"]
    limits = dict(LIMITS)
    spec = forecaster_spec(bundle, "1")
    bars = universe.bars
    env_kwargs = portfolio_env_kwargs(cfg, data.arrays["test"], train=False)
    stamps = data.timestamps["test"]
    n_assets = len(SYMBOLS)
    for name, outcome in agents.items():
        policy = outcome.policy
        env = TradingEnv(**env_kwargs)
        obs, _ = env.reset(seed=0)
        k, checked, done = cfg.rl.window - 1, 0, False
        while not done:
            action = np.atleast_1d(policy.act(obs)[0]).astype(np.float32)
            if (k - cfg.rl.window + 1) % 17 == 5:  # a spread of bars, well into the episode
                t = stamps[k]
                frames = {s: bars[(bars[SYMBOL] == s) & (bars[TIMESTAMP] <= t)].reset_index(drop=True)
                          for s in SYMBOLS}
                feats = universe_features(frames, spec, run["prepared"].features.reference_symbol,
                                          cfg.portfolio.turbulence_window)
                assert pd.Timestamp(feats["timestamp"]) == t
                fc = forecast_items(bundle, "1", [{"rows": feats["rows"][s],
                                                   "feature_set_version": bundle.feature_set_version}
                                                  for s in feats["rows"]])
                items = {s: {**f, "timestamps": feats["rows"][s][TIMESTAMP].to_numpy()}
                         for s, f in zip(feats["rows"], fc, strict=True)}
                held, upnl, dd = obs[-(n_assets + 2):-2], float(obs[-2]), float(obs[-1])
                book = dict(zip(SYMBOLS, held.tolist(), strict=True))
                served_obs = portfolio_observation(policy, items, book, upnl, dd)
                np.testing.assert_allclose(served_obs, obs, rtol=1e-5, atol=1e-6)
                served = agent_weights(policy, items, book, upnl, dd, limits)
                obs2, _, terminated, truncated, info = env.step(action)
                np.testing.assert_allclose(list(served.values()), info.get("order", info["target"]), atol=1e-6)
                checked += 1
            else:
                obs2, _, terminated, truncated, info = env.step(action)
            obs, done, k = obs2, terminated or truncated, k + 1
        assert checked >= 3 and np.abs(held).sum() > 0, name
