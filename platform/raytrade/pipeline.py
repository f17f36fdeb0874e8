"""End-to-end orchestration: bars -> features -> forecaster -> RL agents -> ensemble backtest -> Serve.

:func:`run_pipeline` runs every stage in order, prints progress, tracks every model in MLflow
(registered with the ``champion`` alias), and writes ``<run dir>/report.json``:

``{"strategies": {name: metrics}, "backtest": {..., "table", "ensembles"}, "forecaster_metrics": {...},
"rl_metrics": {agent: {...}}, "mlflow_run_ids": {...}, "data": {...}, "serve": {...}, "timings_s": {...},
"figures": {name: PNG path}}`` and ``<run dir>/report.html``: one self-contained page with the tables and the
figures (equity, drawdown, rolling Sharpe, confusion matrix, training curves), also logged to MLflow.

``strategies`` holds buy_and_hold, forecaster, every agent of ``rl.agents`` and ``ensemble_<method>`` for
every ``ensemble.methods``. All strategy metrics are on the TEST split, after transaction costs (see
:mod:`raytrade.evaluation.metrics` for units).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.data.universe import Universe
from raytrade.dataset.prepare import as_market_data, load_universe_data, prepare_data
from raytrade.dataset.windows import Windows
from raytrade.evaluation.html_report import write_html_report
from raytrade.runtime import Progress, ray_session
from raytrade.serving.deploy import deploy_ensemble
from raytrade.stages.agents import rl_stage
from raytrade.stages.common import (
    FORECASTER_LOADER,
    POLICY_LOADER,
    data_summary,
    new_run_dir,
    resolve_annualisation,
    train_forecaster,
)
from raytrade.stages.portfolio import portfolio_stage
from raytrade.stages.portfolio_agents import portfolio_agents_stage
from raytrade.store.publish import publish_latest_windows

log = logging.getLogger(__name__)

__all__ = ["FORECASTER_LOADER", "POLICY_LOADER", "request_payload", "run_pipeline"]

def run_pipeline(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """Run every stage; returns the report (also written to ``<run dir>/report.json``).

    Raises:
        DataValidationError: the bars break a validation rule.
        ConfigError: an invalid combination of settings (e.g. several symbols without ``data.symbol``).
        InsufficientDataError: too few bars for lookback, horizon, embargo and split.
    """
    from raytrade import tracking

    data_path = Path(data_path or cfg.data.path)
    run_dir = new_run_dir(cfg)
    progress = Progress(total=5 + int(cfg.serve.enabled) + int(cfg.store.enabled))
    report: dict[str, Any] = {"run_dir": str(run_dir), "config": cfg.model_dump(mode="json")}
    lookback, horizon, embargo = cfg.model.lookback, cfg.labels.horizon, cfg.embargo

    with progress.stage("load", f"Loading and validating bars from {data_path}"):
        universe = load_universe_data(cfg, data_path)
        many = len(universe.symbols) > 1
        if many:
            progress.total = 6 + int(cfg.serve.enabled) + int(cfg.store.enabled)
            annual = resolve_annualisation(cfg, universe.panel.timestamps)
            _describe_universe(universe, annual, progress)
        else:
            market = as_market_data(universe)
            bars, validation, symbol = market.bars, market.validation, market.symbol
            if validation.issues:
                progress.note(f"validation ({cfg.data.policy}): {len(validation.errors())} error(s), "
                              f"{len(validation.warnings())} warning(s); see report.json data.validation")
            annual = resolve_annualisation(cfg, bars[TIMESTAMP])
            progress.note(f"{symbol}: {len(bars)} bars {bars[TIMESTAMP].iloc[0]} -> {bars[TIMESTAMP].iloc[-1]}, "
                          f"{annual}")
    if many:
        return _run_universe(cfg, universe, annual, run_dir, progress, report)

    with ray_session(cfg):
        with progress.stage("features", "Ray Data: causal features + labels per symbol"):
            prepared = prepare_data(cfg, market)
            pre, split = prepared.features, prepared.split
            windows = prepared.windows(lookback)
            progress.note(f"{len(pre.feature_columns)} features; rows train/val/test = "
                          f"{len(split.train)}/{len(split.val)}/{len(split.test)}; embargo {embargo} bars; "
                          f"windows {len(windows['train'])}/{len(windows['val'])}/{len(windows['test'])}")
        if cfg.store.enabled:
            with progress.stage("store", f"Redis online store: latest windows to {cfg.store.url}"):
                report["store"] = publish_latest_windows(pre, bars, cfg.features, cfg.model.lookback, cfg.store)
                progress.note(f"{len(report['store']['keys'])} window(s), feature set {report['store']['version']}")
        report["data"] = {
            **data_summary(market, prepared), **annual.report(),
            "warmup_rows_dropped": pre.warmup_dropped[symbol],
            "unlabelled_tail_rows_dropped": len(pre.frame) - len(prepared.labelled),
            "lookback": lookback, "horizon": horizon, "validation": validation.to_dict(),
        }

        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        run_ids: dict[str, str] = {}
        with progress.stage("train", f"Ray Train: {cfg.model.name} forecaster, up to {cfg.train.epochs} epochs, "
                                     f"{cfg.train.num_workers} worker(s), use_gpu={cfg.train.use_gpu}"):
            forecaster = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, report["data"])
            version = forecaster.version
            report["forecaster_metrics"] = forecaster.report()
            run_ids["forecaster"] = forecaster.run_id
            report["model_versions"] = {"forecaster": version}

        with progress.stage("agents", f"Agents {', '.join(cfg.rl.agents)} in parallel on Ray "
                                      f"({cfg.rl.iterations} x {cfg.rl.train_batch_size} env steps each), "
                                      f"then the test-split backtest after {cfg.backtest.cost_bps:g} bps costs"):
            rl = rl_stage(cfg, prepared, bars, forecaster.bundle, run_dir, tracking_uri, progress,
                          {"forecaster_version": version, "data_sha256": report["data"]["sha256"]}, annual,
                          forecaster_history=forecaster.outcome.history)
            report.update(strategies=rl["strategies"], backtest=rl["backtest"], rl_metrics=rl["rl_metrics"],
                          figures=rl["figures"])
            report["forecaster_metrics"]["test_confusion"] = rl["forecaster_confusion"]
            report["model_versions"].update(rl["model_versions"])
            run_ids.update(rl["mlflow_run_ids"])
            agent_models = rl["agent_models"]

        report["mlflow_run_ids"] = run_ids
        report["mlflow"] = {"tracking_uri": tracking_uri, "forecaster_model": cfg.tracking.forecaster_model,
                            "agent_models": agent_models, "alias": cfg.tracking.alias}
        if cfg.serve.enabled:
            with progress.stage("serve", f"Ray Serve: deploying {cfg.serve.config} and posting requests"):
                report["serve"] = _serve_and_query(cfg, bars, windows["test"], tracking_uri,
                                                   report["backtest"]["serve_weights"], progress)
        with progress.stage("report", "Writing report"):
            report["timings_s"] = progress.timings
            path = run_dir / "report.json"
            path.write_text(json.dumps(report, indent=2, default=str))
            tracking.log_artifact_to_run(tracking_uri, run_ids["backtest"], path)
            page = write_html_report(report, report["figures"], run_dir / "report.html")
            tracking.log_artifact_to_run(tracking_uri, run_ids["backtest"], page)
            progress.note(f"report: {path}")
            progress.note(f"HTML report with figures: {page} (raytrade report {run_dir})")
            progress.note(f"MLflow: {tracking_uri} (mlflow ui --backend-store-uri {tracking_uri})")
        return report


def _describe_universe(universe: Universe, annual: Any, progress: Progress) -> None:
    validation, panel = universe.validation, universe.panel
    if validation.issues:
        progress.note(f"validation ({validation.policy}): {len(validation.errors())} error(s), "
                      f"{len(validation.warnings())} warning(s); see report.json data.validation")
    for symbol, reason in universe.excluded.items():
        progress.note(f"excluded {symbol} (data.symbol_policy exclude): {reason}")
    progress.note(f"universe of {len(universe.symbols)} symbols ({', '.join(universe.symbols[:8])}"
                  f"{', ...' if len(universe.symbols) > 8 else ''}): {len(universe.bars)} bars on a union calendar of "
                  f"{len(panel.timestamps)} bars {panel.timestamps[0]} -> {panel.timestamps[-1]}, {annual}")


def _run_universe(cfg: PipelineConfig, universe: Universe, annual: Any, run_dir: Path, progress: Progress,
                  report: dict[str, Any]) -> dict[str, Any]:
    """The pipeline on a universe of several symbols: Ray Data features per symbol then across the universe, one
    pooled forecaster trained on every symbol's windows (Ray Train), the portfolio agents trained on the portfolio
    env (:mod:`raytrade.stages.portfolio_agents`), the portfolio backtest of the baselines, the forecaster as a
    cross-sectional strategy, the agents and their ensembles through the risk layer
    (:mod:`raytrade.stages.portfolio`), every symbol's latest window in the online store (``store.enabled``), and
    ``POST /portfolio`` on Ray Serve."""
    from raytrade import tracking

    validation = universe.validation
    lookback, horizon, embargo = cfg.model.lookback, cfg.labels.horizon, cfg.embargo
    with ray_session(cfg):
        with progress.stage("features", "Ray Data: causal features per symbol in parallel, then cross-sectional "
                                        "features across the universe; labels; split on one calendar"):
            prepared = prepare_data(cfg, universe)
            pre, split = prepared.features, prepared.split
            windows = prepared.windows(lookback)
            n_xs = sum(c.startswith("xs_") for c in pre.feature_columns)
            progress.note(f"{len(pre.feature_columns)} features ({n_xs} cross-sectional); rows train/val/test = "
                          f"{len(split.train)}/{len(split.val)}/"
                          f"{len(split.test)}; embargo {embargo} bars; pooled windows {len(windows['train'])}/"
                          f"{len(windows['val'])}/{len(windows['test'])}")
        if cfg.store.enabled:
            with progress.stage("store", f"Redis online store: every symbol's latest window to {cfg.store.url}"):
                report["store"] = publish_latest_windows(pre, universe.bars, cfg.features, lookback, cfg.store,
                                                         min_bars=cfg.portfolio.turbulence_window + 2)
                progress.note(f"{len(report['store']['keys'])} window(s), feature set {report['store']['version']}; "
                              'POST /portfolio {"symbols": [...]} reads them')
        report["data"] = {
            **data_summary(universe, prepared), **annual.report(),
            "warmup_rows_dropped": pre.warmup_dropped,
            "unlabelled_tail_rows_dropped": len(pre.frame) - len(prepared.labelled),
            "lookback": lookback, "horizon": horizon, "validation": validation.to_dict(),
        }
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with progress.stage("train", f"Ray Train: one {cfg.model.name} forecaster on the windows of every symbol, "
                                     f"up to {cfg.train.epochs} epochs, {cfg.train.num_workers} worker(s), "
                                     f"use_gpu={cfg.train.use_gpu}"):
            forecaster = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, report["data"])
            report["forecaster_metrics"] = forecaster.report()
            report["model_versions"] = {"forecaster": forecaster.version}
        with progress.stage("agents", f"Portfolio agents {', '.join(cfg.rl.agents)} in parallel on Ray "
                                      f"({cfg.rl.iterations} x {cfg.rl.train_batch_size} env steps each) on the "
                                      f"{len(universe.symbols)}-asset portfolio env"):
            agents = portfolio_agents_stage(cfg, universe, prepared, forecaster, run_dir, tracking_uri, progress,
                                            {"forecaster_version": forecaster.version,
                                             "data_sha256": report["data"]["sha256"]}, annual)
        with progress.stage("portfolio", f"Portfolio backtest of {len(universe.symbols)} symbols on the test split "
                                         f"after {cfg.backtest.cost_bps:g} bps costs: baselines, the forecaster, "
                                         f"the agents and their ensembles through the risk layer"):
            bt = portfolio_stage(cfg, universe, prepared, forecaster, annual, run_dir, tracking_uri, progress, agents)
        report.update(strategies=bt["strategies"], backtest=bt["backtest"], figures=bt["figures"],
                      rl_metrics=agents.rl_metrics)
        report["model_versions"].update(agents.model_versions)
        report["forecaster_metrics"]["cross_sectional"] = bt["cross_sectional"]
        report["mlflow_run_ids"] = {"forecaster": forecaster.run_id, **agents.mlflow_run_ids, **bt["mlflow_run_ids"]}
        report["mlflow"] = {"tracking_uri": tracking_uri, "forecaster_model": cfg.tracking.forecaster_model,
                            "agent_models": agents.agent_models, "alias": cfg.tracking.alias}
        if cfg.serve.enabled:
            with progress.stage("serve", "Ray Serve: deploying the portfolio app and posting POST /portfolio"):
                report["serve"] = _serve_portfolio(cfg, universe, prepared, forecaster, bt, tracking_uri, progress,
                                                   agents)
        with progress.stage("report", "Writing report"):
            report["timings_s"] = progress.timings
            path = run_dir / "report.json"
            path.write_text(json.dumps(report, indent=2, default=str))
            tracking.log_artifact_to_run(tracking_uri, report["mlflow_run_ids"]["backtest"], path)
            page = write_html_report(report, report["figures"], run_dir / "report.html")
            tracking.log_artifact_to_run(tracking_uri, report["mlflow_run_ids"]["backtest"], page)
            progress.note(f"report: {path}")
            progress.note(f"HTML report with figures: {page} (raytrade report {run_dir})")
        return report


def portfolio_payload(bars: pd.DataFrame, end: pd.Timestamp, n_bars: int, weights: dict[str, float] | None = None,
                      drawdown: float = 0.0) -> dict[str, Any]:
    """A ``POST /portfolio`` body: the last ``n_bars`` bars of every symbol up to ``end`` (inclusive), the weights
    held and the book's drawdown (fraction)."""
    upto = bars[bars[TIMESTAMP] <= end]
    return {"bars": {str(symbol): [{"timestamp": r.timestamp.isoformat(), "open": r.open, "high": r.high,
                                    "low": r.low, "close": r.close, "volume": r.volume}
                                   for r in rows.tail(n_bars).itertuples()]
                     for symbol, rows in upto.groupby(SYMBOL, sort=False)},
            "weights": dict(weights or {}), "drawdown": drawdown}


def _serve_portfolio(cfg: PipelineConfig, universe: Universe, prepared: Any, forecaster: Any, bt: dict[str, Any],
                     tracking_uri: str, progress: Progress, agents: Any = None) -> dict[str, Any]:
    """Deploy the portfolio app with this run's forecaster and portfolio agents (pinned to their versions) and risk
    parameters, post ``serve.n_requests`` requests for the last test bars (each with the weights the previous
    answer gave), and shut the app down when ``serve.shutdown``."""
    import httpx
    from ray import serve

    from raytrade.serving.deploy import deploy_portfolio
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME
    from raytrade.serving.portfolio_steps import PortfolioParams, min_bars
    from raytrade.serving.steps import forecaster_spec

    params = PortfolioParams.from_run(cfg, bt["backtest"], prepared.features.reference_symbol, forecaster.version,
                                      None if agents is None else agents.model_versions)
    url = deploy_portfolio(cfg, tracking_uri, params, agent_models=None if agents is None else agents.agent_models)
    out: dict[str, Any] = {"url": url, "params": params.model_dump(mode="json"), "responses": []}
    try:
        n_bars = max(min_bars(forecaster_spec(forecaster.bundle, forecaster.version)),
                     cfg.portfolio.turbulence_window + 2) + 16
        ends = pd.DatetimeIndex(universe.panel.timestamps)
        ends = ends[(ends >= pd.Timestamp(bt["backtest"]["first_bar"]))
                    & (ends <= pd.Timestamp(bt["backtest"]["last_bar"]))][-cfg.serve.n_requests:]
        with httpx.Client(base_url=url, timeout=120) as client:
            out["health"] = client.get("/health").json()
            weights: dict[str, float] = {}
            for end in ends if cfg.serve.n_requests else []:
                started = time.perf_counter()
                resp = client.post("/portfolio", json=portfolio_payload(universe.bars, end, n_bars, weights))
                resp.raise_for_status()
                body = resp.json()
                body["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
                out["responses"].append(body)
                weights = body["weights"]
        if out["responses"]:
            last = out["responses"][-1]
            progress.note(f"POST /portfolio at {last['timestamp']}: gross {last['gross_exposure']:.2f}, weights "
                          + ", ".join(f"{s} {w:.2f}" for s, w in last["weights"].items() if abs(w) > 1e-9)
                          + f" ({last['latency_ms']} ms)")
            for name, w in last["agents"].items():
                progress.note(f"  agent {name}: gross {sum(abs(x) for x in w.values()):.2f}, largest "
                              + ", ".join(f"{s} {x:.2f}" for s, x in sorted(w.items(), key=lambda kv: -abs(kv[1]))[:3]))
    finally:
        if cfg.serve.shutdown:
            serve.delete(PORTFOLIO_APP_NAME)
    return out


def request_payload(bars: pd.DataFrame, end: pd.Timestamp, n_bars: int, position: float = 0.0) -> dict[str, Any]:
    """A ``POST /predict`` body from the ``n_bars`` bars of ONE symbol ending at ``end`` (inclusive)."""
    upto = bars[bars[TIMESTAMP] <= end].tail(n_bars)
    return {
        "symbol": str(upto[SYMBOL].iloc[-1]),
        "bars": [{"timestamp": r.timestamp.isoformat(), "open": r.open, "high": r.high, "low": r.low,
                  "close": r.close, "volume": r.volume} for r in upto.itertuples()],
        "position": position,
    }


def _serve_and_query(cfg: PipelineConfig, bars: pd.DataFrame, test_w: Windows, tracking_uri: str,
                     weights: dict[str, float], progress: Progress) -> dict[str, Any]:
    import httpx
    from ray import serve

    from raytrade.features.technical import warmup_bars

    url = deploy_ensemble(cfg, tracking_uri, weights)
    out: dict[str, Any] = {"url": url, "responses": []}
    try:
        n_bars = warmup_bars(cfg.features) + cfg.model.lookback + 16
        ends = [pd.Timestamp(t) for t in test_w.timestamp[-cfg.serve.n_requests:]] if cfg.serve.n_requests else []
        with httpx.Client(base_url=url, timeout=60) as client:
            out["health"] = client.get("/health").json()
            out["models"] = client.get("/models").json()
            position = 0.0
            for end in ends:
                started = time.perf_counter()
                resp = client.post("/predict", json=request_payload(bars, end, n_bars, position))
                resp.raise_for_status()
                body = resp.json()
                body["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
                out["responses"].append(body)
                position = body["target_position"]
        if out["responses"]:
            progress.note("last response: " + json.dumps(out["responses"][-1]))
    finally:
        if cfg.serve.shutdown:
            serve.shutdown()
    return out
