"""The HTTP front of the ensemble app (FastAPI on a Serve ingress deployment).

``POST /predict``: bars in the request, or the symbol alone (features from Redis) → ``Features`` →
``Forecaster`` (or the A/B challenger) → every ``Agent-<name>`` (in parallel) → ``Combiner`` → decision.
``POST /predict/batch``: many of those at once. ``GET /health``, ``GET /models``. Each request carries the account
state the agents observe (:class:`~raytrade.serving.schemas.PredictRequest`: ``account`` and per-agent
``agent_accounts``); the server keeps none. Forecasts and agent actions are cached in Redis under (symbol, bars
fingerprint, model versions, every agent's account state).

Concurrent requests are decided a batch at a time (``@serve.batch`` on the ingress): one call per downstream
deployment for the whole batch, whose methods all take a list with an item per request, and the forecaster
and agents batch again across ingress replicas. On a small machine each Serve call costs milliseconds, so
this is what lets the app keep up with a single-process server under load (benchmarks/serve_load.py).

Errors: malformed bodies, bad bars and unknown agent names in ``agent_accounts`` are 422 naming the field
(``detail[].loc``) and the rule; an unreachable Redis (for a symbol-only request) or a lost replica is 503 naming
the cause; never a 500 for bad input.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime
import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from raytrade.data.schema import OHLCV_COLUMNS
from raytrade.errors import DataValidationError, InsufficientDataError, RaytradeError
from raytrade.serving.auth import require_api_key
from raytrade.serving.metrics import record_cache, record_request
from raytrade.serving.schemas import (
    BatchPredictRequest,
    BatchPredictResponse,
    PredictRequest,
    PredictResponse,
)
from raytrade.serving.steps import forecaster_member
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
        batch_wait_ms: how long the first request of a batch waits for others (milliseconds; ``@serve.batch``'s
            ``batch_wait_timeout_s``). Longer means bigger batches and fewer Serve calls per request under load
            (throughput) but adds up to that much latency to a lone request; 0 batches only what is queued.
    """

    model_config = ConfigDict(extra="forbid")

    challenger_share: float = Field(0.0, ge=0, le=1)
    cache_ttl_s: int = Field(300, ge=0)
    versions_ttl_s: float = Field(5.0, gt=0)
    batch_wait_ms: float = Field(20.0, ge=0, le=1000)


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


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Schema violations: 422 with each error's ``loc``, ``msg`` and ``type``. The offending input is not echoed
    (it may be NaN or infinity, which JSON cannot carry)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
              for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


async def _item_error(request: Request, exc: ItemError) -> JSONResponse:
    handler = _handler_for(exc.error)
    return await handler(request, exc)


async def _bad_bars(request: Request, exc: Exception) -> JSONResponse:
    """Bars that break a validation rule (or are too few): 422 naming ``bars`` (and the column) and the rule."""
    loc, err = _loc(request, exc)
    column = getattr(err, "column", None)
    return _detail(422, loc + ([column] if column else []), str(err), getattr(err, "rule", type(err).__name__))


async def _no_window(request: Request, exc: Exception) -> JSONResponse:
    """A symbol-only request for a symbol the online store has no window of: 422 on ``bars``."""
    loc, err = _loc(request, exc)
    return _detail(422, loc, f"no bars in the request and {err}", "missing")


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


def add_error_handlers(app: FastAPI, overrides: dict[type, Callable[..., Any]] | None = None) -> None:
    """The app's error answers: 422 for a bad body, bad bars or no stored window (naming the field and rule), 503
    for an unreachable store or a lost replica; the API key check (:mod:`raytrade.serving.auth`: 401 without the
    configured key) and the request counter. Shared by every raytrade HTTP app;
    ``overrides``: exception type -> handler where an app names its fields otherwise (``/portfolio``'s bars are
    per symbol)."""
    handlers: dict[type, Callable[..., Any]] = {
        RequestValidationError: _invalid_body, ItemError: _item_error, DataValidationError: _bad_bars,
        InsufficientDataError: _bad_bars, FeaturesNotFoundError: _no_window, StoreUnavailableError: _store_down,
        **dict.fromkeys(REPLICA_LOST, _replica_lost), **(overrides or {})}
    for exc, handler in handlers.items():
        app.add_exception_handler(exc, handler)
    require_api_key(app)  # inside the counter, so refused requests are counted too
    app.middleware("http")(_count)


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


async def _count(request: Request, call_next):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    record_request(getattr(route, "path", "unmatched"), response.status_code, (time.perf_counter() - started) * 1e3)
    return response


add_error_handlers(api)


def check_agent_names(reqs: list[PredictRequest], agents: list[str], loc: list[Any] | None = None) -> None:
    """422 (:class:`RequestValidationError`) for ``agent_accounts`` naming an agent the app does not serve;
    ``loc`` is where the requests are in the body (``None``: the body is the one request)."""
    errors = [{"loc": ("body", *(() if loc is None else (*loc, i)), "agent_accounts", name),
               "msg": f"unknown agent {name!r}; this app serves {sorted(agents)}", "type": "unknown_agent"}
              for i, req in enumerate(reqs) for name in req.agent_accounts if name not in agents]
    if errors:
        raise RequestValidationError(errors)




def batch_response(results: list[PredictResponse | BaseException]) -> BatchPredictResponse:
    """``POST /predict/batch``'s answer from the requests' results in order; the first failed item raises
    :class:`ItemError` (its index goes in ``loc``) when its error is a request's own or a lost replica, else as is."""
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            if isinstance(r, (RaytradeError, *REPLICA_LOST)):
                raise ItemError(i, r)
            raise r
    return BatchPredictResponse(predictions=results)


def bars_frame(req: PredictRequest) -> pd.DataFrame:
    """The request's bars as an OHLCV frame with ``symbol`` and UTC ``timestamp`` (order kept as sent)."""
    bars = req.bars
    return pd.DataFrame({
        "timestamp": pd.to_datetime([b.timestamp for b in bars], utc=True),
        "symbol": req.symbol,
        **{col: np.fromiter((getattr(b, col) for b in bars), np.float64, len(bars)) for col in OHLCV_COLUMNS},
    })


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
        self._specs: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, Any] = {}
        self._versions_at = 0.0
        self.reconfigure({})  # defaults (incl. the batch wait); Serve then applies the deployment's user_config

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = IngressConfig.model_validate(config)
        self._decide_batch.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000.0)

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
        """Key of a request's members: the bars, the model versions and the account state each agent observes
        (``repr`` of each float, so only the same numbers hit)."""
        accounts = {name: [repr(float(v)) for v in req.agent_account(name).model_dump().values()]
                    for name in self.agents}
        raw = json.dumps([fingerprint, versions, accounts], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def _check_agents(self, reqs: list[PredictRequest], loc: list[Any] | None = None) -> None:
        check_agent_names(reqs, list(self.agents), loc)

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

    # ---- decisions, a batch at a time -------------------------------------------------------
    async def _decide(self, req: PredictRequest) -> PredictResponse:
        result = await self._decide_batch(req)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=32, max_concurrent_batches=2)  # wait: IngressConfig.batch_wait_ms
    async def _decide_batch(self, reqs: list[PredictRequest]) -> list[PredictResponse | BaseException]:
        """The requests this replica is answering concurrently, decided together: one call per downstream
        deployment (features, the forecaster arm, each agent, the combiner) for the whole batch instead of one
        per request, which is what pays for Serve's per-call cost under load. A request's own error (bad bars,
        no stored window) comes back in its place; an error of a whole stage (a lost replica) in every place."""
        results: list[PredictResponse | BaseException | None] = [None] * len(reqs)
        arms: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            arms.setdefault(self._variant(req), []).append(i)
        outcomes = await asyncio.gather(*(self._decide_arm(reqs, idx, arm, results) for arm, idx in arms.items()),
                                        return_exceptions=True)
        for idx, outcome in zip(arms.values(), outcomes, strict=True):
            if isinstance(outcome, BaseException):  # a stage failed: the arm's undecided requests get its error
                for i in idx:
                    results[i] = outcome if results[i] is None else results[i]
        return results

    async def _decide_arm(self, reqs: list[PredictRequest], idx: list[int], arm: str, results: list[Any]) -> None:
        """Decide requests ``idx`` (of ``reqs``) on forecaster arm ``arm``, writing into ``results``."""
        members: dict[int, dict[str, Any]] = {}
        agent_versions = await self._agent_versions()
        spec = await self._spec(arm)
        for _ in range(2):  # a second pass if the forecaster was swapped to another feature set meanwhile
            todo = [i for i in idx if i not in members and results[i] is None]
            if not todo:
                break
            stale = await self._members(reqs, todo, arm, spec, agent_versions, members, results)
            if not stale:
                break
            spec = await self._spec(arm, refresh=True)
        else:
            raise ReplicaUnavailableError("forecaster kept changing feature set; retry")
        order = [i for i in idx if i in members]
        if not order:
            return
        accounts = {i: reqs[i].ensemble_account for i in order}
        decisions = await self.combiner.combine.remote([
            {"members": {"forecaster": forecaster_member(members[i]["forecast"]), **members[i]["agents"]},
             "position": accounts[i].position, "drawdown": accounts[i].drawdown} for i in order])
        for i, d in zip(order, decisions, strict=True):
            m, req = members[i], reqs[i]
            results[i] = PredictResponse(
                symbol=req.symbol, timestamp=m["timestamp"], signal=d["signal"], target_position=d["target_position"],
                confidence=m["forecast"]["confidence"], forecast=m["forecast"], agents=m["agents"],
                model_versions=m["model_versions"], forecaster_variant=arm, weights=d["weights"],
                drawdown_cut=d["drawdown_cut"], cached=m["cached"])

    async def _members(self, reqs: list[PredictRequest], todo: list[int], arm: str, spec: dict[str, Any],
                       agent_versions: dict[str, str], members: dict[int, dict[str, Any]],
                       results: list[Any]) -> bool:
        """Forecast and agent positions of requests ``todo`` into ``members`` (from the prediction cache when the
        same bars, versions and account states were answered before); per-request errors into ``results``. Returns
        whether some forecasts were stale (built for the feature set of a model swapped out meanwhile)."""
        frames = {i: bars_frame(reqs[i]) for i in todo if reqs[i].bars is not None}
        fingerprints = {i: bars_fingerprint(f) for i, f in frames.items()}
        feats: dict[int, dict[str, Any]] = {}
        from_store = [i for i in todo if i not in frames]
        if from_store:
            got = await self.features.from_store.remote([reqs[i].symbol for i in from_store], spec)
            for i, g in zip(from_store, got, strict=True):
                if isinstance(g, BaseException):
                    results[i] = g
                else:
                    feats[i], fingerprints[i] = g, g["fingerprint"]
        versions = {"forecaster": spec["version"], **agent_versions}
        keys = {i: self._cache_key(fp, versions, reqs[i]) for i, fp in fingerprints.items()}
        hits = await asyncio.gather(*(self._cache_get(reqs[i].symbol, k) for i, k in keys.items()))
        for i, hit in zip(keys, hits, strict=True):
            if hit is not None:
                members[i] = {**hit, "cached": True}
        need = [i for i in frames if i not in members]
        if need:
            got = await self.features.from_bars.remote([frames[i] for i in need], spec)
            for i, g in zip(need, got, strict=True):
                if isinstance(g, BaseException):
                    results[i] = g
                else:
                    feats[i] = g
        need = [i for i in todo if i in feats and i not in members]
        if not need:
            return False
        fcs = await self.forecasters[arm].forecast.remote(
            [{"rows": feats[i]["rows"], "feature_set_version": spec["feature_set_version"]} for i in need])
        fresh = [(i, fc) for i, fc in zip(need, fcs, strict=True) if not fc.get("stale")]
        if any(fc["version"] != spec["version"] for _, fc in fresh):
            self._specs.pop(arm, None)  # the arm moved to another version: re-read its spec next time
        if fresh:
            inputs = [{k: fc[k] for k in ("window", "columns", "outputs", "return_scale")} for _, fc in fresh]
            acts = await asyncio.gather(*(
                h.act.remote([{**x, **reqs[i].agent_account(name).model_dump()}
                              for x, (i, _) in zip(inputs, fresh, strict=True)])
                for name, h in self.agents.items()))
            by_agent = dict(zip(self.agents, acts, strict=True))
            puts = []
            for j, (i, fc) in enumerate(fresh):
                m = {"timestamp": pd.Timestamp(feats[i]["timestamp"]).isoformat(), "forecast": fc["forecast"],
                     "agents": {name: a[j]["position"] for name, a in by_agent.items()},
                     "model_versions": {"forecaster": fc["version"],
                                        **{name: a[j]["version"] for name, a in by_agent.items()}}}
                members[i] = {**m, "cached": False}
                key = self._cache_key(fingerprints[i], m["model_versions"], reqs[i])
                puts.append(self._cache_put(reqs[i].symbol, key, m))
            await asyncio.gather(*puts)
        return len(fresh) < len(need)

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
        self._check_agents([req])
        return await self._decide(req)

    @api.post("/predict/batch", response_model=BatchPredictResponse)
    async def predict_batch(self, batch: BatchPredictRequest) -> BatchPredictResponse:
        """Every request decided concurrently (batched with each other and with concurrent ``/predict`` calls);
        the first failing item's error is returned with its index in ``loc``."""
        self._check_agents(batch.requests, ["requests"])
        return batch_response(await asyncio.gather(*(self._decide(r) for r in batch.requests),
                                                   return_exceptions=True))
