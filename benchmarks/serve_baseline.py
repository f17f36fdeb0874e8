"""The single-process baseline of ``benchmarks/serve_load.py``: the same ensemble behind FastAPI/uvicorn, tuned.

One process, one uvicorn worker, no Ray, tuned as one would tune it for production rather than left at defaults:
an ``async`` endpoint; torch on one thread; micro-batching (requests that arrive while a batch is computed are
decided together in the next one, up to 32, so a burst costs one forecaster pass); the compute off the event loop
(one worker thread), so requests are read and parsed while a batch runs. The decision is the one-hop Serve app's:
:class:`raytrade.serving.decider.EnsembleDecider` (the symbols' feature states, the same bar logs in Redis with
``--redis-url``), and errors are answered by the same handlers (422 naming the field and rule).

    python -m benchmarks.serve_baseline --tracking-uri sqlite:///runs/mlflow.db --port 8200 \\
        --agents ppo=raytrade-agent-ppo,sac=raytrade-agent-sac,td3=raytrade-agent-td3 --weights '{"ppo": 1}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from raytrade.serving.decider import EnsembleDecider
from raytrade.serving.ingress import add_error_handlers, check_agent_names
from raytrade.serving.schemas import PredictRequest, PredictResponse
from raytrade.serving.slots import load_registered
from raytrade.serving.steps import CombinerConfig

MAX_BATCH = 32


class MicroBatcher:
    """Collects concurrent calls into batches: one worker runs ``fn(batch) -> results`` in a thread, taking every
    call queued meanwhile (up to ``max_batch``) as the next batch. A lone call never waits for company."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch: int = MAX_BATCH) -> None:
        self.fn, self.max_batch = fn, max_batch
        self.queue: asyncio.Queue = asyncio.Queue()

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                results = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every caller of the batch gets the error
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def create_app(tracking_uri: str, forecaster_model: str, agent_models: dict[str, str], alias: str,
               combiner: CombinerConfig, redis_url: str | None = None, store_prefix: str = "raytrade") -> FastAPI:
    """A FastAPI app answering ``POST /predict`` (the Serve app's request body and answer) with the ensemble
    decision of :class:`~raytrade.serving.decider.EnsembleDecider`, micro-batched."""
    import torch

    torch.set_num_threads(1)
    forecaster = load_registered(tracking_uri, forecaster_model, alias, None)
    agents = {name: load_registered(tracking_uri, model, alias, None) for name, model in agent_models.items()}
    decider = EnsembleDecider(redis_url, store_prefix)
    batcher = MicroBatcher(lambda reqs: decider.decide(forecaster, agents, combiner, reqs))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    api = FastAPI(title="raytrade single-process baseline (tuned)", lifespan=lifespan)
    add_error_handlers(api)

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/predict", response_model=PredictResponse)
    async def predict(req: PredictRequest) -> PredictResponse:
        check_agent_names([req], list(agents))
        result = await batcher.submit(req)
        if isinstance(result, BaseException):
            raise result
        return result

    return api


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--forecaster", default="raytrade-forecaster")
    parser.add_argument("--agents", required=True, help="name=registered model, comma separated")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--weights", default="{}", help="combiner weights as JSON")
    parser.add_argument("--redis-url", default=None, help="online store of the symbols' bar logs")
    parser.add_argument("--store-prefix", default="raytrade")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    agents = dict(pair.split("=", 1) for pair in args.agents.split(","))
    app = create_app(args.tracking_uri, args.forecaster, agents, args.alias,
                     CombinerConfig(weights=json.loads(args.weights)), args.redis_url, args.store_prefix)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1, access_log=False)


if __name__ == "__main__":
    main()
