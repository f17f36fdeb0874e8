"""Stage: train the forecaster with Ray Train, score it on the test split, track and register it in MLflow.

:func:`train_forecaster` is the step shared by ``raytrade pipeline`` and ``raytrade train``;
:func:`run_train` is the whole ``raytrade train`` stage (load, features, train, register, ``train.json``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from raytrade.config import PipelineConfig
from raytrade.data.prepare import MarketData, PreparedData, load_market_data, prepare_data
from raytrade.data.schema import TIMESTAMP
from raytrade.data.windows import Windows
from raytrade.evaluation.forecast import forecast_metrics
from raytrade.models.bundle import ForecasterBundle
from raytrade.runtime import Progress, ray_session

FORECASTER_LOADER = "raytrade.models.bundle:load_bundle"


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


def train_forecaster(cfg: PipelineConfig, prepared: PreparedData, run_dir: Path, tracking_uri: str,
                     progress: Progress, data_info: dict[str, Any], alias: str | None = None) -> ForecasterRun:
    """Train with Ray Train, save the bundle to ``run_dir/forecaster``, log the run and register the model.

    ``alias`` (default ``cfg.tracking.alias``) is moved to the new version; pass ``""`` to register only.
    """
    from raytrade import tracking
    from raytrade.training.trainer import fit_forecaster

    windows = prepared.windows(cfg.model.lookback)
    outcome = fit_forecaster(windows["train"], windows["val"], cfg.model, cfg.train, scaler=prepared.scaler,
                             features=cfg.features, labels=cfg.labels, storage_dir=run_dir / "ray_train",
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


def data_summary(market: MarketData, prepared: PreparedData) -> dict[str, Any]:
    """The ``data`` block of a report: source, hash, range, split and scaler provenance."""
    bars = market.bars
    parts = prepared.split.parts()
    return {
        "path": str(market.path), "sha256": file_sha256(market.path), "symbol": market.symbol, "bars": len(bars),
        "first_timestamp": bars[TIMESTAMP].iloc[0].isoformat(), "last_timestamp": bars[TIMESTAMP].iloc[-1].isoformat(),
        "feature_columns": prepared.feature_columns, "embargo_bars": prepared.split.embargo,
        "split_rows": {n: len(p) for n, p in parts.items()},
        "split_ranges": {n: [p[TIMESTAMP].iloc[0].isoformat(), p[TIMESTAMP].iloc[-1].isoformat()]
                         for n, p in parts.items()},
        "scaler_fit_rows": prepared.scaler.n_fit_rows, "scaler_fit_end": prepared.scaler.fit_end,
    }


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


def run_train(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """``raytrade train``: load + validate, Ray Data features, Ray Train, MLflow; writes ``<run dir>/train.json``.

    Raises:
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    from raytrade import tracking

    progress = Progress(total=3)
    run_dir = new_run_dir(cfg, "train")
    with ray_session(cfg):
        _, prepared, data_info = load_and_prepare(cfg, data_path, progress)
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with progress.stage("train", f"Ray Train: {cfg.model.name}, up to {cfg.train.epochs} epochs, "
                                     f"{cfg.train.num_workers} worker(s), use_gpu={cfg.train.use_gpu}"):
            run = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, data_info)
    report = {"run_dir": str(run_dir), "data": data_info, "forecaster_metrics": run.report(),
              "mlflow_run_ids": {"forecaster": run.run_id}, "model_versions": {"forecaster": run.version},
              "mlflow": {"tracking_uri": tracking_uri, "forecaster_model": cfg.tracking.forecaster_model},
              "timings_s": progress.timings}
    (run_dir / "train.json").write_text(json.dumps(report, indent=2, default=str))
    progress.note(f"report: {run_dir / 'train.json'}")
    return report
