"""The single-process baseline of ``benchmarks/serve_load.py``: the same ensemble behind plain FastAPI/uvicorn.

One process, one uvicorn worker, no Ray: ``POST /predict`` runs the same stage functions as the Serve
deployments (:mod:`raytrade.serving.steps`: features → forecaster with MC dropout → each agent → combiner)
on the same registered models, one request at a time per thread of FastAPI's thread pool.

    python -m benchmarks.serve_baseline --tracking-uri sqlite:///runs/mlflow.db --port 8200 \\
        --agents ppo=raytrade-agent-ppo,sac=raytrade-agent-sac,td3=raytrade-agent-td3 --weights '{"ppo": 1}'
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from raytrade.errors import InsufficientDataError, RaytradeError
from raytrade.serving.ingress import bars_frame
from raytrade.serving.schemas import PredictRequest
from raytrade.serving.slots import load_registered
from raytrade.serving.steps import (
    CombinerConfig,
    act_items,
    combine,
    feature_rows,
    forecast_items,
    forecaster_member,
    forecaster_spec,
)


def create_app(tracking_uri: str, forecaster_model: str, agent_models: dict[str, str], alias: str,
               combiner: CombinerConfig) -> FastAPI:
    """A FastAPI app answering ``POST /predict`` (the Serve app's request body) with the ensemble decision."""
    forecaster = load_registered(tracking_uri, forecaster_model, alias, None)
    agents = {name: load_registered(tracking_uri, model, alias, None) for name, model in agent_models.items()}
    spec = forecaster_spec(forecaster.obj, forecaster.version)
    api = FastAPI(title="raytrade single-process baseline")

    @api.exception_handler(RaytradeError)
    async def _bad_bars(request: Request, exc: RaytradeError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": [{"loc": ["body", "bars"], "msg": str(exc)}]})

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/predict")
    def predict(req: PredictRequest) -> dict[str, Any]:
        if req.bars is None:
            raise InsufficientDataError("the baseline has no online feature store: send the bars")
        feats = feature_rows(bars_frame(req), spec)
        item = {"rows": feats["rows"], "feature_set_version": spec["feature_set_version"]}
        fc = forecast_items(forecaster.obj, forecaster.version, [item])[0]
        inputs = {k: fc[k] for k in ("window", "columns", "outputs", "return_scale")}
        positions = {name: act_items(a.obj, a.version, [{**inputs, **req.agent_account(name).model_dump()}])[0]
                     ["position"] for name, a in agents.items()}
        account = req.ensemble_account
        decision = combine(combiner, {"forecaster": forecaster_member(fc["forecast"]), **positions}, account.position,
                           account.drawdown)
        return {"symbol": req.symbol, "timestamp": feats["timestamp"].isoformat(), **decision,
                "confidence": fc["forecast"]["confidence"], "forecast": fc["forecast"], "agents": positions}

    return api


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--forecaster", default="raytrade-forecaster")
    parser.add_argument("--agents", required=True, help="name=registered model, comma separated")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--weights", default="{}", help="combiner weights as JSON")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    agents = dict(pair.split("=", 1) for pair in args.agents.split(","))
    app = create_app(args.tracking_uri, args.forecaster, agents, args.alias,
                     CombinerConfig(weights=json.loads(args.weights)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
