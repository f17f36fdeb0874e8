"""The one-hop ensemble app for CPU serving: one deployment that decides a request in process.

``POST /predict`` goes proxy → a ``Decision`` replica, which runs features → forecaster (MC dropout) → every
agent → risk-limited combiner itself, with the same functions as the composed app
(:mod:`raytrade.serving.steps`), so it answers the same decision. Concurrent requests are decided a batch at a
time (``@serve.batch``: one forecaster forward pass and one policy pass per agent for the batch). Each replica
keeps every symbol's feature state (:class:`raytrade.serving.histories.SymbolHistories`): a request may send only
its newest bar, and the online store's bar log keeps the replicas' histories one.

Why a second app: on a small CPU machine every Serve hop costs milliseconds (``benchmarks/serve_load.py``), more
than the models; the composed app (:mod:`raytrade.serving.app`: a deployment per stage) is for clusters where the
forecaster runs on GPU replicas and stages scale apart, and it keeps the A/B challenger and the prediction cache,
which this app does not have. Config: ``serve_configs/ensemble.yaml`` (this app) and
``serve_configs/ensemble.composed.yaml`` / ``ensemble.gpu.yaml`` (the composed one).

Routes: ``POST /predict``, ``POST /predict/batch``, ``GET /health``, ``GET /models``; errors as the composed app
(422 naming field and rule for bad input, 503 for an unreachable store), never 500 for bad input.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime
import asyncio
import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from raytrade.serving.decider import EnsembleDecider
from raytrade.serving.deployments import load_on_device
from raytrade.serving.ingress import add_error_handlers, batch_response, check_agent_names
from raytrade.serving.metrics import record_model
from raytrade.serving.schemas import BatchPredictRequest, BatchPredictResponse, PredictRequest, PredictResponse
from raytrade.serving.slots import ModelSlot
from raytrade.serving.steps import CombinerConfig, agent_info, forecaster_info

decision_api = FastAPI(title="raytrade", description="CNN+LSTM forecaster + RL agents, risk-limited ensemble "
                                                    "(one-hop CPU app)")
add_error_handlers(decision_api)


class DecisionConfig(BaseModel):
    """``user_config`` of the ``Decision`` deployment (changes apply without restarting replicas).

    Attributes:
        combiner: the ensemble's weights, deadband and risk limits (:class:`~raytrade.serving.steps.CombinerConfig`).
        reload_interval_s: how often (seconds) a replica re-reads the models' alias and loads the version it points
            at; 0 = never.
        batch_wait_ms: how long the first request of a batch waits for others (milliseconds); 0 batches what is
            queued while the previous batch ran, which is best on CPU (a lone request never waits).
    """

    model_config = ConfigDict(extra="forbid")

    combiner: CombinerConfig = Field(default_factory=CombinerConfig)
    reload_interval_s: float = Field(30.0, ge=0)
    batch_wait_ms: float = Field(0.0, ge=0, le=1000)


@serve.deployment(num_replicas=2, max_ongoing_requests=32, health_check_period_s=1, health_check_timeout_s=5,
                  graceful_shutdown_timeout_s=5, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(decision_api)
class Decision:
    """The whole ensemble in one replica: forecaster ``forecaster_model@alias`` and the agents ``agent_models``
    (name -> registered model) from the MLflow registry at ``tracking_uri``; symbols' bar logs in Redis at
    ``redis_url`` (None: each replica holds its own)."""

    def __init__(self, tracking_uri: str, forecaster_model: str, agent_models: dict[str, str],
                 alias: str = "champion", redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.forecaster = ModelSlot(tracking_uri, forecaster_model, alias, loader=load_on_device)
        self.agents = {name: ModelSlot(tracking_uri, model, alias) for name, model in agent_models.items()}
        self.decider = EnsembleDecider(redis_url, store_prefix)
        self.reconfigure({})

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = DecisionConfig.model_validate(config)
        for slot in (self.forecaster, *self.agents.values()):
            slot.configure({"alias": slot.config.alias, "version": slot.config.version,
                            "reload_interval_s": self.config.reload_interval_s})
        self._decide_batch.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000.0)

    def check_health(self) -> None:
        if self.forecaster.current is None:
            raise RuntimeError("no forecaster loaded")

    # ---- decisions ----------------------------------------------------------------------------------
    async def _decide(self, req: PredictRequest) -> PredictResponse:
        result = await self._decide_batch(req)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=32)  # wait: DecisionConfig.batch_wait_ms
    async def _decide_batch(self, reqs: list[PredictRequest]) -> list[PredictResponse | BaseException]:
        """The requests queued on this replica, decided together (:meth:`EnsembleDecider.decide`)."""
        self.forecaster.poll()
        for slot in self.agents.values():
            slot.poll()
        started = time.perf_counter()
        out = self.decider.decide(self.forecaster.current, {n: s.current for n, s in self.agents.items()},
                                  self.config.combiner, reqs)
        record_model("decision", (time.perf_counter() - started) * 1e3, batch_size=len(reqs))
        return out

    # ---- routes -----------------------------------------------------------------------------------
    @decision_api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @decision_api.get("/models")
    async def models(self) -> dict[str, Any]:
        """The loaded forecaster and agents (name, version, alias, run id, loaded-at), the ensemble config, and
        how many symbols' feature states this replica holds and how it reached them."""
        return {"forecaster": forecaster_info(self.forecaster, "forecaster"), "challenger": None,
                "agents": {name: agent_info(slot, name) for name, slot in self.agents.items()},
                "ensemble": {**self.config.combiner.model_dump(), "replica": serve.get_replica_context().replica_tag},
                "ab": {"challenger_share": 0.0}, "prediction_cache": {"enabled": False, "ttl_s": 0},
                "app": "one-hop", "symbols_held": self.decider.symbols_held,
                "symbol_states": self.decider.state_counts}

    @decision_api.post("/predict", response_model=PredictResponse)
    async def predict(self, req: PredictRequest) -> PredictResponse:
        check_agent_names([req], list(self.agents))
        return await self._decide(req)

    @decision_api.post("/predict/batch", response_model=BatchPredictResponse)
    async def predict_batch(self, batch: BatchPredictRequest) -> BatchPredictResponse:
        """Every request decided (batched with each other and with concurrent ``/predict`` calls); the first
        failing item's error is returned with its index in ``loc``."""
        check_agent_names(batch.requests, list(self.agents), ["requests"])
        return batch_response(await asyncio.gather(*(self._decide(r) for r in batch.requests),
                                                   return_exceptions=True))
