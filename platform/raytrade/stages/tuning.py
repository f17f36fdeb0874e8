"""Stage ``raytrade tune``: Ray Tune (Optuna + ASHA) over the forecaster, retrain the best configuration,
register it, and move the ``champion`` alias to it only if it beats the current champion on validation.

The comparison is fair across architectures, lookbacks and scalers: both models are scored by
cross-entropy (nats) of their class probabilities on the SAME validation bars (those where both
have a full window), each through its own scaler and lookback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.dataset.prepare import load_market_data, prepare_data
from raytrade.dataset.windows import make_windows
from raytrade.errors import ModelNotFoundError
from raytrade.evaluation.forecast import log_loss
from raytrade.models.bundle import ForecasterBundle
from raytrade.runtime import Progress, ray_session
from raytrade.stages.common import data_summary, new_run_dir, train_forecaster


def validation_nll(bundles: dict[str, ForecasterBundle], val: pd.DataFrame) -> dict[str, float]:
    """Cross-entropy (nats, :func:`~raytrade.evaluation.forecast.log_loss`) of each bundle's class
    probabilities on the labelled validation bars that every bundle has a full window for. ``val`` holds
    UNSCALED feature rows with ``label_class``; each bundle applies its own scaler and lookback.

    A bundle whose feature columns are missing from ``val`` scores ``inf`` (it cannot be evaluated).
    """
    scored = {}
    for name, bundle in bundles.items():
        if all(c in val.columns for c in bundle.scaler.columns):
            w = make_windows(bundle.scaler.transform(val), bundle.scaler.columns, bundle.lookback)
            keep = w.y_class >= 0
            scored[name] = (w.timestamp[keep], bundle.forecast_windows(w.x[keep])["probs"], w.y_class[keep])
    common = set.intersection(*(set(ts) for ts, _, _ in scored.values())) if scored else set()
    out = {name: float("inf") for name in bundles}
    for name, (ts, probs, y) in scored.items():
        rows = np.isin(ts, list(common))
        if rows.any():
            out[name] = log_loss(probs[rows], y[rows])
    return out


def run_tune(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """``raytrade tune``: search, retrain best, register, champion decision; writes ``<run dir>/tune.json``
    and ``trials.csv``.

    Raises:
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    from raytrade import tracking
    from raytrade.training.search import apply_trial, run_search, trial_cpus

    progress = Progress(total=4)
    run_dir = new_run_dir(cfg, "tune")
    tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
    with progress.stage("load", "Loading and validating bars"):
        market = load_market_data(cfg, data_path)
    with ray_session(cfg):
        with progress.stage("features", "Ray Data: causal features + labels; split; scaler"):
            # the embargo must cover the LONGEST lookback searched
            embargo = max(cfg.embargo, cfg.labels.horizon + max(cfg.tune.lookback))
            prepared = prepare_data(cfg, market, embargo=embargo,
                                    min_rows=max(cfg.tune.lookback) + cfg.rl.window + 1)
            data_info = data_summary(market, prepared)
        with progress.stage("search", f"Ray Tune: {cfg.tune.num_samples} trials (Optuna TPE + ASHA), "
                                      f"up to {cfg.tune.max_epochs} epochs each, metric {cfg.tune.metric}"):
            import ray

            cpus, note = trial_cpus(cfg, ray.cluster_resources().get("CPU", 1.0))
            if note:
                progress.note(note)
            callback = tracking.tune_logger_callback(tracking_uri, cfg.tracking.experiment,
                                                     tags={"raytrade.stage": "tune", "raytrade.run": run_dir.name})
            grid = run_search(cfg, prepared.scaled, prepared.feature_columns, prepared.scaler,
                              run_dir / "ray_tune", callbacks=[callback], cpus_per_trial=cpus)
            trials = grid.get_dataframe()
            trials.to_csv(run_dir / "trials.csv", index=False)
            errors = [str(r.error) for r in grid if r.error]
            best = grid.get_best_result()
            best_params = {k: best.config[k] for k in sorted(best.config)}
            progress.note(f"{len(trials)} trials ({len(errors)} failed); best {cfg.tune.metric} "
                          f"{best.metrics[cfg.tune.metric]:.4f} with {best_params}")
        best_cfg = apply_trial(cfg, best_params)
        with progress.stage("retrain", "Retrain the best configuration, register, compare with the champion"):
            run = train_forecaster(best_cfg, prepared, run_dir, tracking_uri, progress, data_info, alias="")
            name, alias = cfg.tracking.forecaster_model, cfg.tracking.alias
            contenders = {"candidate": run.bundle}  # registered without the alias: never the champion itself
            try:
                contenders["champion"], champion_version, _ = tracking.load_model_dir(name, alias, tracking_uri)
            except ModelNotFoundError:
                champion_version = None
            scores = validation_nll(contenders, prepared.split.val)
            promoted = champion_version is None or scores["candidate"] < scores["champion"]
            if promoted:
                tracking.set_alias(tracking_uri, name, alias, run.version)
            verdict = (f"version {run.version} val_nll {scores['candidate']:.4f} vs champion "
                       + (f"v{champion_version} {scores['champion']:.4f}" if champion_version else "(none)")
                       + (f": promoted to {name}@{alias}" if promoted else f": {name}@{alias} unchanged"))
            progress.note(verdict)
    report = {
        "run_dir": str(run_dir), "data": data_info, "best_config": best_params,
        "best_trial_metrics": {k: best.metrics.get(k) for k in ("epoch", "val_loss", "val_nll", "val_accuracy",
                                                                 "val_macro_f1", "val_ic")},
        "n_trials": len(trials), "failed_trials": errors,
        "candidate": {"version": run.version, "run_id": run.run_id, "val_nll": scores["candidate"],
                      "test_metrics": run.test_metrics},
        "champion_before": {"version": champion_version, "val_nll": scores.get("champion")},
        "promoted": promoted, "verdict": verdict, "tracking_uri": tracking_uri, "timings_s": progress.timings,
    }
    (run_dir / "tune.json").write_text(json.dumps(report, indent=2, default=str))
    progress.note(f"report: {run_dir / 'tune.json'}; trials: {run_dir / 'trials.csv'}")
    return report
