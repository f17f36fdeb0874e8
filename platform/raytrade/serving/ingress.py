"""The HTTP front of the ensemble app (FastAPI on a Serve ingress deployment).

``POST /predict``: bars in the request, or the symbol alone (features from Redis) → ``Features`` →
``Forecaster`` (or the A/B challenger) → every ``Agent-<name>`` (in parallel) → ``Combiner`` → decision.
``POST /predict/batch``: many of those at once (the forecaster and agents batch them). ``GET /health``,
``GET /models``. Decisions are cached in Redis under (symbol, bars fingerprint, model versions, position).

Errors: malformed bodies and bad bars are 422 naming the field (``detail[].loc``) and the rule; an
unreachable Redis (for a symbol-only request) or a lost replica is 503 naming the cause; never a 500 for
bad input.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime
import asyncio
import hashlib
import json
import time
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from raytrade.errors import DataValidationError, InsufficientDataError, RaytradeError
from raytrade.serving.metrics import record_cache, record_request
from raytrade.serving.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)
from raytrade.store import FeaturesNotFoundError, OnlineFeatureStore, StoreUnavailableError, bars_fingerprint

api = FastAPI(title="raytrade", description="CNN+LSTM forecaster + RL agents, risk-limited ensemble")

REPLICA_LOST = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)
CHAMPION, CHALLENGER = "champion", "challenger"


class IngressConfig(BaseModel):
    """``user_config`` of the ``Ingress`` deployment.

    Attributes:
        challenger_share: share of requests in [0, 1] routed to the challenger forecaster (A/B split; needs a
            challenger in the app args). Routing is by a hash of (symbol, last bar timestamp), so a repeated
            request goes to the same arm.
        cache_ttl_s: seconds a cached decision lives in Redis; 0 disables the prediction cache.
        versions_ttl_s: seconds the ingress trusts its view of the model versions (cache keys) before
            asking the model deployments again.
    """

    model_config = ConfigDict(extra="forbid")

    challenger_share: float = Field(0.0, ge=0, le=1)
    cache_ttl_s: int = Field(300, ge=0)
    versions_ttl_s: float = Field(5.0, gt=0)


def _detail(status: int, loc: list[Any], msg: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": loc, "msg": msg, "type": kind}]})


class ItemError(Exception):
    """An error of item ``index`` of a batch request (the handlers put the index in ``loc``)."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


def _cause(exc: BaseException) -> BaseException:
    """The error a deployment raised, not Ray's wrapper (whose text carries the remote traceback)."""
    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return exc


def _loc(request: Request, exc: BaseException) -> tuple[list[Any], BaseException]:
    if isinstance(exc, ItemError):
        return ["body", "requests", exc.index, "bars"], _cause(exc.error)
    return ["body", "bars"], _cause(exc)


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Schema violations: 422 with each error's ``loc``, ``msg`` and ``type``. The offending input is not echoed
    (it may be NaN or infinity, which JSON cannot carry)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


@api.exception_handler(ItemError)
async def _item_error(request: Request, exc: ItemError) -> JSONResponse:
    handler = _handler_for(exc.error)
    return await handler(request, exc)


@api.exception_handler(DataValidationError)
@api.exception_handler(InsufficientDataError)
async def _bad_bars(request: Request, exc: Exception) -> JSONResponse:
    """Bars that break a validation rule (or are too few): 422 naming ``bars`` (and the column) and the rule."""
    loc, err = _loc(request, exc)
    column = getattr(err, "column", None)
    return _detail(422, loc + ([column] if column else []), str(err), getattr(err, "rule", type(err).__name__))


@api.exception_handler(FeaturesNotFoundError)
async def _no_window(request: Request, exc: Exception) -> JSONResponse:
    """A symbol-only request for a symbol the online store has no window of: 422 on ``bars``."""
    loc, err = _loc(request, exc)
    return _detail(422, loc, f"no bars in the request and {err}", "missing")


@api.exception_handler(StoreUnavailableError)
async def _store_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis unreachable and no bars in the request: 503 saying so (send ``bars`` to go without the store)."""
    loc, err = _loc(request, exc)
    return _detail(503, loc, f"{err}; send the recent bars in the request to predict without the online store",
                   "store_unavailable")


async def _replica_lost(request: Request, exc: Exception) -> JSONResponse:
    """A model replica died or is overloaded mid-request: 503, retry (Serve restarts or scales replicas)."""
    _, err = _loc(request, exc)
    return _detail(503, [], f"a model replica was unavailable ({type(err).__name__}); retry the request",
                   "replica_unavailable")


for _exc in REPLICA_LOST:
    api.add_exception_handler(_exc, _replica_lost)


def _handler_for(error: BaseException):  # noqa: ANN202
    if isinstance(error, (DataValidationError, InsufficientDataError)):
        return _bad_bars
    if isinstance(error, FeaturesNotFoundError):
        return _no_window
    if isinstance(error, StoreUnavailableError):
        return _store_down
    if isinstance(error, REPLICA_LOST):
        return _replica_lost
    raise error


@api.middleware("http")
async def _count(request: Request, call_next):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    record_request(getattr(route, "path", "unmatched"), response.status_code, (time.perf_counter() - started) * 1e3)
    return response


def bars_frame(req: PredictRequest) -> pd.DataFrame:
    """The request's bars as an OHLCV frame with ``symbol`` and UTC ``timestamp`` (order kept as sent)."""
    frame = pd.DataFrame([b.model_dump() for b in req.bars])
    frame.insert(1, "symbol", req.symbol)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


@serve.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    """HTTP front: routes each request through the feature, forecaster, agent and combiner deployments."""

    def __init__(self, features: DeploymentHandle, forecasters: dict[str, DeploymentHandle],
                 agents: dict[str, DeploymentHandle], combiner: DeploymentHandle,
                 redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.features, self.forecasters, self.agents, self.combiner = features, forecasters, agents, combiner
        self.cache = None if not redis_url else OnlineFeatureStore(
            redis_url, feature_set_version="decisions", prefix=store_prefix)
        self.config = IngressConfig()
        self._specs: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, Any] = {}
        self._versions_at = 0.0

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = IngressConfig.model_validate(config)

    # ---- model views ------------------------------------------------------------------------
    async def _spec(self, variant: str, refresh: bool = False) -> dict[str, Any]:
        if refresh or variant not in self._specs:
            self._specs[variant] = await self.forecasters[variant].spec.remote()
        return self._specs[variant]

    async def _agent_versions(self) -> dict[str, str]:
        """The agents' versions (cache keys), re-read every ``versions_ttl_s``; each re-read also drops the cached
        forecaster specs, so the forecasters' versions are re-read too."""
        if time.monotonic() - self._versions_at > self.config.versions_ttl_s:
            infos = await asyncio.gather(*(h.info.remote() for h in self.agents.values()))
            self._versions = {name: i["version"] for name, i in zip(self.agents, infos, strict=True)}
            self._specs.clear()  # re-read the forecasters' versions too
            self._versions_at = time.monotonic()
        return self._versions

    def _variant(self, req: PredictRequest) -> str:
        share = self.config.challenger_share
        if CHALLENGER not in self.forecasters or share <= 0:
            return CHAMPION
        token = f"{req.symbol}|{req.bars[-1].timestamp.isoformat() if req.bars else time.time_ns()}"
        u = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "big") / 2**64
        return CHALLENGER if u < share else CHAMPION

    # ---- prediction cache (best effort: an unreachable Redis is a miss; redis-py blocks, so off the loop) --
    def _cache_key(self, fingerprint: str, versions: dict[str, str], req: PredictRequest) -> str:
        raw = json.dumps([fingerprint, versions, repr(float(req.position))], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    async def _cache_get(self, symbol: str, key: str) -> dict[str, Any] | None:
        if self.cache is None or self.config.cache_ttl_s <= 0:
            return None
        try:
            hit = await asyncio.to_thread(self.cache.cached_prediction, symbol, key)
        except StoreUnavailableError:
            record_cache("unavailable")
            return None
        record_cache("hit" if hit is not None else "miss")
        return hit

    async def _cache_put(self, symbol: str, key: str, value: dict[str, Any]) -> None:
        if self.cache is None or self.config.cache_ttl_s <= 0:
            return
        try:
            await asyncio.to_thread(self.cache.cache_prediction, symbol, key, value, ttl_s=self.config.cache_ttl_s)
        except StoreUnavailableError:
            record_cache("unavailable")

    # ---- one decision -----------------------------------------------------------------------
    async def _members(self, req: PredictRequest, variant: str) -> dict[str, Any]:
        """Forecast and agent positions for one request (from the cache when the same bars, versions and
        position were answered before)."""
        agent_versions = await self._agent_versions()
        spec = await self._spec(variant)
        frame = bars_frame(req) if req.bars is not None else None
        for _ in range(2):  # a second pass if the forecaster was swapped to another feature set meanwhile
            if frame is not None:
                fingerprint, feats = bars_fingerprint(frame), None
            else:
                feats = await self.features.from_store.remote(req.symbol, spec)
                fingerprint = feats["fingerprint"]
            versions = {"forecaster": spec["version"], **agent_versions}
            key = self._cache_key(fingerprint, versions, req)
            hit = await self._cache_get(req.symbol, key)
            if hit is not None:
                return {**hit, "cached": True}
            if feats is None:
                feats = await self.features.from_bars.remote(frame, spec)
            fc = await self.forecasters[variant].forecast.remote(
                {"rows": feats["rows"], "feature_set_version": spec["feature_set_version"]})
            if not fc.get("stale"):
                break
            spec = await self._spec(variant, refresh=True)
        else:
            raise ReplicaUnavailableError("forecaster kept changing feature set; retry")
        if fc["version"] != spec["version"]:
            self._specs.pop(variant, None)
        item = {k: fc[k] for k in ("window", "columns", "outputs", "return_scale")}
        acts = await asyncio.gather(*(h.act.remote({**item, "position": req.position}) for h in self.agents.values()))
        members = {
            "timestamp": pd.Timestamp(feats["timestamp"]).isoformat(),
            "forecast": fc["forecast"],
            "agents": {name: a["position"] for name, a in zip(self.agents, acts, strict=True)},
            "model_versions": {"forecaster": fc["version"],
                               **{name: a["version"] for name, a in zip(self.agents, acts, strict=True)}},
        }
        await self._cache_put(req.symbol, self._cache_key(fingerprint, members["model_versions"], req), members)
        return {**members, "cached": False}

    async def _decide(self, req: PredictRequest) -> PredictResponse:
        variant = self._variant(req)
        m = await self._members(req, variant)
        fc = m["forecast"]
        signal_member = fc["probs"]["buy"] - fc["probs"]["sell"]
        decision = await self.combiner.combine.remote({"forecaster": signal_member, **m["agents"]}, req.position,
                                                      req.drawdown)
        return PredictResponse(
            symbol=req.symbol, timestamp=m["timestamp"], signal=decision["signal"],
            target_position=decision["target_position"], confidence=fc["confidence"], forecast=fc,
            agents=m["agents"], model_versions=m["model_versions"], forecaster_variant=variant,
            weights=decision["weights"], drawdown_cut=decision["drawdown_cut"], cached=m["cached"],
        )

    # ---- routes -----------------------------------------------------------------------------
    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/models")
    async def models(self) -> dict[str, Any]:
        """Every deployment's loaded model (name, version, alias, run id, loaded-at) and the ensemble config."""
        forecasters, agents, combiner = await asyncio.gather(
            asyncio.gather(*(h.info.remote() for h in self.forecasters.values())),
            asyncio.gather(*(h.info.remote() for h in self.agents.values())),
            self.combiner.info.remote())
        by_variant = dict(zip(self.forecasters, forecasters, strict=True))
        return {"forecaster": by_variant[CHAMPION], "challenger": by_variant.get(CHALLENGER),
                "agents": dict(zip(self.agents, agents, strict=True)), "ensemble": combiner,
                "ab": {"challenger_share": self.config.challenger_share if CHALLENGER in by_variant else 0.0},
                "prediction_cache": {"enabled": self.cache is not None and self.config.cache_ttl_s > 0,
                                     "ttl_s": self.config.cache_ttl_s}}

    @api.post("/predict", response_model=PredictResponse)
    async def predict(self, req: PredictRequest) -> PredictResponse:
        return await self._decide(req)

    @api.post("/predict/batch", response_model=BatchPredictResponse)
    async def predict_batch(self, batch: BatchPredictRequest) -> BatchPredictResponse:
        """Every request decided concurrently (so the forecaster and agents batch them); the first failing
        item's error is returned with its index in ``loc``."""
        results = await asyncio.gather(*(self._decide(r) for r in batch.requests), return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                if isinstance(r, (RaytradeError, *REPLICA_LOST)):
                    raise ItemError(i, r)
                raise r
        return BatchPredictResponse(predictions=results)
