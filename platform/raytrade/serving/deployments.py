"""Ray Serve deployments behind the ingress (:mod:`raytrade.serving.ingress`), one per stage of a decision:

``Features`` (bars or the Redis store → unscaled feature rows) → ``Forecaster`` (batched; scaler, CNN+LSTM,
MC-dropout uncertainty) → ``Agent-<name>`` (batched RL policies) → ``Combiner`` (weights and risk limits).

Model deployments load ``name@alias`` from the MLflow registry (:class:`raytrade.serving.slots.ModelSlot`):
their ``user_config`` (:class:`~raytrade.serving.slots.ModelSlotConfig`) pins a version or changes the alias,
and a moved alias is picked up within ``reload_interval_s`` without restarting replicas or dropping requests.
The combiner's ``user_config`` is a :class:`CombinerConfig`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from raytrade.config import FORECAST_INPUTS, FeatureConfig
from raytrade.data.schema import validate_bars
from raytrade.errors import InsufficientDataError
from raytrade.rl.ensemble import combine_positions, normalise_weights, risk_limited_position
from raytrade.rl.inputs import agent_outputs, forecast_inputs
from raytrade.serving.metrics import record_model
from raytrade.serving.slots import LoadedModel, ModelSlot, load_registered
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore, bars_fingerprint

DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}
UNCERTAINTY_KEYS = ("return_std", "mutual_information", "predictive_entropy")


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.25})
class Features:
    """The feature deployment: a forecaster's UNSCALED feature rows for the latest bar of one symbol.

    ``spec`` is :meth:`Forecaster.spec` (feature config, columns, lookback, min_bars, feature-set version),
    so one Features deployment serves every forecaster version (A/B, reloads). Rows come back oldest
    first, ``lookback`` of them, with ``timestamp``.
    """

    def __init__(self, redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.redis_url, self.store_prefix = redis_url, store_prefix
        self._stores: dict[str, OnlineFeatureStore] = {}

    def _store(self, feature_set_version: str, symbol: str) -> OnlineFeatureStore:
        if self.redis_url is None:
            raise FeaturesNotFoundError(feature_set_version, symbol, key="-",
                                        detail="no online store is configured (serve arg redis_url)")
        if feature_set_version not in self._stores:
            self._stores[feature_set_version] = OnlineFeatureStore(
                self.redis_url, feature_set_version=feature_set_version, prefix=self.store_prefix)
        return self._stores[feature_set_version]

    def from_bars(self, bars: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
        """Validate ``bars`` (one symbol, oldest first) and compute the forecaster's features at the last bar.

        Returns ``{"rows": DataFrame (lookback, 1 + n_features), "timestamp"}`` (the caller fingerprints the
        bars it sent).

        Raises:
            DataValidationError: a bar breaks a validation rule (names rule, column, timestamp).
            InsufficientDataError: fewer than ``spec["min_bars"]`` bars (feature warm-up + lookback).
        """
        from raytrade.features.technical import compute_features

        started = time.perf_counter()
        if len(bars) < spec["min_bars"]:
            raise InsufficientDataError(
                f"need at least {spec['min_bars']} bars (feature warm-up + lookback {spec['lookback']}), "
                f"got {len(bars)}")
        frame = validate_bars(bars)
        feats = compute_features(frame, FeatureConfig.model_validate(spec["features"]))
        rows = feats.iloc[-spec["lookback"]:][["timestamp", *spec["columns"]]].reset_index(drop=True)
        out = {"rows": rows, "timestamp": frame["timestamp"].iloc[-1].to_pydatetime()}
        record_model("features", _ms(started))
        return out

    def from_store(self, symbol: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The symbol's latest rows from the online store, under the forecaster's feature-set version, with
        ``timestamp`` and the ``fingerprint`` of the stored bars (the prediction cache's key).

        Raises:
            FeaturesNotFoundError: no store configured, or no (unexpired) window for the symbol.
            StoreUnavailableError: Redis is unreachable.
        """
        started = time.perf_counter()
        latest = self._store(spec["feature_set_version"], symbol).read_latest(symbol)
        rows = latest.features.iloc[-spec["lookback"]:].reset_index(drop=True)
        out = {"rows": rows, "timestamp": pd.Timestamp(rows["timestamp"].iloc[-1]).to_pydatetime(),
               "fingerprint": bars_fingerprint(latest.bars)}
        record_model("features", _ms(started))
        return out


def _load_on_device(tracking_uri: str, name: str, alias: str | None, version: str | None) -> LoadedModel:
    """Load a forecaster bundle and move its network to the GPU when the replica has one
    (``ray_actor_options: {num_gpus: 1}``, serve_configs/ensemble.gpu.yaml)."""
    import torch

    loaded = load_registered(tracking_uri, name, alias, version)
    if torch.cuda.is_available():
        loaded.obj.model.to("cuda")
    return loaded


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.25})
class Forecaster:
    """The forecaster ``model_name@alias``; :meth:`forecast` is batched across concurrent requests.

    ``label`` names it in metrics and ``/models`` (``forecaster``, or ``challenger`` for an A/B arm).
    """

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "champion", label: str = "forecaster") -> None:
        self.slot = ModelSlot(tracking_uri, model_name, alias, loader=_load_on_device)
        self.label = label

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.slot.configure(config)

    def check_health(self) -> None:
        if self.slot.current is None:
            raise RuntimeError("no forecaster loaded")

    async def spec(self) -> dict[str, Any]:
        """What the feature deployment needs to build this version's input (JSON-able, small). The ingress asks
        every ``versions_ttl_s``, which also makes the replica re-read its alias when cached answers spare it
        every forecast request."""
        self.slot.poll()
        model = self.slot.current
        b = model.obj
        return {"version": model.version, "feature_set_version": b.feature_set_version,
                "features": b.features.model_dump(mode="json"), "columns": list(b.scaler.columns),
                "lookback": b.lookback, "min_bars": b.min_bars}

    def info(self) -> dict[str, Any]:
        model = self.slot.current
        b = model.obj
        return {**model.info(), "label": self.label, "min_bars": b.min_bars, "lookback": b.lookback,
                "n_features": len(b.scaler.columns), "horizon_bars": b.labels.horizon,
                "feature_set_version": b.feature_set_version, "mc_samples": b.mc_samples,
                "reload_interval_s": self.slot.config.reload_interval_s}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def forecast(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per item ``{"rows": unscaled feature rows, "feature_set_version"}``: the forecast (probs, expected
        return, MC-dropout uncertainty), the scaled ``window`` (lookback, n_features), the per-output rows the
        agents need, and the model ``version``. An item built for another feature-set version (the model was
        swapped meanwhile) gets ``{"stale": True}`` so the caller rebuilds it."""
        self.slot.poll()
        started = time.perf_counter()
        model = self.slot.current  # one version for the whole batch
        b = model.obj
        fresh = [i for i, it in enumerate(items) if it["feature_set_version"] == b.feature_set_version]
        results: list[dict[str, Any]] = [{"stale": True, "version": model.version} for _ in items]
        if fresh:
            windows = np.concatenate([b.window_from_features(items[i]["rows"]) for i in fresh])
            inputs = FORECAST_INPUTS if b.mc_samples > 0 else ("probs", "expected_return", "embedding")
            out = agent_outputs(b, windows, inputs)
            scale = float(b.model_kwargs.get("return_scale", 1.0))
            for j, i in enumerate(fresh):
                forecast = b.describe(out["probs"][j], out["expected_return"][j])
                forecast["uncertainty"] = {k: float(out[k][j]) for k in UNCERTAINTY_KEYS if k in out}
                results[i] = {"forecast": forecast, "window": windows[j], "columns": list(b.scaler.columns),
                              "outputs": {k: v[j : j + 1] for k, v in out.items()}, "return_scale": scale,
                              "version": model.version}
        record_model(self.label, _ms(started), batch_size=len(items))
        return results


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.1})
class Agent:
    """An RL policy ``model_name@alias``; :meth:`act` (batched) maps observations to target positions."""

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "champion", label: str = "agent") -> None:
        self.slot = ModelSlot(tracking_uri, model_name, alias)
        self.label = label

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.slot.configure(config)

    async def info(self) -> dict[str, Any]:
        """The loaded policy's registry entry and shape (the ingress asks every ``versions_ttl_s``)."""
        self.slot.poll()
        p = self.slot.current.obj
        return {**self.slot.current.info(), "label": self.label, "algorithm": p.algorithm, "window": p.window,
                "obs_dim": p.obs_dim, "feature_names": p.feature_names,
                "reload_interval_s": self.slot.config.reload_interval_s}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def act(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per item ``{"window", "columns", "outputs", "return_scale", "position"}`` (a :meth:`Forecaster.forecast`
        result plus the account's position): ``{"position": target position in [-1, 1], "version"}``. The
        observation is :meth:`raytrade.rl.policy.Policy.observation`, as in training and the backtest."""
        self.slot.poll()
        started = time.perf_counter()
        model = self.slot.current
        p = model.obj
        obs = np.stack([
            p.observation(it["window"], it["columns"],
                          forecast_inputs(it["outputs"], it["return_scale"], p.forecast_inputs)[0], it["position"])
            for it in items])
        actions = np.asarray(p.act(obs), dtype=np.float64).reshape(len(items), -1)[:, 0]
        record_model(self.label, _ms(started), batch_size=len(items))
        return [{"position": float(a), "version": model.version} for a in actions]


class CombinerConfig(BaseModel):
    """``user_config`` of the ``Combiner``: the ensemble's weights and risk limits (fractions of equity).

    Attributes:
        weights: member (``forecaster`` or an agent name) -> weight >= 0; normalised over the members present;
            missing members weigh 0; all zero means equal weights.
        max_position: cap on |target position|, in (0, 1].
        deadband: |target - position| at or below which the signal is ``hold``.
        max_drawdown: account drawdown (fraction, from the request) above which exposure is cut.
        drawdown_cut: exposure multiplier while the drawdown exceeds ``max_drawdown``.
    """

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(default_factory=dict)
    max_position: float = Field(1.0, gt=0, le=1)
    deadband: float = Field(0.05, ge=0, le=2)
    max_drawdown: float = Field(0.2, gt=0, le=1)
    drawdown_cut: float = Field(0.5, ge=0, le=1)


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.05})
class Combiner:
    """The ensemble combiner: target = :func:`raytrade.rl.ensemble.combine_positions` of the members' positions
    (weights, cap), then :func:`raytrade.rl.ensemble.risk_limited_position` (the backtest's risk layer) on the
    account drawdown the request reports. Reconfigured through ``user_config`` without restarting replicas."""

    def __init__(self) -> None:
        self.reconfigure({})  # Serve then applies the deployment's user_config

    def reconfigure(self, config: dict[str, Any]) -> None:
        from datetime import UTC, datetime

        self.config = CombinerConfig.model_validate(config)
        self.configured_at = datetime.now(UTC).isoformat(timespec="milliseconds")

    def info(self) -> dict[str, Any]:
        """The config in force, when it was applied, and this replica's id (unchanged by a reconfigure)."""
        return {**self.config.model_dump(), "configured_at": self.configured_at,
                "replica": serve.get_replica_context().replica_tag}

    def combine(self, members: dict[str, float], position: float, drawdown: float) -> dict[str, Any]:
        """``{"target_position", "signal", "weights", "drawdown_cut"}`` for member positions, the current
        position and the account drawdown (fraction of the peak)."""
        started = time.perf_counter()
        c = self.config
        weights = normalise_weights(c.weights, list(members))
        raw = float(combine_positions(members, weights, c.max_position))
        target, cut = risk_limited_position(raw, drawdown, c.max_position, c.max_drawdown, c.drawdown_cut)
        delta = target - position
        signal = "buy" if delta > c.deadband else "sell" if delta < -c.deadband else "hold"
        record_model("combiner", _ms(started))
        return {"target_position": target, "signal": signal, "weights": weights, "drawdown_cut": cut}
