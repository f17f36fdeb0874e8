"""``POST /portfolio``: the one-bar portfolio decision shared by the backtest and Serve, and the served weights of a
real universe run equal to its backtest's.

Fast: :func:`raytrade.rl.portfolio_decision.portfolio_decision` walked bar by bar on real Dow stocks (stooq; CVX,
CRM, TRV and V each miss a day, so held weights are kept through untradable bars) reproduces the stage's
composition ``top_k_weights -> project_weights -> risk_limit_weights`` with the drawdown cut and the turbulence rule
both firing; one bar against a hand-computed reference; the request checks of the ingress.

Slow: the universe pipeline on five symbols of ``data/lean_us_equity_etf_1d.parquet`` from 2014 (tiny model, one
epoch, ``serve.enabled: false``) in a temporary MLflow store, the portfolio app deployed with the run's parameters
(:func:`raytrade.serving.deploy.deploy_portfolio`), and ``POST /portfolio`` over real HTTP at test bars with the
book's state there: the served weights are the backtest's (1e-6); 422s name the symbol and field.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.exceptions import RequestValidationError

from conftest import REPO, free_port, shared
from raytrade.data.universe import Panel
from raytrade.evaluation.portfolio_baselines import top_k_weights
from raytrade.rl.portfolio_decision import past_log_returns, portfolio_decision, portfolio_decisions
from raytrade.rl.portfolio_risk import risk_limit_weights, turbulence_index, turbulence_threshold
from raytrade_envs.accounting import simulate
from raytrade_envs.actions import project_weights

STOOQ = ["AAPL", "CVX", "CRM", "TRV", "V"]
LIMITS = {"max_weight": 0.4, "max_gross": 1.0, "max_net": 1.0}


# --------------------------------------------------------------------------- fast: the one-bar decision


@pytest.fixture(scope="module")
def dow() -> dict:
    """Five Dow stocks over 2010-2011 on their union calendar: a causal score (20-bar momentum, known at the close
    of t), the tradable mask (a bar at t and a score), FinRL's turbulence over 63 bars with its 0.9 quantile of the
    first 250 bars as the threshold, and the book's step (next-open fills, 10 bps)."""
    bars = pd.read_parquet(shared("stooq_dow30_1d.parquet"))
    bars = bars[bars["symbol"].isin(STOOQ) & (bars["timestamp"] >= "2010-01-01") & (bars["timestamp"] < "2012-01-01")]
    panel = Panel.from_bars(bars, STOOQ)
    close = panel.marks()
    scores = np.full(close.shape, np.nan)
    scores[20:] = np.log(close[20:] / close[:-20])
    scores[~panel.has_bar] = np.nan
    tradable = panel.fillable("next_open") & np.isfinite(scores)
    past = past_log_returns(panel.close)
    turbulence = turbulence_index(past, 63)
    threshold = turbulence_threshold(turbulence[:250], 0.9)
    nlr, gap = panel.next_log_returns(), panel.next_gap_returns()
    bars_ = np.arange(21, len(panel.timestamps) - 1)  # decision bars: scores defined, the next bar known

    def step(t: int, held: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        book = simulate(target[None], nlr[bars_[t]][None], 10.0, initial_position=held,
                        gap_returns=gap[bars_[t]][None], tradable=tradable[bars_[t]][None])
        return float(book.net[0]), book.held_end

    return {"panel": panel, "scores": scores[bars_], "tradable": tradable[bars_], "turbulence": turbulence[bars_],
            "threshold": threshold, "step": step, "past": past}


@pytest.mark.parametrize("long_only", [True, False])
def test_decision_walked_bar_by_bar_is_the_stages_forecaster_risk_limited(dow, long_only):
    scores, tradable, turb, step = dow["scores"], dow["tradable"], dow["turbulence"], dow["step"]
    risk = {"max_drawdown": 0.05, "drawdown_cut": 0.5}
    limits = {**LIMITS, "long_only": long_only, "max_net": 1.0 if long_only else 0.2}
    # the stage's composition (raytrade.stages.portfolio): vectorised top-k, limits, NaN = keep units, risk layer
    forecaster_w = project_weights(top_k_weights(scores, tradable & np.isfinite(scores), 2, long_short=not long_only),
                                   **limits)
    wanted = np.where(tradable, forecaster_w, np.nan)
    expected, expected_net = risk_limit_weights(wanted, step, turbulence=turb, threshold=dow["threshold"], **risk,
                                                **limits)
    walked, net = portfolio_decisions(scores, tradable, step, turbulence=turb, threshold=dow["threshold"], top_k=2,
                                      **risk, **limits)
    np.testing.assert_array_equal(walked, expected)
    np.testing.assert_array_equal(net, expected_net)
    # rebalancing every 5 bars: the top k on those bars only, the units kept (NaN) in between, the risk layer always
    every5 = np.arange(len(scores)) % 5 == 0
    sparse, sparse_net = risk_limit_weights(np.where(tradable & every5[:, None], forecaster_w, np.nan), step,
                                            turbulence=turb, threshold=dow["threshold"], **risk, **limits)
    walked5, net5 = portfolio_decisions(scores, tradable, step, turbulence=turb, threshold=dow["threshold"], top_k=2,
                                        rebalance=every5, **risk, **limits)
    np.testing.assert_array_equal(walked5, sparse)
    np.testing.assert_array_equal(net5, sparse_net)
    assert not np.array_equal(walked5, walked)

    # one bar at a time, with the state a client keeps: the held (drifted) weights and the drawdown of its book
    held, equity, peak = np.zeros(scores.shape[1]), 1.0, 1.0
    cut = turbulent = kept = 0
    for t in range(len(scores)):
        drawdown = 1.0 - equity / peak
        w = portfolio_decision(scores[t], tradable[t], held=held, drawdown=drawdown, turbulence=turb[t],
                               threshold=dow["threshold"], top_k=2, **risk, **limits)
        np.testing.assert_allclose(w, expected[t], rtol=0, atol=1e-12)
        cut += drawdown > risk["max_drawdown"] and not turb[t] > dow["threshold"]
        turbulent += bool(turb[t] > dow["threshold"])
        kept += bool(np.any(~tradable[t] & (np.abs(held) > 1e-9)))
        r, held = step(t, held.copy(), w)
        equity *= 1.0 + r
        peak = max(peak, equity)
    # every branch ran: the drawdown cut, the turbulence rule, and an untradable asset held through a missed day
    assert cut > 0 and turbulent > 0 and kept > 0, (cut, turbulent, kept)
    if long_only:
        assert (expected >= 0).all()
    else:
        assert (expected < 0).any() and (np.abs(expected.sum(axis=1)) <= 0.2 + 1e-9).all()


def test_one_bar_against_a_hand_computed_reference():
    """Top-2 of the tradable assets with a forecast (asset 1 has none, asset 2 cannot trade and keeps its 0.3), then
    the gross cap 1 scales every weight by 1 / 1.3; in excess drawdown times the cut; turbulent: cash."""
    er = np.array([0.01, np.nan, 0.05, -0.02, 0.002])
    tradable = np.array([True, True, False, True, True])
    held = np.array([0.1, 0.2, 0.3, 0.0, 0.15])
    kwargs = {"top_k": 2, "long_only": True, "max_weight": 1.0, "max_gross": 1.0, "max_net": 1.0,
              "max_drawdown": 0.1, "drawdown_cut": 0.25}
    reference = np.array([0.5, 0.0, 0.3, 0.0, 0.5]) / 1.3  # picks 0 and 4 (scores 0.01 > 0.002 > -0.02)
    w = portfolio_decision(er, tradable, held=held, **kwargs)
    np.testing.assert_allclose(w, reference, atol=1e-15)
    np.testing.assert_allclose(portfolio_decision(er, tradable, held=held, drawdown=0.11, **kwargs),
                               0.25 * reference, atol=1e-15)
    calm = portfolio_decision(er, tradable, held=held, drawdown=0.11, turbulence=1.0, threshold=2.0, **kwargs)
    np.testing.assert_allclose(calm, 0.25 * reference, atol=1e-15)
    assert (portfolio_decision(er, tradable, held=held, turbulence=3.0, threshold=2.0, **kwargs) == 0).all()
    # between rebalances the held book is kept; in drawdown its gross (0.75) is capped at 0.25, and a book already
    # at the cut's exposure is kept as it is (not cut again on every bar)
    np.testing.assert_array_equal(portfolio_decision(er, tradable, held=held, rebalance=False, **kwargs), held)
    capped = portfolio_decision(er, tradable, held=held, drawdown=0.11, rebalance=False, **kwargs)
    np.testing.assert_allclose(capped, held / 3.0, atol=1e-15)
    np.testing.assert_array_equal(
        portfolio_decision(er, tradable, held=capped, drawdown=0.11, rebalance=False, **kwargs), capped)
    with pytest.raises(ValueError, match="tradable must be a boolean array of shape"):
        portfolio_decision(er, tradable[:3], held=held, **kwargs)
    with pytest.raises(ValueError, match="held weights must be finite"):
        portfolio_decision(er, tradable, held=np.array([np.nan, 0, 0, 0, 0]), **kwargs)


def test_request_checks_name_the_symbol_and_field():
    from raytrade.serving.portfolio_app import check_request
    from raytrade.serving.portfolio_schemas import PortfolioRequest
    from raytrade.serving.portfolio_steps import PortfolioParams

    params = PortfolioParams(symbols=("SPY", "QQQ", "IWM"), top_k=1)
    bar = {"timestamp": "2017-01-03T00:00:00Z", "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 0.0}
    ok = PortfolioRequest.model_validate({"bars": {"IWM": [bar], "SPY": [bar]}, "weights": {"SPY": 0.5}})
    assert check_request(ok, params) == ["SPY", "IWM"]  # the universe's order (top-k breaks ties by it)
    for body, loc, words in [
        ({"bars": {"SPY": [bar], "TSLA": [bar]}}, ("body", "bars", "TSLA"), "unknown symbol 'TSLA'"),
        ({"symbols": ["SPY", "GLD"]}, ("body", "symbols", 1), "unknown symbol 'GLD'"),
        ({"bars": {"SPY": [bar]}, "weights": {"QQQ": 0.2}}, ("body", "weights", "QQQ"), "not in the request"),
        ({"bars": {"SPY": [bar]}, "weights": {"SPY": -0.2}}, ("body", "weights", "SPY"), "long-only"),
        ({"bars": {"SPY": [bar], "QQQ": [bar]}, "weights": {"SPY": 1.5, "QQQ": 1.5}}, ("body", "weights"),
         "gross exposure"),
    ]:
        with pytest.raises(RequestValidationError) as info:
            check_request(PortfolioRequest.model_validate(body), params)
        error = info.value.errors()[0]
        assert tuple(error["loc"]) == loc and words in error["msg"], error
    from pydantic import ValidationError

    for body, words in [({"bars": {"SPY": [bar]}, "symbols": ["SPY"]}, "exactly one"), ({}, "exactly one"),
                        ({"symbols": ["SPY"], "weights": {"SPY": float("nan")}}, "finite number"),
                        ({"symbols": ["SPY"], "drawdown": 1.5}, "less than or equal to 1")]:
        with pytest.raises(ValidationError, match=words):
            PortfolioRequest.model_validate(body)


def test_both_portfolio_apps_check_their_args_and_params_alike():
    """The one-hop and the composed app builders refuse the same bad args and params with the same one-line
    ConfigError, naming the deployment that holds the params; good ones build an application."""
    from ray.serve import Application

    from raytrade.errors import ConfigError
    from raytrade.serving.portfolio_app import portfolio_app
    from raytrade.serving.portfolio_decision import portfolio_decision_app

    good = {"tracking_uri": "sqlite:///unused.db", "params": {"symbols": ["SPY", "QQQ"], "top_k": 1}}
    for build, holder in ((portfolio_decision_app, "PortfolioDecision"), (portfolio_app, "PortfolioIngress")):
        assert isinstance(build(good), Application)
        with pytest.raises(ConfigError, match=f"as args or as the {holder} user_config"):
            build({"tracking_uri": "sqlite:///unused.db"})
        with pytest.raises(ConfigError, match="portfolio params: top_k"):
            build({"tracking_uri": "sqlite:///unused.db"}, {holder: {"user_config": {"symbols": ["SPY"], "top_k": 0}}}
                  if build is portfolio_app else {"user_config": {"symbols": ["SPY"], "top_k": 0}})
        with pytest.raises(ConfigError, match="portfolio app args: agent_models"):
            build({**good, "agent_models": ["ppo"]})


def test_served_features_are_causal_and_name_the_symbol():
    """The served input at a bar ``t`` (features per symbol, then across the request's symbols; turbulence) equals
    the same code run over the whole history, read at ``t`` (nothing after ``t`` changes it); a symbol whose last
    bar is before ``t`` is not tradable and gets no window; too few bars name the symbol; fewer than
    ``turbulence_window + 2`` bars turn the turbulence rule off, and the decision says so."""
    from raytrade.config import FeatureConfig
    from raytrade.features.cross_sectional import add_cross_sectional, cross_sectional_columns
    from raytrade.features.technical import compute_features, feature_columns
    from raytrade.serving.portfolio_steps import (
        PortfolioParams,
        SymbolDataError,
        decide,
        min_bars,
        universe_features,
    )

    fcfg = FeatureConfig()
    own = feature_columns(fcfg, cross_asset=True)
    spec = {"features": fcfg.model_dump(mode="json"), "columns": [*own, *cross_sectional_columns(fcfg)],
            "lookback": 16, "feature_set_version": "test"}
    bars = pd.read_parquet(LEAN)
    bars = bars[bars["symbol"].isin(UNIVERSE) & (bars["timestamp"] >= "2014-01-01")]
    frames = {s: bars[bars["symbol"] == s].reset_index(drop=True) for s in UNIVERSE}
    t = pd.Timestamp("2016-06-30", tz="UTC")
    upto = {s: f[f["timestamp"] <= t].reset_index(drop=True) for s, f in frames.items()}
    got = universe_features(upto, spec, "SPY", 63)
    assert pd.Timestamp(got["timestamp"]) == t
    assert got["tradable"] == dict.fromkeys(UNIVERSE, True) and list(got["rows"]) == UNIVERSE
    reference = pd.Series(frames["SPY"]["close"].to_numpy(), index=pd.DatetimeIndex(frames["SPY"]["timestamp"]))
    whole = add_cross_sectional(pd.concat([compute_features(f, fcfg, reference=reference) for f in frames.values()],
                                          ignore_index=True), fcfg, columns=own)
    for symbol, rows in got["rows"].items():
        ref = whole[(whole["symbol"] == symbol) & (whole["timestamp"] <= t)].tail(16)
        pd.testing.assert_frame_equal(rows, ref[["timestamp", *spec["columns"]]].reset_index(drop=True),
                                      check_exact=False, rtol=1e-12, atol=1e-12)
    panel = Panel.from_bars(pd.concat(list(frames.values())), UNIVERSE)
    full = turbulence_index(past_log_returns(panel.close), 63)
    assert got["turbulence"] == pytest.approx(full[panel.index_of(t)[0]], rel=1e-12)
    assert got["turbulence_assets"] == len(UNIVERSE)

    # IBM's last bar the day before t: no order for it at t, no window (the others keep theirs)
    missed = universe_features({**upto, "IBM": upto["IBM"].iloc[:-1]}, spec, "SPY", 63)
    assert pd.Timestamp(missed["timestamp"]) == t
    assert missed["tradable"] == {s: s != "IBM" for s in UNIVERSE} and "IBM" not in missed["rows"]
    assert set(missed["rows"]) == set(UNIVERSE) - {"IBM"}

    need = min_bars(spec)
    short = {s: f.tail(need) for s, f in upto.items() if s != "IBM"}
    few = universe_features(short, spec, "SPY", need)  # a turbulence window longer than the bars sent
    assert np.isnan(few["turbulence"]) and few["turbulence_assets"] == 0
    params = PortfolioParams(symbols=tuple(UNIVERSE), top_k=1, turbulence_window=need, turbulence_threshold=1.0)
    out = decide(params, list(short), {"SPY": 0.01, "QQQ": 0.02}, few["tradable"], {}, 0.0, few["turbulence"])
    assert out["risk"]["turbulence_rule"].startswith("off: needs portfolio.turbulence_window + 2")
    assert out["weights"]["QQQ"] == 1.0 and out["cash"] == 0.0
    with pytest.raises(SymbolDataError, match=f"symbol QQQ: need at least {need} bars") as info:
        universe_features({**short, "QQQ": short["QQQ"].tail(need - 1)}, spec, "SPY", 63)
    assert info.value.symbol == "QQQ"

# --------------------------------------------------------------------------- slow: served == backtest over HTTP

LEAN = REPO / "data" / "lean_us_equity_etf_1d.parquet"
UNIVERSE = ["SPY", "QQQ", "IWM", "AAPL", "IBM"]


def _stage_replay(cfg, report: dict) -> dict:  # noqa: ANN001
    """The portfolio stage's ``forecaster_risk_limited`` rebuilt from the run's data and registered forecaster with
    the stage's own functions (:func:`raytrade.stages.portfolio.portfolio_bars`, :func:`forecaster_decisions`),
    keeping what a client's book holds at each bar: the held (drifted) weights coming into the bar, the drawdown of
    the limited book and whether the bar is a rebalance bar."""
    from raytrade import tracking
    from raytrade.dataset.prepare import load_universe_data, prepare_data
    from raytrade.stages.portfolio import forecaster_decisions, portfolio_bars

    universe = load_universe_data(cfg)
    prepared = prepare_data(cfg, universe)
    uri = report["mlflow"]["tracking_uri"]
    bundle, version, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, uri)
    test = prepared.windows(cfg.model.lookback)["test"]
    pb = portfolio_bars(cfg, universe, prepared, test, bundle.forecast_windows(test.x)["expected_return"])
    np.testing.assert_array_equal(pb.past, past_log_returns(universe.panel.close))  # the served returns are these
    walk = forecaster_decisions(cfg, pb)
    return {"universe": universe, "prepared": prepared, "bars": pb.bars, "stamps": pb.stamps, "scores": pb.scores,
            "tradable": pb.tradable, "turbulence": pb.turbulence, "threshold": pb.threshold,
            "limited": walk["targets"], "held": walk["held"], "drawdown": walk["drawdown"],
            "rebalance": pb.rebalance, "version": version, "train_rows": pb.train_rows}


@pytest.fixture(scope="module")
def portfolio_served(ray_local, redis_server, tmp_path_factory):
    """The universe pipeline (serve off) in a temporary MLflow store, its backtest rebuilt, and the portfolio app
    deployed with the run's parameters and the session's Redis as its online store; yields the run, the rebuilt
    backtest and an HTTP client."""
    from ray import serve

    from raytrade.config import parse_config
    from raytrade.pipeline import run_pipeline
    from raytrade.serving.deploy import deploy_portfolio
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME
    from raytrade.serving.portfolio_steps import PortfolioParams

    out = tmp_path_factory.mktemp("portfolio")
    cfg = parse_config({
        "name": "portfolio-serve", "output_dir": str(out),
        "data": {"path": str(LEAN), "symbols": UNIVERSE, "start": "2014-01-01"},
        "labels": {"horizon": 5, "threshold": 0.01},
        "model": {"lookback": 16, "conv_channels": 8, "lstm_hidden": 16, "mc_samples": 4},
        "train": {"epochs": 1, "batch_size": 256},
        "rl": {"window": 4, "agents": ["ppo"], "iterations": 1, "train_batch_size": 256, "minibatch_size": 64,
               "num_epochs": 1, "episode_length": 100, "hidden": [32, 32]},
        # a tight drawdown limit and the 0.9 train quantile, so the cut and the turbulence rule both have work
        "portfolio": {"top_k": 2, "turbulence_window": 63, "turbulence_quantile": 0.9, "max_weight": 0.6},
        "ensemble": {"max_drawdown": 0.02, "drawdown_cut": 0.5},
        "walk_forward": {"n_bootstrap": 50},
        "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        "serve": {"enabled": False, "port": free_port()},
        "store": {"enabled": True, "url": redis_server, "prefix": "portfolio"},
    })
    report = run_pipeline(cfg)
    replay = _stage_replay(cfg, report)
    # the rebuilt backtest is the run's: its threshold and its last target weights are the report's
    assert replay["threshold"] == pytest.approx(report["backtest"]["turbulence_threshold"], rel=1e-12)
    last = report["strategies"]["forecaster_risk_limited"]["weights"]
    np.testing.assert_allclose(replay["limited"][-1], [last[s] for s in UNIVERSE], atol=1e-12)
    agent_models = report["mlflow"]["agent_models"]
    params = PortfolioParams.from_run(cfg, report["backtest"], replay["prepared"].features.reference_symbol,
                                      report["model_versions"]["forecaster"],
                                      {name: report["model_versions"][name] for name in agent_models})
    url = deploy_portfolio(cfg, report["mlflow"]["tracking_uri"], params, agent_models=agent_models)
    client = httpx.Client(base_url=url, timeout=120)
    yield {"cfg": cfg, "report": report, "replay": replay, "client": client, "params": params,
           "run_dir": Path(report["run_dir"])}
    client.close()
    serve.delete(PORTFOLIO_APP_NAME)


def _bars_payload(universe, end: pd.Timestamp, symbols=UNIVERSE, n_bars: int | None = None,  # noqa: ANN001
                  start: pd.Timestamp | None = None) -> dict:
    """Every symbol's bars of the run (from data.start, or from ``start``: a one-hop new-bar request's last bar sent
    and new bar) up to ``end``, as ``POST /portfolio`` takes them."""
    out = {}
    for symbol in symbols:
        keep = (universe.bars["symbol"] == symbol) & (universe.bars["timestamp"] <= end)
        if start is not None:
            keep &= universe.bars["timestamp"] >= start
        rows = universe.bars[keep]
        rows = rows if n_bars is None else rows.tail(n_bars)
        out[symbol] = [{"timestamp": r.timestamp.isoformat(), "open": r.open, "high": r.high, "low": r.low,
                        "close": r.close, "volume": r.volume} for r in rows.itertuples()]
    return out


@pytest.mark.slow
@pytest.mark.serve
def test_served_weights_are_the_backtests_at_test_bars(portfolio_served):
    """At the last test bars, the deepest drawdown and the first drawdown-cut bar, a request with the run's bars up
    to the bar, the backtest's held weights and drawdown gets the backtest's target weights; the forecasts, the
    turbulence index and the risk flags are the stage's."""
    rep, c, cfg = portfolio_served["replay"], portfolio_served["client"], portfolio_served["cfg"]
    n = len(rep["bars"])
    dd = rep["drawdown"]
    cut = np.flatnonzero(dd > cfg.ensemble.max_drawdown)
    assert len(cut) > 0, "the drawdown limit never bound: tighten ensemble.max_drawdown"
    held_bars = np.flatnonzero(np.abs(rep["held"]).sum(axis=1) > 0.1)
    chosen = sorted({n - 1, n - 2, n - 3, int(np.argmax(dd)), int(cut[0]), int(held_bars[len(held_bars) // 2])})
    models = c.get("/models").json()
    assert models["forecaster"]["version"] == rep["version"]
    assert rep["version"] == portfolio_served["report"]["model_versions"]["forecaster"]
    assert models["portfolio"]["turbulence_threshold"] == pytest.approx(rep["threshold"], rel=1e-12)
    assert models["portfolio"]["symbols"] == UNIVERSE and list(models["agents"]) == ["ppo"]
    assert models["agents"]["ppo"]["version"] == portfolio_served["report"]["model_versions"]["ppo"]
    assert any(np.abs(rep["limited"][t]).sum() > 0.1 for t in chosen)  # not an all-cash book
    assert any(np.abs(rep["held"][t]).sum() > 0.1 and dd[t] > cfg.ensemble.max_drawdown for t in chosen)
    for t in chosen:
        stamp = rep["stamps"][t]
        held = {s: float(w) for s, w in zip(UNIVERSE, rep["held"][t], strict=True) if w != 0.0}
        resp = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], stamp), "weights": held,
                                          "drawdown": float(dd[t]), "rebalance": bool(rep["rebalance"][t])})
        assert resp.status_code == 200, resp.text[:2000]
        body = resp.json()
        assert pd.Timestamp(body["timestamp"]) == stamp
        served = np.array([body["weights"][s] for s in UNIVERSE])
        np.testing.assert_allclose(served, rep["limited"][t], rtol=0, atol=1e-6, err_msg=f"bar {t} {stamp}")
        assert body["cash"] == pytest.approx(1.0 - served.sum(), abs=1e-12)
        assert body["gross_exposure"] == pytest.approx(np.abs(served).sum(), abs=1e-12)
        assert body["tradable"] == dict(zip(UNIVERSE, map(bool, rep["tradable"][t]), strict=True))
        for a, s in enumerate(UNIVERSE):
            f = body["forecasts"][s]
            assert f["expected_return"] == pytest.approx(rep["scores"][t, a], rel=1e-4, abs=1e-6), (t, s)
            assert set(f["probs"]) == {"sell", "hold", "buy"} and f["uncertainty"]["return_std"] >= 0
        risk = body["risk"]
        assert risk["turbulence"] == pytest.approx(rep["turbulence"][rep["bars"][t]], rel=1e-9)
        assert risk["turbulence_rule"] == "on"
        assert risk["turbulent"] == bool(rep["turbulence"][rep["bars"][t]] > rep["threshold"])
        assert risk["drawdown_cut"] == bool(dd[t] > cfg.ensemble.max_drawdown and not risk["turbulent"])
        assert list(body["agents"]) == ["ppo"] and list(body["agents"]["ppo"]) == UNIVERSE
        assert body["model_versions"] == {"forecaster": rep["version"],
                                          "agent_ppo": portfolio_served["report"]["model_versions"]["ppo"]}


@pytest.mark.slow
@pytest.mark.serve
def test_served_agent_weights_are_the_backtests_mid_episode(portfolio_served):
    """The registered PPO portfolio agent replayed through the TEST split's env (the backtest's agent, trading alone):
    at bars mid-episode, a request with the run's bars up to the bar and the agent's own book there (held weights,
    drawdown, unrealised P&L, as ``agent_books``) gets the weights the env traded; the report's last weights of
    ``ppo`` are the env's last."""
    from raytrade import tracking
    from raytrade.rl.env_inputs import bundle_windows
    from raytrade.rl.portfolio_inputs import portfolio_data, portfolio_env_kwargs
    from raytrade_envs import TradingEnv

    rep, c, cfg, report = (portfolio_served[k] for k in ("replay", "client", "cfg", "report"))
    uri = report["mlflow"]["tracking_uri"]
    bundle, _, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, uri)
    policy, version, _ = tracking.load_model_dir(cfg.tracking.agent_model("ppo"), cfg.tracking.alias, uri)
    assert version == report["model_versions"]["ppo"]
    data = portfolio_data(cfg, rep["universe"], rep["prepared"], bundle, bundle_windows(rep["prepared"], bundle))
    np.testing.assert_array_equal(data.decisions("test"), rep["bars"])
    env = TradingEnv(**portfolio_env_kwargs(cfg, data.arrays["test"], train=False))
    obs, _ = env.reset(seed=0)
    n, a = len(rep["bars"]), len(UNIVERSE)
    chosen = {n // 3, n // 2, n - 2}
    checked, done, step = 0, False, 0
    while not done:
        action = np.atleast_1d(policy.act(obs)[0]).astype(np.float32)
        held, upnl, dd = obs[-(a + 2):-2], float(obs[-2]), float(obs[-1])
        obs, _, terminated, truncated, info = env.step(action)
        if step in chosen:
            book = {"weights": {s: float(w) for s, w in zip(UNIVERSE, held, strict=True) if w != 0.0},
                    "drawdown": dd, "unrealised_pnl": upnl}
            resp = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], rep["stamps"][step]),
                                              "agent_books": {"ppo": book}})
            assert resp.status_code == 200, resp.text[:2000]
            served = resp.json()["agents"]["ppo"]
            np.testing.assert_allclose([served[s] for s in UNIVERSE], info["order"], rtol=0, atol=1e-6,
                                       err_msg=f"step {step}")
            assert np.abs(held).sum() > 0 or step == 0
            checked += 1
        done, step = terminated or truncated, step + 1
    assert checked == len(chosen) and step == n
    last = report["strategies"]["ppo"]["weights"]
    np.testing.assert_allclose([last[s] for s in UNIVERSE], info["target"], atol=1e-12)
    bad = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], rep["stamps"][-1]),
                                     "agent_books": {"a2c": {"weights": {}}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "agent_books", "a2c"]


@pytest.mark.slow
@pytest.mark.serve
def test_turbulent_bar_goes_to_cash_and_the_fewest_bars_keep_the_index(portfolio_served):
    """At the latest turbulent TRAIN bar (the index above the threshold of the train bars) the served book is all
    cash; the fewest bars a forecast needs give the index of the whole history; one bar fewer is a 422."""
    rep, c, params = portfolio_served["replay"], portfolio_served["client"], portfolio_served["params"]
    from raytrade.serving.portfolio_steps import min_bars
    from raytrade.serving.steps import forecaster_spec

    turb = rep["turbulence"]
    train = rep["train_rows"]
    turbulent = train[turb[train] > rep["threshold"]]
    assert len(turbulent) > 0
    t = int(turbulent[-1])
    stamp = rep["universe"].panel.timestamps[t]
    resp = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], stamp), "weights": {"SPY": 0.5}})
    assert resp.status_code == 200, resp.text[:2000]
    body = resp.json()
    assert body["risk"]["turbulent"] is True and body["risk"]["turbulence"] == pytest.approx(turb[t], rel=1e-9)
    assert body["weights"] == dict.fromkeys(UNIVERSE, 0.0) and body["cash"] == 1.0
    # the fewest bars that give a forecast (min_bars > turbulence_window + 2 here): the same turbulence index as with
    # the whole history (it looks back turbulence_window + 1 returns only), and a decision
    from raytrade import tracking

    bundle, version, _ = tracking.load_model_dir("raytrade-forecaster", "champion",
                                                 portfolio_served["report"]["mlflow"]["tracking_uri"])
    need = min_bars(forecaster_spec(bundle, version))
    assert need > params.turbulence_window + 2
    short = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], rep["stamps"][-1], n_bars=need)})
    assert short.status_code == 200, short.text[:2000]
    risk = short.json()["risk"]
    assert risk["turbulence_rule"] == "on"
    assert risk["turbulence"] == pytest.approx(turb[rep["bars"][-1]], rel=1e-9)
    too_few = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], rep["stamps"][-1], n_bars=need - 1)})
    assert _detail(too_few)[0]["loc"][:2] == ["body", "bars"] and f"need at least {need} bars" in too_few.text


def _detail(resp: httpx.Response) -> list[dict]:
    assert resp.status_code == 422, (resp.status_code, resp.text[:2000])
    return resp.json()["detail"]


@pytest.mark.slow
@pytest.mark.serve
def test_bad_requests_are_422_naming_symbol_and_field(portfolio_served):
    rep, c = portfolio_served["replay"], portfolio_served["client"]
    stamp = rep["stamps"][-1]
    good = _bars_payload(rep["universe"], stamp)
    reference = rep["prepared"].features.reference_symbol
    assert reference in UNIVERSE
    bad_ohlc = {s: [dict(b) for b in bars] for s, bars in good.items()}
    bad_ohlc["IBM"][-5]["low"] = bad_ohlc["IBM"][-5]["open"] * 1.5  # low above open and close
    bad_ohlc["IBM"][-5]["high"] = bad_ohlc["IBM"][-5]["low"] * 1.01
    cases = [
        ({"bars": {**good, "TSLA": good["SPY"]}}, ["body", "bars", "TSLA"], "unknown symbol"),
        ({"bars": {**good, "IBM": good["IBM"][-100:]}}, ["body", "bars", "IBM"], "need at least"),
        ({"bars": bad_ohlc}, ["body", "bars", "IBM", "low"], "ohlc"),
        ({"bars": {s: b for s, b in good.items() if s != reference}}, ["body", "bars", reference], "reference"),
        ({"bars": good, "weights": {"SPY": -0.3}}, ["body", "weights", "SPY"], "long-only"),
        ({"bars": good, "weights": {"SPY": 2.5}}, ["body", "weights", "SPY"], "less than or equal to 2"),
        ({"bars": good, "drawdown": -0.1}, ["body", "drawdown"], "greater than or equal to 0"),
        ({"bars": good, "agent_books": {"a2c": {}}}, ["body", "agent_books", "a2c"], "no portfolio agent"),
        ({"bars": good, "unrealised_pnl": float("-2")}, ["body", "unrealised_pnl"], "greater than or equal to -1"),
        ({"bars": good, "symbols": UNIVERSE}, ["body"], "exactly one"),
    ]
    for body, loc, words in cases:
        detail = _detail(c.post("/portfolio", json=body))
        assert detail[0]["loc"][: len(loc)] == loc, (loc, detail)
        assert words.lower() in (detail[0]["msg"] + detail[0]["type"]).lower(), (words, detail)
    assert c.post("/portfolio", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


@pytest.mark.slow
@pytest.mark.serve
def test_the_universe_run_publishes_every_symbols_latest_window(portfolio_served):
    """The pipeline's store stage wrote each symbol's latest window (store.enabled): ``{"symbols": [...]}`` decides
    at the universe's last bar, with the weights, forecasts and turbulence a request carrying the bars gets."""
    rep, c, report = portfolio_served["replay"], portfolio_served["client"], portfolio_served["report"]
    assert len(report["store"]["keys"]) == len(UNIVERSE)
    last = rep["universe"].panel.timestamps[-1]
    from_store = c.post("/portfolio", json={"symbols": UNIVERSE})
    assert from_store.status_code == 200, from_store.text[:2000]
    from_bars = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], last)}).json()
    body = from_store.json()
    assert pd.Timestamp(body["timestamp"]) == last == pd.Timestamp(from_bars["timestamp"])
    for s in UNIVERSE:
        assert body["weights"][s] == pytest.approx(from_bars["weights"][s], abs=1e-6)
        assert body["forecasts"][s]["expected_return"] == pytest.approx(from_bars["forecasts"][s]["expected_return"],
                                                                        rel=1e-4, abs=1e-6)
        assert body["agents"]["ppo"][s] == pytest.approx(from_bars["agents"]["ppo"][s], abs=1e-6)
    assert body["risk"]["turbulence"] == pytest.approx(from_bars["risk"]["turbulence"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.serve
def test_symbols_from_the_online_store_get_the_backtests_weights(portfolio_served):
    """``{"symbols": [...]}``: the latest windows the online store holds (the run's unscaled feature rows at the last
    test bar and the raw bars before it, written here as a publisher would) give the backtest's weights; a symbol
    without a window is a 422 naming it, ``not in the online store``."""
    from raytrade import tracking
    from raytrade.data.schema import BAR_COLUMNS
    from raytrade.store import OnlineFeatureStore

    rep, c, cfg = portfolio_served["replay"], portfolio_served["client"], portfolio_served["cfg"]
    bundle, _, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias,
                                           portfolio_served["report"]["mlflow"]["tracking_uri"])
    frame, bars = rep["prepared"].features.frame, rep["universe"].bars
    t = len(rep["bars"]) - 1
    stamp = rep["stamps"][t]
    windows = {}
    for s in UNIVERSE:
        rows = frame[(frame["symbol"] == s) & (frame["timestamp"] <= stamp)].tail(bundle.lookback)
        raw = bars[(bars["symbol"] == s) & (bars["timestamp"] <= stamp)].tail(100)
        windows[s] = (rows[["timestamp", *bundle.scaler.columns]].reset_index(drop=True),
                      raw[list(BAR_COLUMNS)].reset_index(drop=True))
    store = OnlineFeatureStore(cfg.store.url, feature_set_version=bundle.feature_set_version, prefix=cfg.store.prefix)
    store.write_many(windows)
    held = {s: float(w) for s, w in zip(UNIVERSE, rep["held"][t], strict=True)}
    try:
        resp = c.post("/portfolio", json={"symbols": UNIVERSE, "weights": held, "drawdown": float(rep["drawdown"][t]),
                                          "rebalance": bool(rep["rebalance"][t])})
        assert resp.status_code == 200, resp.text[:2000]
        body = resp.json()
        assert pd.Timestamp(body["timestamp"]) == stamp
        np.testing.assert_allclose([body["weights"][s] for s in UNIVERSE], rep["limited"][t], rtol=0, atol=1e-6)
        assert body["risk"]["turbulence"] == pytest.approx(rep["turbulence"][rep["bars"][t]], rel=1e-9)
        store.delete("IBM")
        detail = _detail(c.post("/portfolio", json={"symbols": UNIVERSE}))
        assert detail[0]["loc"] == ["body", "symbols", "IBM"] and "not in the online store" in detail[0]["msg"]
    finally:
        for s in UNIVERSE:
            store.delete(s)


@pytest.mark.slow
@pytest.mark.serve
def test_new_bars_step_the_universe_state_to_the_backtests_weights(portfolio_served):
    """The one-hop app (the default): after a full history, requests with each symbol's last bar sent and its new bar
    get, bar after bar, the backtest's target weights, forecasts and turbulence index; a request sent again gets the
    same answer; a request that skips a bar is 422 ``history_gap`` naming the symbol and leaves the state alone."""
    rep, c, report = portfolio_served["replay"], portfolio_served["client"], portfolio_served["report"]
    n = len(rep["bars"])
    first = n - 12
    held = {s: float(w) for s, w in zip(UNIVERSE, rep["held"][first], strict=True) if w != 0.0}
    opened = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], rep["stamps"][first]), "weights": held,
                                        "drawdown": float(rep["drawdown"][first])})
    assert opened.status_code == 200, opened.text[:2000]
    before = c.get("/models").json()["universe_state"]
    for t in range(first + 1, n):
        stamp, previous = rep["stamps"][t], rep["stamps"][t - 1]
        held = {s: float(w) for s, w in zip(UNIVERSE, rep["held"][t], strict=True) if w != 0.0}
        body = {"bars": _bars_payload(rep["universe"], stamp, start=previous), "weights": held,
                "drawdown": float(rep["drawdown"][t]), "rebalance": bool(rep["rebalance"][t])}
        assert max(len(b) for b in body["bars"].values()) <= 2
        resp = c.post("/portfolio", json=body)
        assert resp.status_code == 200, resp.text[:2000]
        got = resp.json()
        assert pd.Timestamp(got["timestamp"]) == stamp
        np.testing.assert_allclose([got["weights"][s] for s in UNIVERSE], rep["limited"][t], rtol=0, atol=1e-6,
                                   err_msg=f"bar {t} {stamp}")
        for a, s in enumerate(UNIVERSE):
            assert got["forecasts"][s]["expected_return"] == pytest.approx(rep["scores"][t, a], rel=1e-4, abs=1e-6)
        assert got["risk"]["turbulence"] == pytest.approx(rep["turbulence"][rep["bars"][t]], rel=1e-9)
        assert got["model_versions"]["agent_ppo"] == report["model_versions"]["ppo"]
        if t == first + 3:  # a retry of the same request: the same answer, nothing appended twice
            again = c.post("/portfolio", json=body).json()
            assert again["weights"] == got["weights"] and again["timestamp"] == got["timestamp"]
    after = c.get("/models").json()["universe_state"]
    assert after["appended"] - before.get("appended", 0) == n - 1 - first
    assert after.get("resent", 0) - before.get("resent", 0) == 1
    # a skipped bar: the replica never computes across the hole
    last = rep["stamps"][n - 1]
    gap = c.post("/portfolio", json={"bars": _bars_payload(rep["universe"], last, start=last)})
    assert gap.status_code == 200  # the last bar again: resent, the state's answer
    hole = _bars_payload(rep["universe"], last, start=last)
    hole["IBM"][0] = {**hole["IBM"][0], "timestamp": (last + pd.Timedelta(days=3)).isoformat()}
    detail = _detail(c.post("/portfolio", json={"bars": hole}))
    assert detail[0]["loc"][:3] == ["body", "bars", "IBM"] and detail[0]["type"] == "history_gap", detail


@pytest.mark.slow
@pytest.mark.serve
def test_the_composed_app_answers_as_the_one_hop_app(portfolio_served):
    """The composed portfolio app (a deployment per stage, for GPU clusters) deployed beside the default one-hop app
    gives the same weights, forecasts, agents and risk for a full-history request."""
    from ray import serve

    from raytrade.serving.deploy import deploy_portfolio
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME

    rep, c, cfg, report = (portfolio_served[k] for k in ("replay", "client", "cfg", "report"))
    url = deploy_portfolio(cfg, report["mlflow"]["tracking_uri"], portfolio_served["params"], route_prefix="/composed",
                           agent_models=report["mlflow"]["agent_models"], app="composed")
    try:
        t = len(rep["bars"]) - 5
        held = {s: float(w) for s, w in zip(UNIVERSE, rep["held"][t], strict=True) if w != 0.0}
        body = {"bars": _bars_payload(rep["universe"], rep["stamps"][t]), "weights": held,
                "drawdown": float(rep["drawdown"][t])}
        one_hop = c.post("/portfolio", json=body).json()
        with httpx.Client(base_url=url, timeout=120) as composed_client:
            assert composed_client.get("/models").json()["portfolio"]["symbols"] == UNIVERSE
            composed = composed_client.post("/portfolio", json=body)
        assert composed.status_code == 200, composed.text[:2000]
        composed = composed.json()
        assert composed["timestamp"] == one_hop["timestamp"] and composed["tradable"] == one_hop["tradable"]
        for s in UNIVERSE:
            assert composed["weights"][s] == pytest.approx(one_hop["weights"][s], abs=1e-6)
            assert composed["forecasts"][s]["expected_return"] == pytest.approx(
                one_hop["forecasts"][s]["expected_return"], rel=1e-4, abs=1e-6)
            assert composed["agents"]["ppo"][s] == pytest.approx(one_hop["agents"]["ppo"][s], abs=1e-6)
        assert composed["risk"]["turbulence"] == pytest.approx(one_hop["risk"]["turbulence"], rel=1e-12)
        assert composed["risk"]["turbulent"] == one_hop["risk"]["turbulent"]
        assert c.get("/models").json()["app"] == "one-hop"
    finally:
        serve.delete(f"{PORTFOLIO_APP_NAME}-composed")
