"""Ray Serve deployments: the forecaster (batched), one per RL agent, and the FastAPI ingress that
combines them (weights + risk limit) into one decision.

Models are loaded by name@alias from the MLflow registry when a replica starts, so every replica
of a deployment serves the same registered version; ``GET /models`` reports which.
"""


import logging
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from raytrade.config import FORECAST_INPUTS
from raytrade.data.schema import validate_bars
from raytrade.errors import DataValidationError, InsufficientDataError, RaytradeError
from raytrade.rl.ensemble import combine_positions, normalise_weights
from raytrade.rl.inputs import agent_outputs, forecast_inputs
from raytrade.serving.schemas import PredictRequest, PredictResponse
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore, StoreUnavailableError

log = logging.getLogger(__name__)
api = FastAPI(title="raytrade", description="CNN+LSTM forecaster + RL agents, risk-limited ensemble")

DEFAULT_AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}


@api.exception_handler(DataValidationError)
@api.exception_handler(InsufficientDataError)
async def _bad_bars(request: Request, exc: RaytradeError) -> JSONResponse:
    """Bars that break a validation rule (or are too few): 422 naming ``bars`` and the rule."""
    loc = ["body", "bars"] + ([exc.column] if getattr(exc, "column", None) else [])
    return JSONResponse(status_code=422, content={"detail": [{"loc": loc, "msg": str(exc),
                                                              "type": getattr(exc, "rule", type(exc).__name__)}]})


@api.exception_handler(StoreUnavailableError)
async def _store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
    """Redis unreachable and no bars in the request: 503 saying so (send ``bars`` to go without the store)."""
    return JSONResponse(status_code=503, content={"detail": [{
        "loc": ["body", "bars"], "type": "store_unavailable",
        "msg": f"{exc}; send the recent bars in the request to predict without the online store"}]})


@api.exception_handler(FeaturesNotFoundError)
async def _no_window(request: Request, exc: FeaturesNotFoundError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [{
        "loc": ["body", "bars"], "type": "missing",
        "msg": f"no bars in the request and {exc}"}]})


def _bars_frame(req: PredictRequest) -> pd.DataFrame:
    frame = pd.DataFrame([b.model_dump() for b in req.bars])
    frame.insert(1, "symbol", req.symbol)
    ts = pd.to_datetime(frame["timestamp"], utc=True)
    frame["timestamp"] = ts
    return frame


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.25})
class Forecaster:
    """Loads the forecaster bundle ``model_name@alias``; ``forecast`` is batched across requests.

    With ``redis_url``, ``forecast_stored`` reads the symbol's latest window from the online store,
    under the bundle's feature-set version (so windows of another feature set are never used).
    """

    def __init__(self, tracking_uri: str, model_name: str, alias: str, redis_url: str | None = None,
                 store_prefix: str = "raytrade") -> None:
        from raytrade.tracking import load_model_dir

        self.bundle, self.version, self.run_id = load_model_dir(model_name, alias, tracking_uri)
        self.name, self.alias = model_name, alias
        self.store = None if not redis_url else OnlineFeatureStore(
            redis_url, feature_set_version=self.bundle.feature_set_version, prefix=store_prefix)

    def _outputs(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Deterministic forecast + embedding, and MC-dropout uncertainty when the bundle has MC samples."""
        inputs = FORECAST_INPUTS if self.bundle.mc_samples > 0 else ("probs", "expected_return", "embedding")
        return agent_outputs(self.bundle, windows, inputs)

    def _result(self, windows: np.ndarray, out: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        """The forecast of request ``i``, its scaled window, and its row of every output (for the agents)."""
        return {**self.bundle.describe(out["probs"][i], out["expected_return"][i]), "window": windows[i],
                "outputs": {k: v[i : i + 1] for k, v in out.items()},
                "return_scale": float(self.bundle.model_kwargs.get("return_scale", 1.0))}

    def forecast_stored(self, symbol: str) -> dict[str, Any]:
        """Forecast from the online store's latest window of ``symbol``.

        Raises:
            FeaturesNotFoundError: no store configured, or no (unexpired) window for the symbol.
            StoreUnavailableError: Redis is unreachable.
        """
        if self.store is None:
            raise FeaturesNotFoundError(self.bundle.feature_set_version, symbol, key="-",
                                        detail="no online store is configured (serve arg redis_url)")
        latest = self.store.read_latest(symbol)
        windows = self.bundle.window_from_features(latest.features)
        result = self._result(windows, self._outputs(windows), 0)
        result["timestamp"] = pd.Timestamp(latest.features["timestamp"].iloc[-1]).to_pydatetime()
        return result

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version, "run_id": self.run_id,
                "min_bars": self.bundle.min_bars, "lookback": self.bundle.lookback,
                "n_features": len(self.bundle.scaler.columns), "horizon_bars": self.bundle.labels.horizon,
                "feature_set_version": self.bundle.feature_set_version, "online_store": self.store is not None,
                "columns": list(self.bundle.scaler.columns)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def forecast(self, frames: list[pd.DataFrame]) -> list[dict[str, Any]]:
        """Per request: forecast dict + ``window`` (lookback, n_features) scaled features, ending at the last bar."""
        windows = np.concatenate([self.bundle.window_from_bars(f) for f in frames])
        out = self._outputs(windows)
        return [self._result(windows, out, i) for i in range(len(frames))]


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.1})
class Agent:
    """Loads an RL policy ``model_name@alias``; ``act`` maps an observation to a target position."""

    def __init__(self, tracking_uri: str, model_name: str, alias: str) -> None:
        from raytrade.tracking import load_model_dir

        self.policy, self.version, self.run_id = load_model_dir(model_name, alias, tracking_uri)
        self.name, self.alias = model_name, alias

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "alias": self.alias, "version": self.version, "run_id": self.run_id,
                "algorithm": self.policy.algorithm, "window": self.policy.window, "obs_dim": self.policy.obs_dim,
                "feature_names": self.policy.feature_names}

    def act(self, window: np.ndarray, columns: list[str], outputs: dict[str, np.ndarray], return_scale: float,
            position: float) -> float:
        """Target position from the scaled feature window (columns named), the forecaster's outputs for this
        request (:func:`raytrade.rl.inputs.forecast_inputs` picks the policy's inputs) and the position."""
        row = forecast_inputs(outputs, return_scale, self.policy.forecast_inputs)[0]
        return float(np.atleast_1d(self.policy.act(self.policy.observation(window, columns, row, position))[0])[0])


@serve.deployment(autoscaling_config=DEFAULT_AUTOSCALING, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """HTTP front: validates bars, asks the forecaster and every agent, combines their positions.

    target_position = :func:`raytrade.rl.ensemble.combine_positions` of the forecaster signal
    P(buy) - P(sell) and each agent's position: weighted mean clipped to +-max_position.
    """

    def __init__(self, forecaster: DeploymentHandle, agents: dict[str, DeploymentHandle],
                 weights: dict[str, float], max_position: float, deadband: float) -> None:
        self.forecaster = forecaster
        self.agents = agents
        self.weights = normalise_weights(weights, ["forecaster", *agents])
        self.max_position = max_position
        self.deadband = deadband
        self._info: dict[str, Any] | None = None

    async def _models(self) -> dict[str, Any]:
        if self._info is None:
            agents = {name: await h.info.remote() for name, h in self.agents.items()}
            self._info = {"forecaster": await self.forecaster.info.remote(), "agents": agents,
                          "ensemble": {"weights": self.weights, "max_position": self.max_position}}
        return self._info

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/models")
    async def models(self) -> dict[str, Any]:
        return await self._models()

    @api.post("/predict", response_model=PredictResponse)
    async def predict(self, req: PredictRequest) -> PredictResponse:
        info = await self._models()
        if req.bars is None:
            fc = await self.forecaster.forecast_stored.remote(req.symbol)
            timestamp = fc["timestamp"]
        else:
            min_bars = info["forecaster"]["min_bars"]
            if len(req.bars) < min_bars:  # answered as 422 on `bars` by the handler above
                raise InsufficientDataError(
                    f"need at least {min_bars} bars (feature warm-up + lookback), got {len(req.bars)}")
            frame = validate_bars(_bars_frame(req))
            fc = await self.forecaster.forecast.remote(frame)
            timestamp = frame["timestamp"].iloc[-1].to_pydatetime()
        agent_positions = {
            name: await h.act.remote(fc["window"], info["forecaster"]["columns"], fc["outputs"], fc["return_scale"],
                                    req.position)
            for name, h in self.agents.items()
        }
        members = {"forecaster": fc["probs"]["buy"] - fc["probs"]["sell"], **agent_positions}
        target = float(combine_positions(members, self.weights, self.max_position))
        delta = target - req.position
        signal = "buy" if delta > self.deadband else "sell" if delta < -self.deadband else "hold"
        versions = {"forecaster": info["forecaster"]["version"],
                    **{n: a["version"] for n, a in info["agents"].items()}}
        return PredictResponse(
            symbol=req.symbol,
            timestamp=timestamp,
            signal=signal,
            target_position=target,
            confidence=fc["confidence"],
            forecast={k: fc[k] for k in ("probs", "expected_return", "signal", "horizon_bars")},
            agents=agent_positions,
            model_versions=versions,
        )
