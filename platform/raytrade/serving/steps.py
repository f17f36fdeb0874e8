"""The work of each ensemble stage as plain functions, with no Serve in them.

The Serve deployments (:mod:`raytrade.serving.deployments`) call them. So do the single-process baseline in
``benchmarks/serve_load.py`` and the tests, which therefore compute the same decision as the served app.

A decision is ``feature_rows`` (bars → unscaled feature rows) → ``forecast_items`` (scaler, forecaster,
MC dropout) → ``act_items`` (each RL policy) → ``combine`` (weights, cap, drawdown cut).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from raytrade.config import FORECAST_INPUTS, FeatureConfig, RiskLimits
from raytrade.data.validation import validate_bars
from raytrade.errors import InsufficientDataError
from raytrade.rl.ensemble import combine_positions, normalise_weights, risk_limited_position
from raytrade.rl.inputs import agent_outputs, forecast_inputs

UNCERTAINTY_KEYS = ("return_std", "mutual_information", "predictive_entropy")


def forecaster_spec(bundle: Any, version: str) -> dict[str, Any]:
    """What the feature stage needs to build a forecaster's input: its registered ``version``, feature-set
    version, feature config, the scaler's ``columns``, ``lookback`` and ``min_bars`` (JSON-able, small)."""
    return {"version": version, "feature_set_version": bundle.feature_set_version,
            "features": bundle.features.model_dump(mode="json"), "columns": list(bundle.scaler.columns),
            "lookback": bundle.lookback, "min_bars": bundle.min_bars}


def _slot_info(slot: Any, label: str) -> dict[str, Any]:
    """What every ``/models`` entry has: the slot's registry entry, ``label``, reload interval, the registry's
    tracking URI and why the last background reload failed (None when it did not)."""
    return {**slot.current.info(), "label": label, "reload_interval_s": slot.config.reload_interval_s,
            "tracking_uri": slot.tracking_uri, "reload_error": slot.reload_error}


def forecaster_info(slot: Any, label: str) -> dict[str, Any]:
    """``/models``' entry of the forecaster a :class:`~raytrade.serving.slots.ModelSlot` serves: its registry entry,
    ``label``, input shape, horizon, feature-set version, MC samples, reload interval, the registry's tracking URI
    and why the last background reload failed (None when it did not)."""
    b = slot.current.obj
    return {**_slot_info(slot, label), "min_bars": b.min_bars, "lookback": b.lookback,
            "n_features": len(b.scaler.columns), "horizon_bars": b.labels.horizon,
            "feature_set_version": b.feature_set_version, "mc_samples": b.mc_samples}


def agent_info(slot: Any, label: str) -> dict[str, Any]:
    """``/models``' entry of the RL policy a :class:`~raytrade.serving.slots.ModelSlot` serves: its registry entry,
    ``label``, algorithm, window, observation size, feature names, reload interval, the registry's tracking URI and
    why the last background reload failed (None when it did not)."""
    p = slot.current.obj
    return {**_slot_info(slot, label), "algorithm": p.algorithm, "window": p.window, "obs_dim": p.obs_dim,
            "feature_names": p.feature_names}


def feature_rows(bars: pd.DataFrame, spec: dict[str, Any]) -> dict[str, Any]:
    """Validate ``bars`` (one symbol, oldest first) and compute the forecaster's features at the last bar.

    Returns ``{"rows": DataFrame (lookback, 1 + n_features) with timestamp, unscaled, oldest first,
    "timestamp": the last bar's time}``.

    Raises:
        DataValidationError: a bar breaks a validation rule (names rule, column, timestamp).
        InsufficientDataError: fewer than ``spec["min_bars"]`` bars (feature warm-up + lookback).
    """
    from raytrade.features.technical import compute_features

    if len(bars) < spec["min_bars"]:
        raise InsufficientDataError(
            f"need at least {spec['min_bars']} bars (feature warm-up + lookback {spec['lookback']}), "
            f"got {len(bars)}")
    frame = validate_bars(bars)
    feats = compute_features(frame, FeatureConfig.model_validate(spec["features"]))
    rows = feats.iloc[-spec["lookback"]:][["timestamp", *spec["columns"]]].reset_index(drop=True)
    return {"rows": rows, "timestamp": frame["timestamp"].iloc[-1].to_pydatetime()}


def forecast_items(bundle: Any, version: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Forecast a batch of items ``{"rows": unscaled feature rows, "feature_set_version"}`` in one pass (an item
    may carry its scaled ``window (1, lookback, n_features)`` float32 instead of ``rows``).

    Per item: ``forecast`` (class probabilities, expected log return, ``uncertainty`` from MC dropout when the
    bundle has ``mc_samples``), the scaled ``window`` (lookback, n_features), ``columns``, the per-output
    arrays the agents' observations need (``outputs``), ``return_scale`` and ``version``. An item built for
    another feature-set version gets ``{"stale": True, "version"}`` (the caller rebuilds it). The MC draws use
    :func:`raytrade.rl.inputs.agent_outputs`' fixed seed, so a window gets the same numbers as in the backtest.
    """
    fsv = bundle.feature_set_version  # a hash of the feature config: once per batch
    fresh = [i for i, it in enumerate(items) if it["feature_set_version"] == fsv]
    results: list[dict[str, Any]] = [{"stale": True, "version": version} for _ in items]
    if not fresh:
        return results
    windows = np.concatenate([items[i]["window"] if "window" in items[i]
                              else bundle.window_from_features(items[i]["rows"]) for i in fresh])
    inputs = FORECAST_INPUTS if bundle.mc_samples > 0 else ("probs", "expected_return", "embedding")
    out = agent_outputs(bundle, windows, inputs)
    scale = float(bundle.model_kwargs.get("return_scale", 1.0))
    columns = list(bundle.scaler.columns)
    for j, i in enumerate(fresh):
        forecast = bundle.describe(out["probs"][j], out["expected_return"][j])
        forecast["uncertainty"] = {k: float(out[k][j]) for k in UNCERTAINTY_KEYS if k in out}
        results[i] = {"forecast": forecast, "window": windows[j], "columns": columns,
                      "outputs": {k: v[j : j + 1] for k, v in out.items()}, "return_scale": scale,
                      "version": version}
    return results


def act_items(policy: Any, version: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Actions of an RL ``policy`` for items ``{"window", "columns", "outputs", "return_scale", "position",
    "unrealised_pnl", "drawdown"}`` (a :func:`forecast_items` result plus the account state this agent observes:
    position held, unrealised P&L and drawdown, fractions as the env defines them; the last two default to 0):
    ``{"position": action in [-1, 1], "version"}`` each. The observation is
    :meth:`raytrade.rl.policy.Policy.observation`, as in training and the backtest (whose env observes the same
    account state; a policy trained without it ignores it)."""
    obs = np.stack([
        policy.observation(it["window"], it["columns"],
                           forecast_inputs(it["outputs"], it["return_scale"], policy.forecast_inputs)[0],
                           it["position"], it.get("unrealised_pnl", 0.0), it.get("drawdown", 0.0))
        for it in items])
    actions = np.asarray(policy.act(obs), dtype=np.float64).reshape(len(items), -1)[:, 0]
    return [{"position": float(a), "version": version} for a in actions]


def forecaster_member(forecast: dict[str, Any]) -> float:
    """The forecaster's vote as a position in [-1, 1]: P(buy) - P(sell) (as in the ensemble backtest)."""
    return float(forecast["probs"]["buy"] - forecast["probs"]["sell"])


class CombinerConfig(RiskLimits):
    """The ensemble's weights, deadband and risk limits (:class:`~raytrade.config.RiskLimits`: ``max_position``,
    ``max_drawdown``, ``drawdown_cut``, fractions of equity); the ``Combiner``'s ``user_config``.

    Attributes:
        weights: member (``forecaster`` or an agent name) -> weight >= 0; normalised over the members present;
            missing members weigh 0; all zero means equal weights.
        deadband: |target - position| at or below which the signal is ``hold``.
    """

    weights: dict[str, float] = Field(default_factory=dict)
    deadband: float = Field(0.05, ge=0, le=2)


def combine(config: CombinerConfig, members: dict[str, float], position: float, drawdown: float) -> dict[str, Any]:
    """``{"target_position", "signal", "weights", "drawdown_cut"}`` for the members' votes, the current position
    and the account drawdown (fraction of the peak), as the ensemble backtest decides a bar.

    ``members`` are votes in [-1, 1] (an agent's action, the forecaster's P(buy) - P(sell)); like the env and
    :func:`raytrade.models.bundle.signal_positions`, a vote ``a`` means the position ``a * max_position``.
    Those positions go through :func:`raytrade.rl.ensemble.combine_positions` (weights, cap), then
    :func:`raytrade.rl.ensemble.risk_limited_position` (the backtest's risk layer). The signal is ``buy`` /
    ``sell`` when the target moves the position by more than ``deadband``, else ``hold``."""
    weights = normalise_weights(config.weights, list(members))
    positions = {name: float(np.clip(vote, -1.0, 1.0)) * config.max_position for name, vote in members.items()}
    raw = float(combine_positions(positions, weights, config.max_position))
    target, cut = risk_limited_position(raw, drawdown, config.max_position, config.max_drawdown,
                                        config.drawdown_cut)
    delta = target - position
    signal = "buy" if delta > config.deadband else "sell" if delta < -config.deadband else "hold"
    return {"target_position": target, "signal": signal, "weights": weights, "drawdown_cut": cut}
