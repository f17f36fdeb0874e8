"""Stage ``raytrade walk-forward``: expanding-window out-of-sample evaluation of the forecaster and baselines.

For each fold of :func:`~raytrade.dataset.folds.expanding_folds` (train | embargo | val | embargo | test,
training span growing fold by fold) and each model in ``walk_forward.models``: fit the scaler on the
fold's TRAIN rows only, train with Ray Train (early stopping on the fold's val rows), forecast the
fold's test block. Test windows may reach back into the embargo for their *features* (bars <= t),
never for labels. Scores per fold and pooled over all folds (the test blocks tile one span), each
with a stationary-bootstrap confidence interval, side by side with buy-and-hold; the table is
printed, saved as ``walk_forward.md``/``.json`` in the run directory and logged to MLflow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import TIMESTAMP
from raytrade.dataset.folds import expanding_folds, fold_rows
from raytrade.dataset.prepare import labelled_features, load_universe_data
from raytrade.dataset.windows import make_windows
from raytrade.evaluation.walk_forward import (
    FORECAST_METRICS,
    UNIVERSE_METRICS,
    concatenate_folds,
    format_table,
    score_buy_and_hold,
    score_forecasts,
    score_universe_forecasts,
    walk_forward_table,
)
from raytrade.features.scaler import FeatureScaler
from raytrade.runtime import Progress, ray_session
from raytrade.stages.common import file_sha256, new_run_dir, resolve_annualisation, train_storage


def _clean(value: Any) -> Any:
    """NaN -> None so the JSON report is strict JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_walk_forward(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """Run the walk-forward evaluation; returns the report (also ``<run dir>/walk_forward.json``).

    Raises:
        DataValidationError, ConfigError: as :func:`raytrade.pipeline.run_pipeline`.
        InsufficientDataError: too few labelled bars for the folds, embargo and lookback.
    """
    from raytrade import tracking
    from raytrade.training.trainer import fit_forecaster

    wf, lookback = cfg.walk_forward, cfg.model.lookback
    progress = Progress(total=2 + wf.n_folds + 1)
    run_dir = new_run_dir(cfg, "walkforward")
    with progress.stage("load", "Loading and validating bars"):
        market = load_universe_data(cfg, data_path)
        many = len(market.symbols) > 1
        label = f"universe of {len(market.symbols)} symbols" if many else market.symbols[0]
        annual = resolve_annualisation(cfg, market.panel.timestamps)
        ppy = annual.periods_per_year
        progress.note(f"{label}: {len(market.bars)} bars; annualised with {annual}")
    outputs: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in wf.models}
    fold_market: list[np.ndarray] = []
    per_fold: list[dict[str, Any]] = []
    score_kw = {"cost_bps": cfg.backtest.cost_bps, "periods_per_year": ppy, "n_bootstrap": wf.n_bootstrap,
                "confidence": wf.confidence, "seed": cfg.train.seed}

    def score(rows: dict[str, np.ndarray]) -> dict[str, Any]:
        if not many:
            return score_forecasts(**rows, max_position=cfg.backtest.max_position, **score_kw)
        return score_universe_forecasts(**rows, horizon=cfg.labels.horizon, k=cfg.portfolio.top_k, **score_kw)
    with ray_session(cfg):
        with progress.stage("features", "Ray Data: causal features + labels; folds"):
            pre, labelled = labelled_features(cfg, market)
            cols = pre.feature_columns
            calendar = pd.DatetimeIndex(np.unique(labelled[TIMESTAMP].to_numpy()), tz="UTC")
            folds = expanding_folds(len(calendar), wf.n_folds, wf.test_fraction, wf.val_fraction, cfg.embargo,
                                    # a calendar bar holds a row of every symbol: one batch of windows
                                    min_train_rows=lookback + math.ceil(cfg.train.batch_size / len(market.symbols)))
            for f in folds:
                progress.note(f"fold {f.index}: train bars {f.train.start}-{f.train.stop - 1}, val "
                              f"{f.val.start}-{f.val.stop - 1}, test {f.test.start}-{f.test.stop - 1} "
                              f"({calendar[f.test.start].date()} -> {calendar[f.test.stop - 1].date()}); "
                              f"embargo {cfg.embargo} bars")
        for f in folds:
            with progress.stage(f"fold_{f.index}", f"Fold {f.index}: train {', '.join(wf.models)} with Ray Train"):
                train_rows, val_rows, test_ctx = fold_rows(labelled, f, cfg.embargo, lookback)
                scaler = FeatureScaler(cols).fit(train_rows)  # this fold's TRAIN rows only
                w = {name: make_windows(scaler.transform(rows), cols, lookback)
                     for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_ctx))}
                test = w["test"]
                if not many:
                    assert len(test) == f.test.stop - f.test.start  # one window per test bar
                fold_market.append(test.next_return)
                scores: dict[str, Any] = {}
                for model in wf.models:
                    model_cfg = cfg.model.model_copy(update={"name": model})
                    outcome = fit_forecaster(w["train"], w["val"], model_cfg, cfg.train, scaler=scaler,
                                             features=cfg.features, labels=cfg.labels,
                                             storage_dir=train_storage(cfg, run_dir),
                                             name=f"fold{f.index}-{model}")
                    fc = outcome.bundle.forecast_windows(test.x)
                    rows = {"probs": fc["probs"], "y_class": test.y_class, "expected_return": fc["expected_return"],
                            "y_return": test.y_return, "next_return": test.next_return}
                    if many:
                        rows.update(timestamp=test.timestamp, symbol=test.symbol)
                    outputs[model].append(rows)
                    scores[model] = score(rows)
                    last = (f"rank IC {scores[model]['rank_ic']['value']:.3f} across the universe" if many
                            else f"Sharpe {scores[model]['sharpe']['value']:.2f}")
                    progress.note(f"{model}: {len(outcome.history)} epochs, accuracy "
                                  f"{scores[model]['accuracy']['value']:.3f}, IC {scores[model]['ic']['value']:.3f}, "
                                  f"{last}")
                if not many:
                    scores["buy_and_hold"] = score_buy_and_hold(test.next_return,
                                                                max_position=cfg.backtest.max_position, **score_kw)
                per_fold.append({**f.to_dict(), "test_first": str(test.timestamp[0]),
                                 "test_last": str(test.timestamp[-1]), "scores": scores})
    with progress.stage("aggregate", "Pooled out-of-sample scores with bootstrap confidence intervals"):
        pooled = {model: score(concatenate_folds(rows)) for model, rows in outputs.items()}
        if not many:
            pooled["buy_and_hold"] = score_buy_and_hold(np.concatenate(fold_market),
                                                        max_position=cfg.backtest.max_position, **score_kw)
        metrics = UNIVERSE_METRICS if many else FORECAST_METRICS
        table = walk_forward_table(pooled, metrics)
        markdown = format_table(table)
        fold_tables = {fold["index"]: format_table(walk_forward_table(fold["scores"], metrics)) for fold in per_fold}
        level = f"{wf.confidence:.0%}"
        header = (f"Walk-forward ({wf.n_folds} expanding folds, embargo {cfg.embargo} bars, "
                  + (f"{sum(len(r) for r in fold_market)} test windows of {len(market.symbols)} symbols; rank IC, "
                     f"ICIR and the top-minus-bottom return per bar across the universe"
                     if many else f"{sum(len(r) for r in fold_market)} test bars, {cfg.backtest.cost_bps:g} bps "
                                  f"costs, Sharpe annualised with {ppy:,.1f} bars/year ({annual.calendar})")
                  + f"; value [{level} stationary-bootstrap CI])")
        document = "\n\n".join([f"# {label}: {header}", markdown,
                                *[f"## Fold {k}\n\n{t}" for k, t in fold_tables.items()]])
        (run_dir / "walk_forward.md").write_text(document + "\n")
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-walk-forward") as run_id:
            tracking.log_params({"walk_forward": wf.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
                                 **annual.report(),
                                 "train": cfg.train.model_dump(mode="json"), "embargo": cfg.embargo,
                                 "data_sha256": file_sha256(market.path), "symbols": list(market.symbols)})
            for model, scores in pooled.items():
                tracking.log_metrics({f"{model}.{m}": s["value"] for m, s in scores.items()
                                      if m in FORECAST_METRICS and math.isfinite(s["value"])})
            tracking.log_text(document, "walk_forward.md")
    report = _clean({
        "run_dir": str(run_dir), **({"symbols": list(market.symbols)} if many else {"symbol": market.symbols[0]}),
        "data_path": str(market.path), "embargo_bars": cfg.embargo,
        **annual.report(), "cost_bps": cfg.backtest.cost_bps, "models": list(wf.models),
        "pooled": pooled, "folds": per_fold, "mlflow_run_id": run_id, "tracking_uri": tracking_uri,
        "timings_s": progress.timings,
    })
    report["table_markdown"] = f"{header}\n\n{markdown}"
    (run_dir / "walk_forward.json").write_text(json.dumps(report, indent=2, default=str))
    pd.DataFrame(table).to_csv(run_dir / "walk_forward.csv")
    return report
