"""The pipeline on a universe (jobs/configs/universe_smoke.yaml: 6 symbols of the bundled daily US universe): the
report contract (data.symbols, every strategy's metrics and last weights), exposure limits, the pooled forecaster's
cross-sectional metrics, and the baselines' accounting against a plain units book written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from raytrade.evaluation import SUMMARY_KEYS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def universe_run(ray_local, tmp_path_factory):
    from raytrade.config import load_config
    from raytrade.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("universe")
    cfg = load_config(REPO / "jobs" / "configs" / "universe_smoke.yaml", overrides={
        "output_dir": str(out), "tracking": {"uri": f"sqlite:///{out / 'mlflow.db'}"},
        "data": {"path": str(REPO / "data" / "lean_us_equity_etf_1d.parquet")}})
    report = run_pipeline(cfg)
    return {"report": report, "cfg": cfg, "run_dir": Path(report["run_dir"])}


def test_universe_report_contract(universe_run):
    report, cfg = universe_run["report"], universe_run["cfg"]
    on_disk = json.loads((universe_run["run_dir"] / "report.json").read_text())
    symbols = list(cfg.data.symbols)
    assert on_disk["data"]["symbols"] == report["data"]["symbols"] == symbols
    assert report["data"]["alignment"] == "union_calendar" and report["data"]["excluded"] == {}
    assert set(report["strategies"]) >= {"buy_and_hold", "equal_weight", "min_variance", "forecaster",
                                         "forecaster_risk_limited", *cfg.rl.agents,
                                         *(f"ensemble_{m}" for m in cfg.ensemble.methods)}
    assert set(report["rl_metrics"]) == set(cfg.rl.agents) <= set(report["model_versions"])
    for name, entry in report["strategies"].items():
        assert set(SUMMARY_KEYS) <= set(entry), name
        assert all(np.isfinite(entry[k]) for k in SUMMARY_KEYS), name
        assert list(entry["weights"]) == symbols
        w = np.array(list(entry["weights"].values()))
        assert (w >= -1e-12).all() and w.sum() <= cfg.portfolio.max_gross + 1e-9  # long-only by default
    # the test split starts after the embargo; every strategy ran on the same decision bars
    bt = report["backtest"]
    assert bt["first_bar"] > report["data"]["split_ranges"]["val"][1]
    assert {e["n_bars"] for e in report["strategies"].values()} == {bt["n_bars"]}
    xs = report["forecaster_metrics"]["cross_sectional"]
    assert xs["n_symbols"] == len(symbols) and -1 <= xs["rank_ic"]["value"] <= 1
    assert xs["rank_ic"]["ci_low"] <= xs["rank_ic"]["value"] <= xs["rank_ic"]["ci_high"]
    assert set(xs["per_symbol"]) == set(symbols)
    assert any(c.startswith("xs_") for c in report["data"]["feature_columns"])
    for name in ("equity", "drawdown", "weights_forecaster_risk_limited"):
        assert Path(report["figures"][name]).is_file()
    html = (universe_run["run_dir"] / "report.html").read_text()
    assert "Last target weights" in html and "Cross-sectional" in html


def test_equal_weight_buy_and_hold_equals_a_plain_units_book(universe_run):
    """Buy equal notional of every symbol at the first decision bar's fill (next open), hold the units: the final
    equity from the raw bars equals the report's buy_and_hold total return (after the entry cost)."""
    report, cfg = universe_run["report"], universe_run["cfg"]
    bars = pd.read_parquet(REPO / "data" / "lean_us_equity_etf_1d.parquet")
    bars = bars[bars["symbol"].isin(cfg.data.symbols)]
    first, last = pd.Timestamp(report["backtest"]["first_bar"]), pd.Timestamp(report["backtest"]["last_bar"])
    calendar = pd.DatetimeIndex(bars["timestamp"].unique()).sort_values()
    fill_day = calendar[calendar.searchsorted(first) + 1]
    end_day = calendar[calendar.searchsorted(last) + 1]
    wide_open = bars.pivot(index="timestamp", columns="symbol", values="open")
    wide_close = bars.pivot(index="timestamp", columns="symbol", values="close")
    n = len(cfg.data.symbols)
    cost = cfg.backtest.cost_bps * 1e-4
    invested = 1.0 / (1.0 + cost)  # the entry trade pays its cost out of the equity
    units = invested / n / wide_open.loc[fill_day]
    final = float((units * wide_close.loc[end_day]).sum())
    assert report["strategies"]["buy_and_hold"]["total_return"] == pytest.approx(final - 1.0, abs=1e-9)


def test_the_risk_layer_keeps_the_exposure_limits_and_cash_in_turbulence(universe_run):
    report = universe_run["report"]
    limited = report["strategies"]["forecaster_risk_limited"]
    plain = report["strategies"]["forecaster"]
    assert limited["avg_gross_exposure"] <= plain["avg_gross_exposure"] + 1e-12
    if report["backtest"]["turbulent_bars"]:
        assert limited["avg_gross_exposure"] < plain["avg_gross_exposure"]


def test_portfolio_agents_and_their_ensembles_trade_within_the_limits(universe_run):
    """Each agent's test targets and each ensemble (through the risk layer) keep every exposure limit at every bar;
    the rolling selection trades, in each window, exactly the targets of one member."""
    from raytrade import tracking

    report, cfg = universe_run["report"], universe_run["cfg"]
    limits = cfg.portfolio
    for name in (*cfg.rl.agents, *(f"ensemble_{m}" for m in cfg.ensemble.methods)):
        entry = report["strategies"][name]
        assert entry["avg_gross_exposure"] <= limits.max_gross + 1e-9, name
        w = np.array(list(entry["weights"].values()))
        assert (np.abs(w) <= limits.max_weight + 1e-9).all() and abs(w.sum()) <= limits.max_net + 1e-9, name
    rolling = report["backtest"]["ensembles"]["rolling"]
    members = rolling["members"]
    assert members == ["forecaster", *cfg.rl.agents]
    for weights in rolling["weights"]:
        assert sorted(weights.values()) == [0.0] * (len(members) - 1) + [1.0]
    assert rolling["window_starts"][:2] == [0, cfg.ensemble.window_bars]
    vote = report["backtest"]["ensembles"]["vote"]
    for weights in vote["weights"]:
        assert sum(weights.values()) == pytest.approx(1.0)
    # every agent is registered in MLflow under its model name
    client = tracking.registry_client(report["mlflow"]["tracking_uri"])
    for agent, model in report["mlflow"]["agent_models"].items():
        assert client.get_model_version(model, report["model_versions"][agent]).status == "READY"


def test_walk_forward_on_a_universe_scores_the_pooled_forecaster_across_symbols(ray_local, tmp_path):
    """`raytrade walk-forward` on a universe: folds on one calendar, one pooled model per fold, the cross-sectional
    scores (rank IC, ICIR, long-short) pooled over the folds with intervals."""
    from raytrade.config import load_config
    from raytrade.evaluation.walk_forward import UNIVERSE_METRICS
    from raytrade.stages.walk_forward import run_walk_forward

    cfg = load_config(REPO / "jobs" / "configs" / "universe_smoke.yaml", overrides={
        "output_dir": str(tmp_path), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "data": {"path": str(REPO / "data" / "lean_us_equity_etf_1d.parquet")},
        "walk_forward": {"n_folds": 2, "models": ["linear"], "n_bootstrap": 100}})
    report = run_walk_forward(cfg)
    assert report["symbols"] == list(cfg.data.symbols) and len(report["folds"]) == 2
    pooled = report["pooled"]["linear"]
    assert set(pooled) == set(UNIVERSE_METRICS)
    ic = pooled["rank_ic"]
    assert -1 <= ic["value"] <= 1 and ic["ci_low"] <= ic["value"] <= ic["ci_high"]
    first, second = (pd.Timestamp(f["test_first"]) for f in report["folds"])
    assert first < second
    assert "| linear |" in report["table_markdown"] and "rank_ic" in report["table_markdown"]
