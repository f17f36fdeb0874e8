"""The ``raytrade train`` stage: load + validate, Ray Data features, Ray Train, score on the test split, MLflow
(the shared training step is :func:`raytrade.stages.common.train_forecaster`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raytrade.config import PipelineConfig
from raytrade.runtime import Progress, ray_session
from raytrade.stages.common import load_and_prepare, new_run_dir, train_forecaster


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
