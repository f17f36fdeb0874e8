"""The backtest stage on its own: the REGISTERED models (no training) on the test split, after costs.

``raytrade backtest`` / ``jobs/backtest.py``: bars -> features -> ``tracking.forecaster_model@alias`` and
``<agent_model_prefix>-<agent>@alias`` for every ``rl.agents`` from the MLflow registry -> buy-and-hold, the
forecaster signal, each agent and the ensembles through the risk layer -> ``<run dir>/backtest.json``, the
figures and ``report.html``. The ensembles' prior is each agent's Sharpe on the validation split, measured
here. ``rolling_retrain`` is left out: it retrains the agents window by window, which needs their training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.errors import ModelNotFoundError
from raytrade.runtime import Progress


def run_backtest(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """Backtest the registered champion forecaster and agents on the test split; writes ``backtest.json``
    and ``report.html`` in a new run directory ``<output_dir>/<name>-backtest-<UTC time>``.

    Returns:
        ``{"run_dir", "data", "strategies", "backtest", "figures", "forecaster_confusion", "model_versions",
        "val_sharpe", "mlflow_run_ids", "mlflow", "timings_s"}``; every strategy metric on the TEST split,
        after ``backtest.cost_bps`` costs.

    Raises:
        ModelNotFoundError: a model is not registered under the alias, or the forecaster was trained on other
            feature columns than this config computes.
        ConfigError: this config's train split ends elsewhere than the one the models were trained on (so its
            test split could hold bars they were trained or selected on).
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    from raytrade import tracking
    from raytrade.evaluation.html_report import write_html_report
    from raytrade.rl.ensemble import sharpe_or_zero
    from raytrade.rl.env_inputs import agent_data, bundle_windows, env_kwargs
    from raytrade.rl.strategies import backtest_strategies
    from raytrade.runtime import ray_session
    from raytrade.stages.common import (
        load_and_prepare,
        new_run_dir,
        record_backtest,
        require_same_train_split,
        resolve_annualisation,
    )
    from raytrade_envs import TradingEnv

    progress = Progress(total=4)
    run_dir = new_run_dir(cfg, "backtest")
    alias = cfg.tracking.alias
    with ray_session(cfg):
        market, prepared, info = load_and_prepare(cfg, data_path, progress)
    annual = resolve_annualisation(cfg, market.bars[TIMESTAMP])
    ppy = annual.periods_per_year
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
    with progress.stage("models", f"Registered models @{alias} from {tracking_uri}"):
        bundle, fc_version, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, alias, tracking_uri)
        if list(bundle.scaler.columns) != prepared.feature_columns:
            raise ModelNotFoundError(
                f"{cfg.tracking.forecaster_model}@{alias} (version {fc_version}) was trained on other feature "
                f"columns than this config's features section computes; train one with it (raytrade train)")
        # another train split means other val/test splits: the "test" bars could be ones the models were
        # trained or selected on (look-ahead), so refuse rather than report a leaky backtest
        require_same_train_split(cfg, bundle, fc_version, prepared)
        versions, policies = {"forecaster": fc_version}, {}
        for agent in cfg.rl.agents:
            policies[agent], versions[agent], _ = tracking.load_model_dir(cfg.tracking.agent_model(agent), alias,
                                                                          tracking_uri)
        progress.note(", ".join(f"{name} v{v}" for name, v in versions.items()))
    with progress.stage("backtest", f"Backtest on the test split after {cfg.backtest.cost_bps:g} bps costs"):
        windows = bundle_windows(prepared, bundle)
        data = agent_data(cfg, prepared, market.bars, bundle, windows)
        val_env = env_kwargs(cfg, data.arrays["val"], train=False)
        prior = {name: sharpe_or_zero(policy.evaluate(TradingEnv(**val_env))[1], ppy)
                 for name, policy in policies.items()}
        methods = tuple(m for m in cfg.ensemble.methods if m != "rolling_retrain")
        if len(methods) < len(cfg.ensemble.methods):
            progress.note("ensemble rolling_retrain left out: it retrains the agents (raytrade agents does)")
        cfg = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"methods": methods})})
        bt = backtest_strategies(cfg, data, policies, prior, ppy)
        recorded = record_backtest(cfg, bt, windows, data, run_dir, tracking_uri, progress, annual,
                                   params={"source": "registered models", "alias": alias, "model_versions": versions,
                                           "data_sha256": info["sha256"], "symbol": info["symbol"]})
    report = {"run_dir": str(run_dir), "data": info, **{k: v for k, v in recorded.items() if k != "results"},
              "model_versions": versions, "val_sharpe": prior,
              "mlflow": {"tracking_uri": tracking_uri, "alias": alias}, "timings_s": progress.timings,
              "config": cfg.model_dump(mode="json")}
    (run_dir / "backtest.json").write_text(json.dumps(report, indent=2, default=str))
    page = write_html_report(report, recorded["figures"], run_dir / "report.html",
                             title=f"raytrade backtest {run_dir.name}")
    tracking.log_artifact_to_run(tracking_uri, recorded["mlflow_run_ids"]["backtest"], page)
    progress.note(f"report: {run_dir / 'backtest.json'}; HTML: {page}")
    return report
