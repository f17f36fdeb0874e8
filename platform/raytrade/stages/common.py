"""Helpers every stage shares (the one module stages import from each other): run directories, loading and
preparing the data as progress stages, the data summary and its hash, the bars per year of the data's calendar,
training + registering the forecaster and the agents (one asset's or the portfolio's), the registered models'
loaders and the out-of-sample check on them, and recording a backtest (table, figures, MLflow run).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.data.universe import Universe
from raytrade.dataset.prepare import MarketData, PreparedData, load_market_data, prepare_data
from raytrade.dataset.windows import Windows
from raytrade.errors import ConfigError, InsufficientDataError
from raytrade.evaluation.forecast import forecast_metrics
from raytrade.evaluation.metrics import Annualisation, annualisation
from raytrade.models.bundle import ForecasterBundle
from raytrade.rl.agents import AgentOutcome, train_agents
from raytrade.rl.env_inputs import AgentData, env_kwargs
from raytrade.rl.strategies import backtest_report, retrain_plan
from raytrade.runtime import Progress

FORECASTER_LOADER = "raytrade.models.bundle:load_bundle"
POLICY_LOADER = "raytrade.rl.policy:load_policy"


@dataclass
class ForecasterRun:
    """A trained, scored and registered forecaster.

    Attributes:
        bundle: the best epoch's bundle; outcome: the Ray Train outcome (history, checkpoint path).
        windows: train/val/test windows it was trained and scored on.
        forecasts: per split, ``bundle.forecast_windows`` outputs (``probs``, ``expected_return``).
        test_metrics: :func:`~raytrade.evaluation.forecast.forecast_metrics` on the test split.
        run_id, version: MLflow run and registered model version.
    """

    bundle: ForecasterBundle
    outcome: Any
    windows: dict[str, Windows]
    forecasts: dict[str, dict[str, np.ndarray]]
    test_metrics: dict[str, float]
    run_id: str
    version: str

    def report(self) -> dict[str, Any]:
        return {"test": self.test_metrics, "best_val": self.outcome.best_metrics,
                "epochs": self.outcome.history.to_dict("records"), "class_weights": self.outcome.class_weights,
                "checkpoint": self.outcome.checkpoint_path, "model": self.bundle.model_name}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (or of the sorted files under a directory): the data hash logged with every run."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def new_run_dir(cfg: PipelineConfig, kind: str | None = None) -> Path:
    """``<output_dir>/<name>[-<kind>]-<UTC timestamp>``, created (``kind=None``: the pipeline's run)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (cfg.output_dir / "-".join(filter(None, [cfg.name, kind, stamp]))).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train_storage(cfg: PipelineConfig, run_dir: Path) -> str:
    """Where Ray Train keeps this run's checkpoints: ``<train.storage_path>/<run dir name>`` (storage every node
    reaches: a shared directory or an s3:// / gs:// URI), or ``<run dir>/ray_train`` when none is set."""
    if cfg.train.storage_path is None:
        return str(run_dir / "ray_train")
    return f"{cfg.train.storage_path.rstrip('/')}/{run_dir.name}"


def train_forecaster(cfg: PipelineConfig, prepared: PreparedData, run_dir: Path, tracking_uri: str,
                     progress: Progress, data_info: dict[str, Any], alias: str | None = None) -> ForecasterRun:
    """Train with Ray Train, save the bundle to ``run_dir/forecaster``, log the run and register the model.

    ``alias`` (default ``cfg.tracking.alias``) is moved to the new version; pass ``""`` to register only.
    """
    from raytrade import tracking
    from raytrade.training.trainer import fit_forecaster

    windows = prepared.windows(cfg.model.lookback)
    outcome = fit_forecaster(windows["train"], windows["val"], cfg.model, cfg.train, scaler=prepared.scaler,
                             features=cfg.features, labels=cfg.labels, storage_dir=train_storage(cfg, run_dir),
                             name="forecaster")
    for row in outcome.history.to_dict("records"):
        progress.note("epoch {epoch:.0f}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} val_accuracy "
                      "{val_accuracy:.3f} val_macro_f1 {val_macro_f1:.3f} val_ic {val_ic:.3f} "
                      "({train_samples_per_s:.0f} samples/s)".format(**row))
    if outcome.history["stopped_early"].iloc[-1]:
        progress.note(f"early stop after epoch {int(outcome.history['epoch'].iloc[-1])}; "
                      f"best epoch {int(outcome.best_metrics['epoch'])}")
    bundle = outcome.bundle
    bundle_dir = bundle.save(run_dir / "forecaster")
    forecasts = {name: bundle.forecast_windows(w.x) for name, w in windows.items()}
    test = windows["test"]
    fm = forecast_metrics(forecasts["test"]["probs"], test.y_class, forecasts["test"]["expected_return"],
                          test.y_return)
    progress.note(f"test accuracy {fm['accuracy']:.3f} (majority class {fm['majority_baseline_accuracy']:.3f}), "
                  f"test IC {fm['ic']:.3f}")
    with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-forecaster") as run_id:
        tracking.log_params({"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json"),
                             "features": cfg.features.model_dump(mode="json"),
                             "labels": cfg.labels.model_dump(mode="json"), "embargo": prepared.split.embargo,
                             "data_sha256": data_info.get("sha256"), "symbol": data_info.get("symbol")})
        for row in outcome.history.to_dict("records"):
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics({f"test_{k}": v for k, v in fm.items()})
        tracking.log_metrics({f"best_{k}": v for k, v in outcome.best_metrics.items() if k.startswith("val_")})
        version = tracking.log_model_dir(bundle_dir, FORECASTER_LOADER, cfg.tracking.forecaster_model,
                                         cfg.tracking.alias if alias is None else alias)
    return ForecasterRun(bundle=bundle, outcome=outcome, windows=windows, forecasts=forecasts, test_metrics=fm,
                         run_id=run_id, version=version)


def data_summary(market: MarketData | Universe, prepared: PreparedData) -> dict[str, Any]:
    """The ``data`` block of a report: source, hash, range, split and scaler provenance; for a universe also
    ``symbols`` and :meth:`raytrade.data.universe.Universe.summary` (alignment, per-symbol ranges, exclusions)."""
    bars = market.bars
    parts = prepared.split.parts()
    universe = market if isinstance(market, Universe) else None
    return {
        **(universe.summary() if universe is not None else {}),
        "path": str(market.path), "sha256": file_sha256(Path(market.path)),
        **({"symbol": market.symbol} if universe is None else {}), "bars": len(bars),
        "first_timestamp": bars[TIMESTAMP].min().isoformat(), "last_timestamp": bars[TIMESTAMP].max().isoformat(),
        "feature_columns": prepared.feature_columns, "embargo_bars": prepared.split.embargo,
        "split_rows": {n: len(p) for n, p in parts.items()},
        "split_ranges": {n: [p[TIMESTAMP].min().isoformat(), p[TIMESTAMP].max().isoformat()]
                         for n, p in parts.items()},
        "scaler_fit_rows": prepared.scaler.n_fit_rows, "scaler_fit_end": prepared.scaler.fit_end,
        **({"split_purged_rows": prepared.split.purged, "scaler": "pooled over the universe's train rows"}
           if universe is not None else {}),
    }


def resolve_annualisation(cfg: PipelineConfig, timestamps: Any) -> Annualisation:
    """Bars per year for every annualised metric of a run: ``backtest.periods_per_year`` when set (calendar
    ``"override"``), else derived from the bars' ``timestamps`` with ``backtest.calendar`` (see
    :func:`raytrade.evaluation.metrics.annualisation`). Reports carry :meth:`Annualisation.report`.

    Raises:
        InsufficientDataError: fewer than 2 bars (nothing to derive a calendar from).
        ConfigError: timestamps that are not strictly increasing datetimes (the loader's validation prevents it).
    """
    override = cfg.backtest.periods_per_year
    if override is not None:
        return Annualisation(float(override), "override",
                             f"override: backtest.periods_per_year = {override:g} in the config")
    try:
        return annualisation(timestamps, cfg.backtest.calendar)
    except ValueError as exc:
        kind = InsufficientDataError if len(timestamps) < 2 else ConfigError
        raise kind(f"backtest.calendar {cfg.backtest.calendar}: {exc}") from exc


def require_same_train_split(cfg: PipelineConfig, bundle: ForecasterBundle, version: str,
                             prepared: PreparedData) -> None:
    """Refuse to run a registered forecaster on a split it was not trained on.

    The forecaster's scaler remembers the last timestamp of its training rows (``fit_end``). Another train
    split (other data, a longer ``data.max_bars``, another ``split``) means other val/test splits: their bars
    could be ones the forecaster was trained or selected on (look-ahead), so ``raytrade backtest`` and
    ``raytrade agents`` stop instead of reporting a leaky result.

    Raises:
        ConfigError: ``split: <model>@<alias> (version v) was trained on bars up to <t>, but this config's train
            split ends at <t'>; ...`` (one line).
    """
    if bundle.scaler.fit_end != prepared.scaler.fit_end:
        raise ConfigError(
            f"split: {cfg.tracking.forecaster_model}@{cfg.tracking.alias} (version {version}) was trained on bars "
            f"up to {bundle.scaler.fit_end}, but this config's train split ends at {prepared.scaler.fit_end}; the "
            f"test split would not be out of sample for the registered models. Run with the data, data.max_bars "
            f"and split the models were trained with (or retrain: raytrade pipeline)")


def load_and_prepare(cfg: PipelineConfig, data_path: str | Path | None,
                     progress: Progress) -> tuple[MarketData, PreparedData, dict[str, Any]]:
    """The first two steps of the single-stage commands, as progress stages ``load`` (read + validate the bars)
    and ``features`` (Ray Data features + labels, split with embargo, scaler fitted on train). Call it inside
    a Ray session. Returns ``(market, prepared, data summary)``.

    Raises:
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    with progress.stage("load", "Loading and validating bars"):
        market = load_market_data(cfg, data_path)
        progress.note(f"{market.symbol}: {len(market.bars)} bars")
    with progress.stage("features", "Ray Data: causal features + labels; split; scaler"):
        prepared = prepare_data(cfg, market)
        info = data_summary(market, prepared)
    return market, prepared, info


def record_backtest(cfg: PipelineConfig, bt: dict[str, Any], windows: dict[str, Windows], data: AgentData,
                    run_dir: Path, tracking_uri: str, progress: Progress, annual: Annualisation,
                    forecaster_history: pd.DataFrame | None = None,
                    agent_histories: dict[str, pd.DataFrame] | None = None,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the table and the annualisation used, draw the figures into ``run_dir/figures`` and log both (and
    ``params``) in an MLflow run ``<name>-backtest``. Returns ``strategies``, ``results``, ``backtest`` (with
    ``periods_per_year``, ``calendar`` and ``calendar_detail`` of ``annual``), ``figures``,
    ``forecaster_confusion`` and ``mlflow_run_ids`` (``{"backtest": run id}``)."""
    from sklearn.metrics import confusion_matrix

    from raytrade import tracking
    from raytrade.dataset.labels import CLASS_NAMES
    from raytrade.evaluation.plots import save_run_figures

    print(bt["table"], file=progress.stream, flush=True)
    progress.note(f"annualised with {annual}")
    periods_per_year = annual.periods_per_year
    confusion = confusion_matrix(windows["test"].y_class, data.forecasts["test"]["probs"].argmax(axis=1),
                                 labels=list(range(len(CLASS_NAMES))))
    figures = save_run_figures(run_dir / "figures", bt["results"], bt["timestamps"], periods_per_year,
                               confusion=confusion, class_names=CLASS_NAMES, forecaster_history=forecaster_history,
                               agent_histories=agent_histories,
                               title=f"test split after {cfg.backtest.cost_bps:g} bps costs")
    progress.note(f"figures: {', '.join(figures)} in {run_dir / 'figures'}")
    strategies = {name: r.metrics for name, r in bt["results"].items()}
    # "ensemble": the served ensemble (Sharpe vote + risk layer), the name the report contract uses
    strategies.setdefault("ensemble", strategies.get("ensemble_vote"))
    with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-backtest") as run_id:
        tracking.log_params({"cost_bps": cfg.backtest.cost_bps, **annual.report(), **(params or {})})
        for name, m in strategies.items():
            tracking.log_metrics({f"{name}.{k}": v for k, v in m.items()})
        tracking.log_text(bt["table"], "backtest_table.txt")
        for path in figures.values():
            tracking.log_artifact(path, "figures")
    return {"strategies": strategies, "results": bt["results"],
            "backtest": {**backtest_report(cfg, bt, periods_per_year), **annual.report()},
            "figures": {name: str(path) for name, path in figures.items()},
            "forecaster_confusion": {"classes": list(CLASS_NAMES), "counts": confusion.tolist(),
                                     "rows": "true class", "columns": "predicted class"},
            "mlflow_run_ids": {"backtest": run_id}}


@dataclass
class PortfolioAgents:
    """Trained portfolio agents and their TEST targets.

    Attributes:
        weights: agent -> ``(T, A)`` target weights at the test decision bars ``rows`` (fractions of equity, within
            the exposure limits; where an asset cannot trade the book keeps its units).
        rows: ``(T,)`` the decision bars' rows in the universe's panel.
        val_sharpe: agent -> annualised Sharpe of its kept policy on VAL (the ensembles' prior).
        rl_metrics, model_versions, mlflow_run_ids, agent_models: report blocks, as the one-asset agents stage.
        outcomes: agent -> :class:`raytrade.rl.agents.AgentOutcome`.
    """

    weights: dict[str, np.ndarray]
    rows: np.ndarray
    val_sharpe: dict[str, float]
    rl_metrics: dict[str, Any]
    model_versions: dict[str, str]
    mlflow_run_ids: dict[str, str]
    agent_models: dict[str, str]
    outcomes: dict[str, Any]


def train_and_register(cfg: PipelineConfig, data: AgentData | None, run_dir: Path, tracking_uri: str,
                       progress: Progress, info: dict[str, Any], periods_per_year: float, alias: str | None = None,
                       envs: tuple[dict[str, Any], dict[str, Any], list[str]] | None = None,
                       ) -> tuple[dict[str, AgentOutcome], dict[str, str], dict[str, str]]:
    """Train ``rl.agents`` in parallel on Ray, log one MLflow run each and register each policy.

    ``data``: one asset's env inputs (train/val env keyword arguments from it, and ``rolling_retrain``'s plan); or
    ``envs = (train env kwargs, val env kwargs, observation feature names)`` given directly (the portfolio env of a
    universe run, :mod:`raytrade.rl.portfolio_inputs`; no retraining plan).

    Returns ``(outcomes, {agent: registered version}, {agent: MLflow run id})``. ``alias`` (default
    ``tracking.alias``) is moved to every new version; ``""`` registers without an alias.
    """
    from raytrade import tracking

    plan = None
    if envs is not None:
        train_env, val_env, feature_names = envs
    else:
        if data is None:
            raise ValueError("train_and_register needs one asset's data or the envs")
        train_env = env_kwargs(cfg, data.arrays["train"], train=True)
        val_env = env_kwargs(cfg, data.arrays["val"], train=False)
        feature_names = data.feature_names
        plan = retrain_plan(cfg, data)
    if plan is not None:
        progress.note(f"rolling_retrain: each agent then trains {plan.iterations} more iteration(s) before each "
                      f"of {len(plan.ends)} test windows of {cfg.ensemble.window_bars} bars")
    outcomes = train_agents(cfg.rl.agents, cfg.rl, train_env, val_env, periods_per_year, feature_names,
                            run_dir / "agents", on_done=lambda o: progress.note(
                                f"{o.name}: best iteration {o.best_iteration}, val Sharpe "
                                f"{o.summary()['val_sharpe']:.2f}, {o.summary()['train_seconds']:.0f} s"),
                            on_log=progress.note, retrain=plan)
    versions, run_ids = {}, {}
    for name, outcome in outcomes.items():
        with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-{name}") as run_id:
            tracking.log_params({"agent": name, "backend": outcome.backend, "algorithm": outcome.algorithm,
                                 "rl": cfg.rl.model_dump(mode="json"), "cost_bps": cfg.backtest.cost_bps, **info})
            for row in outcome.history.to_dict("records"):
                tracking.log_metrics({k: float(v) for k, v in row.items() if k != "iteration"},
                                     step=int(row["iteration"]))
            tracking.log_metrics({"best_iteration": outcome.best_iteration,
                                  "best_val_sharpe": outcome.summary()["val_sharpe"]})
            versions[name] = tracking.log_model_dir(run_dir / "agents" / name / "policy", POLICY_LOADER,
                                                    cfg.tracking.agent_model(name),
                                                    cfg.tracking.alias if alias is None else alias)
        run_ids[name] = run_id
    return outcomes, versions, run_ids
