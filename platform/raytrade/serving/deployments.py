"""Ray Serve deployments behind the ingress (:mod:`raytrade.serving.ingress`), one per stage of a decision:

``Features`` (bars or the Redis store → unscaled feature rows) → ``Forecaster`` (batched; scaler, CNN+LSTM,
MC-dropout uncertainty) → ``Agent-<name>`` (batched RL policies) → ``Combiner`` (weights and risk limits).

Model deployments load ``name@alias`` from the MLflow registry (:class:`raytrade.serving.slots.ModelSlot`):
their ``user_config`` (:class:`~raytrade.serving.slots.ModelSlotConfig`) pins a version or changes the alias,
and a moved alias is picked up within ``reload_interval_s`` without restarting replicas or dropping requests.
Every request method takes a list with one item per request (the ingress sends a batch of requests at a
time) and returns a list in the same order. The combiner's ``user_config`` is a
:class:`raytrade.serving.steps.CombinerConfig`. The work itself is in
:mod:`raytrade.serving.steps` (shared with the single-process baseline and the tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from ray import serve

from raytrade.errors import RaytradeError
from raytrade.serving.metrics import record_model
from raytrade.serving.slots import LoadedModel, ModelSlot, load_registered
from raytrade.serving.steps import (
    CombinerConfig,
    act_items,
    agent_info,
    combine,
    feature_rows,
    forecast_items,
    forecaster_info,
    forecaster_spec,
)
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore, bars_fingerprint

DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}


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

    def from_bars(self, frames: list[pd.DataFrame], spec: dict[str, Any]) -> list[dict[str, Any] | RaytradeError]:
        """For each request's bars (one symbol, oldest first): validate them and compute the forecaster's features
        at the last bar (:func:`raytrade.serving.steps.feature_rows`), one call for a whole batch of requests.

        Returns, in order, ``{"rows": DataFrame (lookback, 1 + n_features), "timestamp"}`` per request (the
        caller fingerprints the bars it sent), or in its place the error that request's bars raised:
        ``DataValidationError`` (a rule broken; names rule, column, timestamp) or ``InsufficientDataError``
        (fewer than ``spec["min_bars"]`` bars).
        """
        started = time.perf_counter()
        out = [_or_error(feature_rows, frame, spec) for frame in frames]
        record_model("features", _ms(started), batch_size=len(frames))
        return out

    def from_store(self, symbols: list[str], spec: dict[str, Any]) -> list[dict[str, Any] | RaytradeError]:
        """For each symbol: its latest rows from the online store under the forecaster's feature-set version,
        with ``timestamp`` and the ``fingerprint`` of the stored bars (the prediction cache's key); or in its
        place ``FeaturesNotFoundError`` (no store configured, no unexpired window) or ``StoreUnavailableError``
        (Redis unreachable)."""
        started = time.perf_counter()
        out = [_or_error(self._latest, symbol, spec) for symbol in symbols]
        record_model("features", _ms(started), batch_size=len(symbols))
        return out

    def universe_from_bars(self, frames: dict[str, pd.DataFrame], spec: dict[str, Any],
                           reference_symbol: str | None, turbulence_window: int) -> dict[str, Any] | RaytradeError:
        """``POST /portfolio``: a universe forecaster's input rows at the last bar of every symbol's bars (features
        per symbol, then across the request's symbols) and FinRL's turbulence index there
        (:func:`raytrade.serving.portfolio_steps.universe_features`); or the error the bars raised, returned."""
        from raytrade.serving.portfolio_steps import universe_features

        started = time.perf_counter()
        out = _or_error(universe_features, frames, spec, reference_symbol, turbulence_window)
        record_model("features", _ms(started), batch_size=len(frames))
        return out

    def universe_from_store(self, symbols: list[str], spec: dict[str, Any],
                            turbulence_window: int) -> dict[str, Any] | RaytradeError:
        """``POST /portfolio`` with ``symbols``: the same from each symbol's latest window of the online store
        (:func:`raytrade.serving.portfolio_steps.universe_features_from_store`); or ``FeaturesNotFoundError`` (no
        store configured, no unexpired window of a symbol), ``StoreUnavailableError`` or ``InsufficientDataError``,
        returned."""
        from raytrade.serving.portfolio_steps import universe_features_from_store

        started = time.perf_counter()
        try:
            windows = {s: self._store(spec["feature_set_version"], s).read_latest(s) for s in symbols}
            out = universe_features_from_store(windows, spec, turbulence_window)
        except RaytradeError as exc:
            out = exc
        record_model("features", _ms(started), batch_size=len(symbols))
        return out

    def _latest(self, symbol: str, spec: dict[str, Any]) -> dict[str, Any]:
        latest = self._store(spec["feature_set_version"], symbol).read_latest(symbol)
        rows = latest.features.iloc[-spec["lookback"]:].reset_index(drop=True)
        return {"rows": rows, "timestamp": pd.Timestamp(rows["timestamp"].iloc[-1]).to_pydatetime(),
                "fingerprint": bars_fingerprint(latest.bars)}


def _or_error(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the :class:`~raytrade.errors.RaytradeError` it raised (returned in a batch's place)."""
    try:
        return fn(*args)
    except RaytradeError as exc:
        return exc


def _n_items(calls: list[list[Any]]) -> int:
    """Batch size of list-valued calls: the items they carry (``@serve.batch(batch_size_fn=...)``)."""
    return sum(len(c) for c in calls)


def _split(flat: list[Any], calls: list[list[Any]]) -> list[list[Any]]:
    out, start = [], 0
    for c in calls:
        out.append(flat[start : start + len(c)])
        start += len(c)
    return out


def load_on_device(tracking_uri: str, name: str, alias: str | None, version: str | None) -> LoadedModel:
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
        self.slot = ModelSlot(tracking_uri, model_name, alias, loader=load_on_device)
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
        return forecaster_spec(self.slot.current.obj, self.slot.current.version)

    def info(self) -> dict[str, Any]:
        return forecaster_info(self.slot, self.label)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_n_items)
    async def forecast(self, calls: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Each call is a list of items ``{"rows": unscaled feature rows, "feature_set_version"}`` (one per
        request); concurrent calls are batched (up to 64 items) into one forward pass. Per item: the forecast
        (probs, expected return, MC-dropout uncertainty), the scaled ``window`` (lookback, n_features), the
        per-output rows the agents need, and the model ``version`` (:func:`raytrade.serving.steps.forecast_items`).
        An item built for another feature-set version (the model was swapped meanwhile) gets
        ``{"stale": True}`` so the caller rebuilds it."""
        self.slot.poll()
        started = time.perf_counter()
        model = self.slot.current  # one version for the whole batch
        flat = [item for call in calls for item in call]
        results = forecast_items(model.obj, model.version, flat)
        record_model(self.label, _ms(started), batch_size=len(flat))
        return _split(results, calls)


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.1})
class Agent:
    """An RL policy ``model_name@alias``; :meth:`act` (batched) maps market inputs and account states to actions."""

    def __init__(self, tracking_uri: str, model_name: str, alias: str = "champion", label: str = "agent") -> None:
        self.slot = ModelSlot(tracking_uri, model_name, alias)
        self.label = label

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.slot.configure(config)

    async def info(self) -> dict[str, Any]:
        """The loaded policy's registry entry and shape (the ingress asks every ``versions_ttl_s``)."""
        self.slot.poll()
        return agent_info(self.slot, self.label)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_n_items)
    async def act(self, calls: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Each call is a list of items ``{"window", "columns", "outputs", "return_scale", "position",
        "unrealised_pnl", "drawdown"}`` (a :meth:`Forecaster.forecast` result plus the account state this agent
        observes, fractions); concurrent calls are batched. Per item: ``{"position": the policy's action in
        [-1, 1], "version"}``. The observation is :meth:`raytrade.rl.policy.Policy.observation`, as in training
        and the backtest (:func:`raytrade.serving.steps.act_items`)."""
        self.slot.poll()
        started = time.perf_counter()
        model = self.slot.current
        flat = [item for call in calls for item in call]
        results = act_items(model.obj, model.version, flat)
        record_model(self.label, _ms(started), batch_size=len(flat))
        return _split(results, calls)


    async def portfolio_weights(self, items: dict[str, dict[str, Any]], weights: dict[str, float],
                                unrealised_pnl: float, drawdown: float, limits: dict[str, Any]) -> dict[str, Any]:
        """``POST /portfolio``: a portfolio policy's target weights for its universe (symbol -> fraction of equity)
        from the request's per-symbol forecaster results and this agent's book
        (:func:`raytrade.serving.portfolio_steps.agent_weights`, the env's observation and action mapping), and the
        loaded ``version``."""
        from raytrade.serving.portfolio_steps import agent_weights

        self.slot.poll()
        started = time.perf_counter()
        model = self.slot.current
        out = agent_weights(model.obj, items, weights, unrealised_pnl, drawdown, limits)
        record_model(self.label, _ms(started), batch_size=1)
        return {"weights": out, "version": model.version}


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

    def combine(self, decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """For each ``{"members": {member: vote in [-1, 1]}, "position", "drawdown"}`` (current position and the
        account's drawdown from its peak, fractions): ``{"target_position", "signal", "weights",
        "drawdown_cut"}`` (:func:`raytrade.serving.steps.combine`, with the config in force)."""
        started = time.perf_counter()
        config = self.config
        out = [combine(config, d["members"], d["position"], d["drawdown"]) for d in decisions]
        record_model("combiner", _ms(started), batch_size=len(decisions))
        return out
