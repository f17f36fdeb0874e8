"""End-to-end orchestration: bars -> features -> forecaster -> PPO -> backtest -> Serve.

:func:`run_pipeline` runs every stage in order, prints progress, tracks both models in MLflow
(registered with the ``champion`` alias), and writes ``<run dir>/report.json``:

``{"strategies": {name: metrics}, "forecaster_metrics": {...}, "rl_metrics": {...},
"mlflow_run_ids": {...}, "data": {...}, "serve": {...}, "timings_s": {...}}``

All strategy metrics are on the TEST split, after transaction costs (see
:mod:`raytrade.evaluation.metrics` for units).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.prepare import load_market_data, prepare_data
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.data.windows import Windows
from raytrade.errors import ConfigError
from raytrade.evaluation import metrics_table, periods_per_year, run_backtests
from raytrade.evaluation.plots import plot_equity
from raytrade.models.bundle import forecast_features, signal_positions
from raytrade.rl.ensemble import combine_positions
from raytrade.runtime import Progress, ray_session
from raytrade.stages.forecaster import FORECASTER_LOADER, data_summary, new_run_dir, train_forecaster
from raytrade.store.publish import publish_latest_windows

log = logging.getLogger(__name__)

__all__ = ["FORECASTER_LOADER", "POLICY_LOADER", "request_payload", "run_pipeline"]

POLICY_LOADER = "raytrade.rl.policy:load_policy"


def _env_arrays(w: Windows, cols: list[int], probs: np.ndarray, exp_ret: np.ndarray,
                return_scale: float) -> dict[str, np.ndarray]:
    """Per-bar arrays of one symbol's split for the trading env: selected feature row at t, forecasts, next return."""
    return {"features": w.x[:, -1, cols], "forecasts": forecast_features(probs, exp_ret, return_scale),
            "returns": w.next_return}


def run_pipeline(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """Run every stage; returns the report (also written to ``<run dir>/report.json``).

    Raises:
        DataValidationError: the bars break a validation rule.
        ConfigError: an invalid combination of settings (e.g. several symbols without ``data.symbol``).
        InsufficientDataError: too few bars for lookback, horizon, embargo and split.
    """
    from raytrade import tracking
    from raytrade.rl.env import env_config
    from raytrade.rl.ppo import train_ppo

    data_path = Path(data_path or cfg.data.path)
    run_dir = new_run_dir(cfg)
    progress = Progress(total=6 + int(cfg.serve.enabled) + int(cfg.store.enabled))
    report: dict[str, Any] = {"run_dir": str(run_dir), "config": cfg.model_dump(mode="json")}
    lookback, horizon, embargo = cfg.model.lookback, cfg.labels.horizon, cfg.embargo

    with progress.stage("load", f"Loading and validating bars from {data_path}"):
        market = load_market_data(cfg, data_path)
        bars, validation, symbol = market.bars, market.validation, market.symbol
        if validation.issues:
            progress.note(f"validation ({cfg.data.policy}): {len(validation.errors())} error(s), "
                          f"{len(validation.warnings())} warning(s); see report.json data.validation")
        ppy = cfg.backtest.periods_per_year or periods_per_year(bars[TIMESTAMP])
        progress.note(f"{symbol}: {len(bars)} bars {bars[TIMESTAMP].iloc[0]} -> {bars[TIMESTAMP].iloc[-1]}, "
                      f"{ppy:.0f} bars/year")

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
            **data_summary(market, prepared), "periods_per_year": ppy,
            "warmup_rows_dropped": pre.warmup_dropped[symbol],
            "unlabelled_tail_rows_dropped": len(pre.frame) - len(prepared.labelled),
            "lookback": lookback, "horizon": horizon, "validation": validation.to_dict(),
        }

        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        run_ids: dict[str, str] = {}
        with progress.stage("train", f"Ray Train: {cfg.model.name} forecaster, up to {cfg.train.epochs} epochs, "
                                     f"{cfg.train.num_workers} worker(s), use_gpu={cfg.train.use_gpu}"):
            forecaster = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, report["data"])
            outcome, fc, test_w = forecaster.outcome, forecaster.forecasts, windows["test"]
            version = forecaster.version
            report["forecaster_metrics"] = forecaster.report()
            run_ids["forecaster"] = forecaster.run_id
            report["model_versions"] = {"forecaster": version}

        with progress.stage("rl", f"RLlib PPO: {cfg.rl.iterations} iterations x {cfg.rl.train_batch_size} env steps"):
            scale = float(outcome.model_kwargs["return_scale"])
            obs_names = list(cfg.rl.features) or pre.feature_columns
            unknown = [n for n in obs_names if n not in pre.feature_columns]
            if unknown:
                raise ConfigError(f"rl.features: unknown feature(s) {unknown}; see docs/FEATURES.md")
            cols = [pre.feature_columns.index(n) for n in obs_names]
            arrays = {n: _env_arrays(windows[n], cols, fc[n]["probs"], fc[n]["expected_return"], scale)
                      for n in windows}
            train_env = env_config(**arrays["train"], window=cfg.rl.window, cost_bps=cfg.backtest.cost_bps,
                                   episode_length=min(cfg.rl.episode_length, len(windows["train"]) - cfg.rl.window - 1),
                                   random_start=True, max_position=cfg.backtest.max_position)
            rl = train_ppo(cfg.rl, train_env, on_iteration=lambda i, row: progress.note(
                f"iteration {i}: episode_return_mean {row['episode_return_mean']:.4f} ({row['env_steps']} env steps)"),
                feature_names=obs_names)
            policy_dir = rl.policy.save(run_dir / "agents" / "ppo")
            agent_model = f"{cfg.tracking.agent_model_prefix}-ppo"
            with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-ppo") as run_id:
                tracking.log_params({"rl": cfg.rl.model_dump(mode="json"), "cost_bps": cfg.backtest.cost_bps,
                                     "forecaster_version": version, "data_sha256": report["data"]["sha256"]})
                for row in rl.history.to_dict("records"):
                    tracking.log_metrics({"episode_return_mean": row["episode_return_mean"]},
                                         step=int(row["iteration"]))
                report["model_versions"]["ppo"] = tracking.log_model_dir(policy_dir, POLICY_LOADER, agent_model,
                                                                         cfg.tracking.alias)
            run_ids["ppo"] = run_id
            report["rl_metrics"] = {"ppo": rl.history.to_dict("records")}

        with progress.stage("backtest", f"Backtest on the test split after {cfg.backtest.cost_bps:g} bps costs"):
            from raytrade_envs import TradingEnv

            test_env = TradingEnv(**env_config(**arrays["test"], window=cfg.rl.window, cost_bps=cfg.backtest.cost_bps,
                                               max_position=cfg.backtest.max_position))
            ppo_pos = rl.policy.rollout(test_env)
            # every strategy trades the same bars: those where the agent has a full observation window
            bars_idx = np.arange(cfg.rl.window - 1, cfg.rl.window - 1 + len(ppo_pos))
            fc_pos = signal_positions(fc["test"]["probs"][bars_idx], cfg.backtest.max_position)
            strategies = {
                "buy_and_hold": np.full(len(bars_idx), cfg.backtest.max_position),
                "forecaster": fc_pos,
                "ppo": ppo_pos,
                "ensemble": combine_positions({"forecaster": fc_pos, "ppo": ppo_pos}, cfg.backtest.ensemble_weights,
                                              cfg.backtest.max_position),
            }
            results = run_backtests(strategies, test_w.next_return[bars_idx], cfg.backtest.cost_bps, ppy)
            report["strategies"] = {name: r.metrics for name, r in results.items()}
            report["backtest"] = {"cost_bps": cfg.backtest.cost_bps, "periods_per_year": ppy,
                                  "first_bar": pd.Timestamp(test_w.timestamp[bars_idx[0]]).isoformat(),
                                  "last_bar": pd.Timestamp(test_w.timestamp[bars_idx[-1]]).isoformat(),
                                  "n_bars": len(bars_idx), "ensemble_weights": cfg.backtest.ensemble_weights}
            print(metrics_table(results), file=progress.stream, flush=True)
            plot = plot_equity(results, test_w.timestamp[bars_idx], run_dir / "equity.png",
                               title=f"{symbol}: test split after {cfg.backtest.cost_bps:g} bps costs")
            progress.note(f"equity curves: {plot}")
            with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-backtest") as run_id:
                for name, m in report["strategies"].items():
                    tracking.log_metrics({f"{name}.{k}": v for k, v in m.items()})
                tracking.log_artifact(plot)
                run_ids["backtest"] = run_id

        report["mlflow_run_ids"] = run_ids
        report["mlflow"] = {"tracking_uri": tracking_uri, "forecaster_model": cfg.tracking.forecaster_model,
                            "agent_models": {"ppo": agent_model}, "alias": cfg.tracking.alias}
        if cfg.serve.enabled:
            with progress.stage("serve", f"Ray Serve: deploying {cfg.serve.config} and posting requests"):
                report["serve"] = _serve_and_query(cfg, bars, test_w, tracking_uri, agent_model, progress)
        with progress.stage("report", "Writing report"):
            report["timings_s"] = progress.timings
            path = run_dir / "report.json"
            path.write_text(json.dumps(report, indent=2, default=str))
            tracking.log_artifact_to_run(tracking_uri, run_ids["backtest"], path)
            progress.note(f"report: {path}")
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
                     agent_model: str, progress: Progress) -> dict[str, Any]:
    import httpx
    from ray import serve

    from raytrade.features.technical import warmup_bars
    from raytrade.serving.app import APP_NAME, app_from_config

    app, app_cfg = app_from_config(cfg.serve.config, {
        "tracking_uri": tracking_uri, "forecaster_model": cfg.tracking.forecaster_model,
        "agent_models": {"ppo": agent_model}, "alias": cfg.tracking.alias,
        "ensemble_weights": cfg.backtest.ensemble_weights, "max_position": cfg.backtest.max_position,
        "redis_url": cfg.store.url if cfg.store.enabled else None, "store_prefix": cfg.store.prefix,
    })
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=APP_NAME, route_prefix=app_cfg.get("route_prefix", "/"), blocking=False)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
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
