"""End-to-end orchestration: bars -> features -> forecaster -> PPO -> backtest -> Serve.

:func:`run_pipeline` runs every stage in order, prints progress, tracks both models in MLflow
(registered with the ``champion`` alias), and writes ``<run dir>/report.json``:

``{"strategies": {name: metrics}, "forecaster_metrics": {...}, "rl_metrics": {...},
"mlflow_run_ids": {...}, "data": {...}, "serve": {...}, "timings_s": {...}}``

All strategy metrics are on the TEST split, after transaction costs (see
:mod:`raytrade.evaluation.metrics` for units).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.ingest import read_many
from raytrade.data.preprocess import preprocess
from raytrade.data.readers import keep_last_bars
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.data.splits import chronological_split
from raytrade.data.validation import apply_policy
from raytrade.data.windows import Windows, make_windows
from raytrade.errors import ConfigError
from raytrade.evaluation import metrics_table, periods_per_year, run_backtests
from raytrade.evaluation.forecast import forecast_metrics
from raytrade.evaluation.plots import plot_equity
from raytrade.features.scaler import FeatureScaler
from raytrade.models.bundle import ForecasterBundle, forecast_features, signal_positions
from raytrade.models.registry import build_model
from raytrade.rl.ensemble import combine_positions
from raytrade.store.publish import publish_latest_windows

log = logging.getLogger(__name__)

FORECASTER_LOADER = "raytrade.models.bundle:load_bundle"
POLICY_LOADER = "raytrade.rl.policy:load_policy"


@dataclass
class Progress:
    """Prints ``[i/n] stage ... done in s`` lines to stderr and keeps the timings."""

    total: int
    stream: Any = field(default=sys.stderr)
    timings: dict[str, float] = field(default_factory=dict)
    _i: int = 0
    _t0: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, key: str, title: str) -> Iterator[None]:
        self._i += 1
        print(f"[{self._i}/{self.total}] {title} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - start, 2)
        print(f"[{self._i}/{self.total}] {title}: done in {self.timings[key]:.1f}s "
              f"(total {time.perf_counter() - self._t0:.0f}s)", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        print(f"      {message}", file=self.stream, flush=True)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _ensure_ray(cfg: PipelineConfig) -> bool:
    """Connect to / start Ray; returns True when this call started it (and so must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=cfg.ray.address, num_cpus=cfg.ray.num_cpus if cfg.ray.address is None else None,
             include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level=logging.WARNING)
    return True


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


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
    from raytrade.training.trainer import fit_forecaster

    data_path = Path(data_path or cfg.data.path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (cfg.output_dir / f"{cfg.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(total=6 + int(cfg.serve.enabled) + int(cfg.store.enabled))
    report: dict[str, Any] = {"run_dir": str(run_dir), "config": cfg.model_dump(mode="json")}
    lookback, horizon, embargo = cfg.model.lookback, cfg.labels.horizon, cfg.embargo

    with progress.stage("load", f"Loading and validating bars from {data_path}"):
        bars, validation = apply_policy(read_many(data_path, cfg.data.symbol), cfg.data.policy)
        if cfg.data.max_bars is not None:
            bars = keep_last_bars(bars, cfg.data.max_bars)
        if validation.issues:
            progress.note(f"validation ({cfg.data.policy}): {len(validation.errors())} error(s), "
                          f"{len(validation.warnings())} warning(s); see report.json data.validation")
        symbols = list(pd.unique(bars[SYMBOL]))
        if len(symbols) != 1:
            raise ConfigError(
                f"data.symbol: the pipeline trades one symbol per run; {data_path} holds {len(symbols)} "
                f"({', '.join(map(str, symbols[:5]))}{', ...' if len(symbols) > 5 else ''}): set data.symbol"
            )
        symbol = str(symbols[0])
        ppy = cfg.backtest.periods_per_year or periods_per_year(bars[TIMESTAMP])
        progress.note(f"{symbol}: {len(bars)} bars {bars[TIMESTAMP].iloc[0]} -> {bars[TIMESTAMP].iloc[-1]}, "
                      f"{ppy:.0f} bars/year")

    started_ray = _ensure_ray(cfg)
    try:
        _quiet_ray_data()
        with progress.stage("features", "Ray Data: causal features + labels per symbol"):
            pre = preprocess(bars, cfg.features, cfg.labels)
            labelled = pre.frame[pre.frame["label_return"].notna()].reset_index(drop=True)
            unlabelled = len(pre.frame) - len(labelled)
            split = chronological_split(labelled, cfg.split, embargo, min_rows=lookback + cfg.rl.window + 1)
            scaler = FeatureScaler(pre.feature_columns).fit(split.train)
            scaled = {name: scaler.transform(part) for name, part in split.parts().items()}
            windows = {name: make_windows(part, pre.feature_columns, lookback) for name, part in scaled.items()}
            progress.note(f"{len(pre.feature_columns)} features; rows train/val/test = "
                          f"{len(split.train)}/{len(split.val)}/{len(split.test)}; embargo {embargo} bars; "
                          f"windows {len(windows['train'])}/{len(windows['val'])}/{len(windows['test'])}")
        if cfg.store.enabled:
            with progress.stage("store", f"Redis online store: latest windows to {cfg.store.url}"):
                report["store"] = publish_latest_windows(pre, bars, cfg.features, cfg.model.lookback, cfg.store)
                progress.note(f"{len(report['store']['keys'])} window(s), feature set {report['store']['version']}")
        report["data"] = {
            "path": str(data_path), "sha256": _file_sha256(data_path), "symbol": symbol, "bars": len(bars),
            "first_timestamp": bars[TIMESTAMP].iloc[0].isoformat(),
            "last_timestamp": bars[TIMESTAMP].iloc[-1].isoformat(),
            "periods_per_year": ppy, "feature_columns": pre.feature_columns,
            "warmup_rows_dropped": pre.warmup_dropped[symbol], "unlabelled_tail_rows_dropped": unlabelled,
            "embargo_bars": embargo, "lookback": lookback, "horizon": horizon,
            "split_rows": {n: len(p) for n, p in split.parts().items()},
            "split_ranges": {n: [p[TIMESTAMP].iloc[0].isoformat(), p[TIMESTAMP].iloc[-1].isoformat()]
                             for n, p in split.parts().items()},
            "scaler_fit_rows": scaler.n_fit_rows, "scaler_fit_end": scaler.fit_end,
            "validation": validation.to_dict(),
        }

        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        run_ids: dict[str, str] = {}
        with progress.stage("train", f"Ray Train: CNN+LSTM forecaster, {cfg.train.epochs} epochs, "
                                     f"{cfg.train.num_workers} worker(s), use_gpu={cfg.train.use_gpu}"):
            outcome = fit_forecaster(windows["train"], windows["val"], cfg.model, cfg.train,
                                     run_dir / "ray_train", name="forecaster")
            for row in outcome.history.to_dict("records"):
                progress.note("epoch {epoch:.0f}: train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
                              "val_accuracy {val_accuracy:.3f} val_ic {val_ic:.3f}".format(**row))
            model = build_model(cfg.model.name, **outcome.model_kwargs)
            model.load_state_dict(outcome.state_dict)
            bundle = ForecasterBundle(model=model, model_name=cfg.model.name, model_kwargs=outcome.model_kwargs,
                                      scaler=scaler, features=cfg.features, labels=cfg.labels, lookback=lookback)
            bundle_dir = bundle.save(run_dir / "forecaster")
            fc = {name: bundle.forecast_windows(w.x) for name, w in windows.items()}
            test_w = windows["test"]
            fm = forecast_metrics(fc["test"]["probs"], test_w.y_class, fc["test"]["expected_return"], test_w.y_return)
            report["forecaster_metrics"] = {"test": fm, "best_val": outcome.best_metrics,
                                            "epochs": outcome.history.to_dict("records")}
            progress.note(f"test accuracy {fm['accuracy']:.3f} "
                          f"(majority class {fm['majority_baseline_accuracy']:.3f}), "
                          f"test IC {fm['ic']:.3f}")
            with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-forecaster") as run_id:
                tracking.log_params({"model": cfg.model.model_dump(mode="json"),
                                     "train": cfg.train.model_dump(mode="json"),
                                     "features": cfg.features.model_dump(mode="json"),
                                     "labels": cfg.labels.model_dump(mode="json"), "embargo": embargo,
                                     "data_sha256": report["data"]["sha256"], "symbol": symbol})
                for row in outcome.history.to_dict("records"):
                    tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
                tracking.log_metrics({f"test_{k}": v for k, v in fm.items()})
                version = tracking.log_model_dir(bundle_dir, FORECASTER_LOADER, cfg.tracking.forecaster_model,
                                                 cfg.tracking.alias)
            run_ids["forecaster"] = run_id
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
    finally:
        if started_ray:
            import ray

            ray.shutdown()


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
