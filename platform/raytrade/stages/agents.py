"""The agents stage: the forecaster for the observation (the registered champion, or one trained now), the
agents trained in parallel on Ray and registered, then every strategy backtested on the test split.

Used by ``raytrade pipeline`` (:func:`rl_stage`) and by ``raytrade agents`` / ``jobs/train_agents.py``
(:func:`run_agents`):

1. :func:`raytrade.rl.env_inputs.agent_data`: the env inputs of every split from the forecaster's outputs.
2. :func:`raytrade.stages.common.train_and_register`: :func:`raytrade.rl.agents.train_agents` (one Ray task per
   agent), one MLflow run per agent with its per-iteration metrics, each policy registered as
   ``<agent_model_prefix>-<name>``.
3. :func:`raytrade.rl.strategies.backtest_strategies`: buy-and-hold, the forecaster signal, each agent and the
   ensembles through the risk layer, after costs; recorded by :func:`raytrade.stages.common.record_backtest`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.dataset.prepare import PreparedData
from raytrade.evaluation.metrics import Annualisation
from raytrade.models.bundle import ForecasterBundle
from raytrade.rl.env_inputs import agent_data, bundle_windows
from raytrade.rl.strategies import backtest_strategies
from raytrade.runtime import Progress
from raytrade.stages.common import (
    load_and_prepare,
    new_run_dir,
    record_backtest,
    require_same_train_split,
    resolve_annualisation,
    train_and_register,
    train_forecaster,
)


def rl_stage(cfg: PipelineConfig, prepared: PreparedData, bars: pd.DataFrame, bundle: ForecasterBundle,
             run_dir: Path, tracking_uri: str, progress: Progress, info: dict[str, Any], annual: Annualisation,
             forecaster_history: pd.DataFrame | None = None) -> dict[str, Any]:
    """Env inputs, agents trained in parallel and registered, every strategy backtested on TEST, the figures.

    ``annual``: the bars per year every annualised metric uses (:func:`raytrade.stages.common.resolve_annualisation`);
    the ``backtest`` block reports it. Returns the report blocks: ``strategies``, ``rl_metrics``, ``backtest``,
    ``model_versions``, ``mlflow_run_ids`` (agents and the backtest run), ``agent_models``, ``figures`` (name -> PNG in
    ``run_dir/figures``, also MLflow artifacts of the backtest run), ``forecaster_confusion`` (test split) and,
    for callers, ``results``. ``forecaster_history`` (one row per epoch) adds the forecaster's curves.
    """
    periods_per_year = annual.periods_per_year
    windows = bundle_windows(prepared, bundle)
    data = agent_data(cfg, prepared, bars, bundle, windows)
    n_inputs = data.arrays["train"]["forecasts"].shape[1]
    progress.note(f"observation: {cfg.rl.window} bars x {len(data.feature_names)} features + {n_inputs} forecaster "
                  f"inputs ({', '.join(cfg.rl.forecast_inputs)}) + position, unrealised P&L, drawdown; "
                  f"reward {cfg.rl.reward}; fills {cfg.rl.fill}")
    agents, versions, run_ids = train_and_register(cfg, data, run_dir, tracking_uri, progress, info,
                                                   periods_per_year)
    bt = backtest_strategies(cfg, data, {n: o.policy for n, o in agents.items()},
                             {n: o.summary()["val_sharpe"] for n, o in agents.items()}, periods_per_year, agents)
    recorded = record_backtest(cfg, bt, windows, data, run_dir, tracking_uri, progress, annual,
                               forecaster_history, {name: o.history for name, o in agents.items()})
    return {**recorded, "rl_metrics": {name: o.summary() for name, o in agents.items()}, "model_versions": versions,
            "mlflow_run_ids": {**run_ids, "backtest": recorded["mlflow_run_ids"]["backtest"]},
            "agent_models": {name: cfg.tracking.agent_model(name) for name in agents}}


def champion_or_new_forecaster(cfg: PipelineConfig, prepared: PreparedData, run_dir: Path, tracking_uri: str,
                               progress: Progress, info: dict[str, Any]) -> tuple[ForecasterBundle, str]:
    """The registered ``tracking.forecaster_model@alias`` if it was trained on these feature columns;
    otherwise a forecaster trained now (and registered) with ``model``/``train``. Returns (bundle, version).

    Raises:
        ConfigError: the registered forecaster has these feature columns but was trained on another train split
            (other or longer data): its outputs on this config's val/test bars could be in-sample, so the agents
            would be selected and backtested with look-ahead. The check and the one-line error are those of
            ``raytrade backtest`` (:func:`raytrade.stages.common.require_same_train_split`).
    """
    from raytrade import tracking
    from raytrade.errors import ModelNotFoundError

    try:
        bundle, version, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, tracking_uri)
        if list(bundle.scaler.columns) == prepared.feature_columns:
            require_same_train_split(cfg, bundle, version, prepared)
            progress.note(f"forecaster: {cfg.tracking.forecaster_model}@{cfg.tracking.alias} (version {version})")
            return bundle, version
        progress.note(f"{cfg.tracking.forecaster_model}@{cfg.tracking.alias} uses other feature columns; training one")
    except ModelNotFoundError:
        progress.note(f"no {cfg.tracking.forecaster_model}@{cfg.tracking.alias} registered; training a forecaster")
    run = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, info)
    return run.bundle, run.version


def run_agents(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """``raytrade agents`` / ``jobs/train_agents.py``: bars -> features -> forecaster (the registered champion,
    or a new one) -> ``rl.agents`` trained in parallel on Ray -> ensemble backtest; writes ``<run dir>/agents.json``.

    Raises:
        ConfigError: the registered forecaster was trained on another train split (see
            :func:`champion_or_new_forecaster`).
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    from raytrade import tracking
    from raytrade.evaluation.html_report import write_html_report
    from raytrade.runtime import ray_session

    progress = Progress(total=4)
    run_dir = new_run_dir(cfg, "agents")
    with ray_session(cfg):
        market, prepared, info = load_and_prepare(cfg, data_path, progress)
        annual = resolve_annualisation(cfg, market.bars[TIMESTAMP])
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with progress.stage("forecaster", "Forecaster for the agents' observation"):
            bundle, version = champion_or_new_forecaster(cfg, prepared, run_dir, tracking_uri, progress, info)
        with progress.stage("agents", f"Agents {', '.join(cfg.rl.agents)} in parallel on Ray, "
                                      f"{cfg.rl.iterations} x {cfg.rl.train_batch_size} env steps each; backtest"):
            rl = rl_stage(cfg, prepared, market.bars, bundle, run_dir, tracking_uri, progress,
                          {"forecaster_version": version, "data_sha256": info["sha256"]}, annual)
    report = {"run_dir": str(run_dir), "data": info, "forecaster_version": version,
              **{k: v for k, v in rl.items() if k != "results"},
              "mlflow": {"tracking_uri": tracking_uri, "agent_models": rl["agent_models"]},
              "timings_s": progress.timings, "config": cfg.model_dump(mode="json")}
    (run_dir / "agents.json").write_text(json.dumps(report, indent=2, default=str))
    page = write_html_report(report, rl["figures"], run_dir / "report.html", title=f"raytrade agents {run_dir.name}")
    tracking.log_artifact_to_run(tracking_uri, rl["mlflow_run_ids"]["backtest"], page)
    progress.note(f"report: {run_dir / 'agents.json'}; HTML: {page}")
    return report
