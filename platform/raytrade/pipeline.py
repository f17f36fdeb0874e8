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
from raytrade.dataset.prepare import load_market_data, prepare_data
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
        market = load_market_data(cfg, data_path)
        bars, validation, symbol = market.bars, market.validation, market.symbol
        if validation.issues:
            progress.note(f"validation ({cfg.data.policy}): {len(validation.errors())} error(s), "
                          f"{len(validation.warnings())} warning(s); see report.json data.validation")
        annual = resolve_annualisation(cfg, bars[TIMESTAMP])
        progress.note(f"{symbol}: {len(bars)} bars {bars[TIMESTAMP].iloc[0]} -> {bars[TIMESTAMP].iloc[-1]}, "
                      f"{annual}")

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
