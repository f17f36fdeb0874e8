"""The one-hop portfolio app for CPU serving: one deployment that decides ``POST /portfolio`` in process.

``POST /portfolio`` goes proxy → a ``PortfolioDecision`` replica, which runs the universe's features → the pooled
forecaster (MC dropout) → the decision and every portfolio agent itself
(:class:`raytrade.serving.portfolio_decider.PortfolioDecider`, the same functions as the composed app
:mod:`raytrade.serving.portfolio_app`), so it answers the same weights. The replica keeps the universe's feature
state: after a full history, a request sends only each symbol's last bar sent and its new bar, and the features of
that one timestamp are computed (:class:`raytrade.features.streaming_universe.StreamingUniverse`), not the whole
history's.

Why a second app: at 30 assets the composed app's four hops and the features of every symbol's whole history cost
hundreds of milliseconds on a small CPU machine (``benchmarks/portfolio_serve.py``), more than the models. The
composed app stays for clusters where the forecaster runs on GPU replicas and stages scale apart.

One replica by default: the universe state lives in the replica, and a replica that did not see a symbol's previous
bar answers 422 ``history_gap`` rather than compute across a hole (the client then sends the full history).

Routes: ``POST /portfolio``, ``GET /health``, ``GET /models``; errors as the composed app (422 naming field and rule
for bad input, 503 for an unreachable store or a lost replica), never 500 for bad input. ``user_config``:
:class:`~raytrade.serving.portfolio_steps.PortfolioParams` (the universe run's), as the composed app's ingress.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime
import time
from typing import Any

from fastapi import FastAPI, Response
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import ReplicaUnavailableError

from raytrade.serving.deployments import load_on_device
from raytrade.serving.metrics import record_model
from raytrade.serving.portfolio_app import PortfolioAppArgs, add_portfolio_error_handlers, checked_app_args
from raytrade.serving.portfolio_decider import PortfolioDecider
from raytrade.serving.portfolio_schemas import PortfolioRequest, PortfolioResponse
from raytrade.serving.portfolio_steps import PortfolioParams
from raytrade.serving.slots import ModelSlot
from raytrade.serving.steps import agent_info, forecaster_info

__all__ = ["PortfolioDecision", "build_portfolio_decision_app", "portfolio_decision_api", "portfolio_decision_app"]

portfolio_decision_api = FastAPI(title="raytrade portfolio", description="pooled CNN+LSTM forecaster -> top-k "
                                 "weights -> exposure limits -> drawdown cut and turbulence rule (one-hop CPU app)")
add_portfolio_error_handlers(portfolio_decision_api)


@serve.deployment(num_replicas=1, max_ongoing_requests=32, health_check_period_s=1, health_check_timeout_s=5,
                  graceful_shutdown_timeout_s=5, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(portfolio_decision_api)
class PortfolioDecision:
    """The whole portfolio decision in one replica: the pooled forecaster ``forecaster_model`` and the portfolio agents
    ``agent_models`` (name -> registered model) from the MLflow registry at ``tracking_uri``, each pinned to the
    version in the ``user_config``'s :class:`~raytrade.serving.portfolio_steps.PortfolioParams` (else at ``alias``);
    ``redis_url``: the online store of ``{"symbols"}`` requests."""

    def __init__(self, tracking_uri: str, forecaster_model: str, agent_models: dict[str, str],
                 alias: str = "champion", redis_url: str | None = None, store_prefix: str = "raytrade") -> None:
        self.forecaster = ModelSlot(tracking_uri, forecaster_model, alias, loader=load_on_device)
        self.agents = {name: ModelSlot(tracking_uri, model, alias) for name, model in agent_models.items()}
        self.decider = PortfolioDecider(redis_url, store_prefix)
        self.params: PortfolioParams | None = None

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.params = PortfolioParams.model_validate(config)
        self.forecaster.configure({"alias": self.forecaster.config.alias, "version": self.params.forecaster_version})
        for name, slot in self.agents.items():
            slot.configure({"alias": slot.config.alias, "version": self.params.agent_versions.get(name)})

    def check_health(self) -> None:
        if self.forecaster.current is None:
            raise RuntimeError("no forecaster loaded")

    @portfolio_decision_api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok" if self.params is not None else "no portfolio params (user_config)"}

    @portfolio_decision_api.get("/models")
    async def models(self) -> dict[str, Any]:
        """The loaded forecaster and portfolio agents (name, version, alias, run id, loaded-at), the decision's
        parameters, and how this replica's universe state was reached (opened, appended, resent, store)."""
        return {"forecaster": forecaster_info(self.forecaster, "forecaster"),
                "agents": {name: agent_info(slot, name) for name, slot in self.agents.items()},
                "portfolio": None if self.params is None else self.params.model_dump(mode="json"),
                "app": "one-hop", "universe_state": dict(self.decider.counts)}

    @portfolio_decision_api.post("/portfolio", response_model=PortfolioResponse)
    async def portfolio(self, req: PortfolioRequest) -> Response:
        """The decision (:class:`~raytrade.serving.portfolio_schemas.PortfolioResponse`, built and validated by the
        decider, so it goes out as its JSON without FastAPI validating it again)."""
        if self.params is None:
            raise ReplicaUnavailableError("the portfolio replica has no user_config (PortfolioParams) yet")
        self.forecaster.poll()
        for slot in self.agents.values():
            slot.poll()
        started = time.perf_counter()
        out = self.decider.decide(self.forecaster.current, {n: s.current for n, s in self.agents.items()},
                                  self.params, req)
        record_model("portfolio_decision", (time.perf_counter() - started) * 1e3, batch_size=1)
        return Response(out.model_dump_json(), media_type="application/json")


def portfolio_decision_app(args: dict[str, Any] | PortfolioAppArgs, options: dict[str, Any] | None = None,
                           require_params: bool = True) -> Application:
    """The one-hop portfolio application: one ``PortfolioDecision`` deployment with ``args``
    (:class:`~raytrade.serving.portfolio_app.PortfolioAppArgs`, as the composed app's) and deployment ``options``
    (``num_replicas``, ``ray_actor_options``, ..., and ``user_config`` when ``args`` has no ``params``).

    Raises:
        ConfigError: invalid args or params (names the field), or (``require_params``) no params at all.
    """
    from raytrade.tracking import resolve_tracking_uri

    a, opts = checked_app_args(args, {k: v for k, v in (options or {}).items() if k != "name"}, "PortfolioDecision",
                               require_params)
    uri = resolve_tracking_uri(a.tracking_uri, a.output_dir)
    return PortfolioDecision.options(**opts).bind(uri, a.forecaster_model, dict(a.agent_models), a.alias, a.redis_url,
                                                  a.store_prefix)


def build_portfolio_decision_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path:
    raytrade.serving.portfolio_decision:build_portfolio_decision_app``; the ``PortfolioDecision`` options and, when
    ``args`` has no ``params``, its ``user_config`` come from the YAML)."""
    return portfolio_decision_app(args, require_params=False)
