"""The portfolio Serve application of a universe run: ``POST /portfolio`` (weights for a universe of symbols),
``GET /health``, ``GET /models``.

``PortfolioIngress`` (FastAPI) -> ``Features.universe_from_bars`` (features per symbol, then across the request's
symbols, and FinRL's turbulence index) -> ``Forecaster.forecast`` (one batched pass over every symbol's window: the
pooled forecaster, its scaler, MC dropout with the agents' fixed seed) ->
:func:`raytrade.serving.portfolio_steps.decide` (the backtest's ``forecaster_risk_limited`` bar:
:func:`raytrade.rl.portfolio_decision.portfolio_decision`); and, concurrently, one ``Agent-<name>`` deployment per
portfolio agent (``Agent.portfolio_weights``: the env's observation and action mapping,
:func:`raytrade.serving.portfolio_steps.agent_weights`), each on its own book. The decision's parameters (universe,
top-k, exposure limits, drawdown cut, turbulence window and the threshold of the run's TRAIN bars, the pinned
forecaster and agent versions) are the ingress's ``user_config``
(:class:`~raytrade.serving.portfolio_steps.PortfolioParams`), stored with the deployment by
:func:`raytrade.serving.deploy.deploy_portfolio`; never read from a local file.

A separate application from the single-symbol ensemble app (:mod:`raytrade.serving.app`, ``/predict``): a universe
run's agents are portfolio policies (one action per asset). Both serve at ``route_prefix`` ``/`` by default, so one
Serve instance runs one of them at a time unless one gets another prefix.

Errors: a malformed body, a symbol outside the universe, a weight outside the limits, bad or too few bars are 422
naming the field (``detail[].loc``, e.g. ``["body", "bars", "SPY", "low"]``) and the rule; symbols the online store
has no window of (or no store configured) are 422 ``not in the online store``; an unreachable Redis or a lost replica
is 503; never a 500 for bad input.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' types at runtime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from raytrade.data.schema import OHLCV_COLUMNS
from raytrade.errors import ConfigError, DataValidationError, InsufficientDataError
from raytrade.serving.deployments import Agent, Features, Forecaster
from raytrade.serving.ingress import add_error_handlers
from raytrade.serving.portfolio_schemas import PortfolioRequest, PortfolioResponse
from raytrade.serving.portfolio_steps import PortfolioParams, agent_items, decide
from raytrade.serving.schemas import POSITION_LIMIT, BarIn
from raytrade.store import FeaturesNotFoundError, StoreUnavailableError

__all__ = ["PORTFOLIO_APP_NAME", "PortfolioAppArgs", "PortfolioIngress", "build_portfolio_app", "portfolio_app"]

PORTFOLIO_APP_NAME = "raytrade-portfolio"
#: deployment options of the portfolio app when the caller gives none (a small CPU machine)
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "PortfolioIngress": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 32},
    "Features": {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 16},
    "Forecaster": {"ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 64},
    "Agent": {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 32},
}

def _detail(status: int, loc: list[Any], msg: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": loc, "msg": msg, "type": kind}]})


async def _bad_bars(request: Request, exc: Exception) -> JSONResponse:
    """Bars that break a rule (or are too few): 422 at ``["body", "bars", symbol, column]`` naming the rule."""
    symbol, column = getattr(exc, "symbol", None), getattr(exc, "column", None)
    loc = ["body", "bars", *([symbol] if symbol else []), *([column] if column else [])]
    return _detail(422, loc, str(exc), getattr(exc, "rule", type(exc).__name__))


async def _no_window(request: Request, exc: Exception) -> JSONResponse:
    """Symbols the online store has no window of, or no store at all: 422 on ``symbols``."""
    symbol = getattr(exc, "symbol", None)
    return _detail(422, ["body", "symbols", *([symbol] if symbol else [])],
                   f"not in the online store: {exc}; send the recent bars of every symbol as `bars`", "missing")


async def _store_down(request: Request, exc: Exception) -> JSONResponse:
    return _detail(503, ["body", "symbols"], f"{exc}; send the recent bars of every symbol as `bars` to decide without "
                                             "the online store", "store_unavailable")


def add_portfolio_error_handlers(app: FastAPI) -> None:
    """The portfolio apps' error answers (:func:`raytrade.serving.ingress.add_error_handlers`, with bars, stored
    windows and the store named per symbol: 422 naming field and rule for bad input, 503 for an unreachable store or
    a lost replica, never 500 for bad input) and request metrics, on ``app`` (the composed and the one-hop app)."""
    add_error_handlers(app, {DataValidationError: _bad_bars, InsufficientDataError: _bad_bars,
                             FeaturesNotFoundError: _no_window, StoreUnavailableError: _store_down})


portfolio_api = FastAPI(title="raytrade portfolio", description="pooled CNN+LSTM forecaster -> top-k weights -> "
                                                                 "exposure limits -> drawdown cut and turbulence rule")
add_portfolio_error_handlers(portfolio_api)


def _invalid(loc: tuple[Any, ...], msg: str, kind: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", *loc), "msg": msg, "type": kind}])


def bars_frame(symbol: str, bars: list[BarIn]) -> pd.DataFrame:
    """One symbol's request bars as an OHLCV frame with ``symbol`` and UTC ``timestamp`` (order kept as sent)."""
    return pd.DataFrame({
        "timestamp": pd.to_datetime([b.timestamp for b in bars], utc=True),
        "symbol": symbol,
        **{col: np.fromiter((getattr(b, col) for b in bars), np.float64, len(bars)) for col in OHLCV_COLUMNS},
    })


def check_request(req: PortfolioRequest, params: PortfolioParams) -> list[str]:
    """The request's symbols in the universe's order, after checking them and the held weights against ``params``.

    Raises:
        RequestValidationError: (422) a symbol outside the universe (``bars.<symbol>`` or ``symbols``), a weight of
            a symbol not in the request, a short in a long-only book, or a gross exposure above
            ``POSITION_LIMIT x max(1, max_gross)`` (``weights.<symbol>`` / ``weights``).
    """
    universe = list(params.symbols)
    field = "bars" if req.bars is not None else "symbols"
    requested = req.requested
    errors = []
    for i, symbol in enumerate(requested):
        if symbol not in universe:
            errors.append({"loc": ("body", field, symbol if field == "bars" else i),
                           "msg": f"unknown symbol {symbol!r}: this deployment serves the universe {universe}",
                           "type": "unknown_symbol"})
    for symbol, w in req.weights.items():
        if symbol not in requested:
            errors.append({"loc": ("body", "weights", symbol), "msg": f"weight of {symbol!r}, which is not in the "
                           f"request's {field}: send its bars (a held asset is part of the decision)",
                           "type": "unknown_symbol"})
        elif params.long_only and w < 0:
            errors.append({"loc": ("body", "weights", symbol), "msg": f"weight {w!r} of {symbol!r} is a short, but "
                           "the book is long-only (portfolio.long_only)", "type": "long_only"})
    if errors:
        raise RequestValidationError(errors)
    gross_cap = POSITION_LIMIT * max(1.0, params.max_gross)
    gross = float(sum(abs(w) for w in req.weights.values()))
    if gross > gross_cap:
        raise _invalid(("weights",), f"gross exposure sum |w| = {gross:g} of the held weights is above "
                       f"{gross_cap:g} (= {POSITION_LIMIT:g} x max(1, portfolio.max_gross)): weights are fractions of "
                       "equity, not percent", "gross_exposure")
    return [s for s in universe if s in requested]


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(portfolio_api)
class PortfolioIngress:
    """HTTP front of the portfolio app; ``user_config``: :class:`~raytrade.serving.portfolio_steps.PortfolioParams`."""

    def __init__(self, features: DeploymentHandle, forecaster: DeploymentHandle,
                 agents: dict[str, DeploymentHandle] | None = None) -> None:
        self.features, self.forecaster, self.agents = features, forecaster, dict(agents or {})
        self.params: PortfolioParams | None = None
        self._spec: dict[str, Any] | None = None

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.params = PortfolioParams.model_validate(config)

    async def _forecaster_spec(self, refresh: bool = False) -> dict[str, Any]:
        if refresh or self._spec is None:
            self._spec = await self.forecaster.spec.remote()
        return self._spec

    @portfolio_api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok" if self.params is not None else "no portfolio params (user_config)"}

    @portfolio_api.get("/models")
    async def models(self) -> dict[str, Any]:
        """The loaded forecaster and portfolio agents (name, version, alias, run id, loaded-at) and the decision's
        parameters."""
        info = await self.forecaster.info.remote()
        agents = {name: await handle.info.remote() for name, handle in self.agents.items()}
        return {"forecaster": info, "agents": agents, "portfolio": None if self.params is None
                else self.params.model_dump(mode="json")}

    @portfolio_api.post("/portfolio", response_model=PortfolioResponse)
    async def portfolio(self, req: PortfolioRequest) -> PortfolioResponse:
        params = self.params
        if params is None:
            raise ReplicaUnavailableError("the portfolio ingress has no user_config (PortfolioParams) yet")
        symbols = check_request(req, params)
        frames = {s: bars_frame(s, req.bars[s]) for s in symbols} if req.bars is not None else None
        for attempt in range(2):  # again if the forecaster moved to another feature set meanwhile
            spec = await self._forecaster_spec(refresh=attempt > 0)
            if frames is not None:
                feats = await self.features.universe_from_bars.remote(frames, spec, params.reference_symbol,
                                                                      params.turbulence_window)
            else:
                feats = await self.features.universe_from_store.remote(symbols, spec, params.turbulence_window)
            if isinstance(feats, BaseException):
                raise feats
            with_rows = list(feats["rows"])
            forecasts = await self.forecaster.forecast.remote(
                [{"rows": feats["rows"][s], "feature_set_version": spec["feature_set_version"]} for s in with_rows])
            if not any(fc.get("stale") for fc in forecasts):
                break
        else:
            raise ReplicaUnavailableError("the forecaster kept changing feature set; retry")
        by_symbol = {s: fc for s, fc in zip(with_rows, forecasts, strict=True)}
        versions = {fc["version"] for fc in forecasts} or {spec["version"]}
        if versions != {spec["version"]}:
            self._spec = None  # re-read the spec next time
        decision = decide(params, symbols, {s: fc["forecast"]["expected_return"] for s, fc in by_symbol.items()},
                          feats["tradable"], req.weights, req.drawdown, float(feats["turbulence"]), req.rebalance)
        agents, agent_versions = await self._agents(req, feats, by_symbol, params)
        return PortfolioResponse(
            timestamp=feats["timestamp"], forecasts={s: fc["forecast"] for s, fc in by_symbol.items()}, agents=agents,
            model_versions={"forecaster": sorted(versions)[0], **agent_versions}, tradable=feats["tradable"],
            **decision)

    async def _agents(self, req: PortfolioRequest, feats: dict[str, Any], by_symbol: dict[str, Any],
                      params: PortfolioParams) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """Every deployed portfolio agent's target weights, each on its own book (``agent_books``, else the
        request's), concurrently. 422 for a book of an agent this app does not serve."""
        unknown = [name for name in req.agent_books if name not in self.agents]
        if unknown:
            raise RequestValidationError([{"loc": ("body", "agent_books", name), "type": "unknown_agent",
                                           "msg": f"no portfolio agent {name!r} here; served: {sorted(self.agents)}"}
                                          for name in unknown])
        if not self.agents or not by_symbol:
            return {}, {}
        items = agent_items(feats, by_symbol)
        calls = {}
        for name, handle in self.agents.items():
            book = req.agent_books.get(name)
            state = (book.weights, book.unrealised_pnl, book.drawdown) if book is not None else \
                (req.weights, req.unrealised_pnl, req.drawdown)
            calls[name] = handle.portfolio_weights.remote(items, *state, params.limits())
        results = {name: await call for name, call in calls.items()}
        return ({name: r["weights"] for name, r in results.items()},
                {f"agent_{name}": r["version"] for name, r in results.items()})


class PortfolioAppArgs(BaseModel):
    """Arguments of the portfolio app (the ``args`` of its entry in a Serve config file).

    ``params`` (:class:`~raytrade.serving.portfolio_steps.PortfolioParams`) are what the universe run backtested
    with; given, they are the ingress's ``user_config`` (overriding the file's) and pin the forecaster to
    ``params.forecaster_version`` when set.
    """

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    output_dir: str = "runs"
    forecaster_model: str = "raytrade-forecaster"
    alias: str = "champion"
    agent_models: dict[str, str] = Field(default_factory=dict, description="portfolio agent -> registered model "
                                         "name (each at params.agent_versions[agent], else at `alias`)")
    redis_url: str | None = Field(None, description="online feature store; None: requests must carry bars")
    store_prefix: str = "raytrade"
    params: PortfolioParams | None = None


def checked_app_args(args: dict[str, Any] | PortfolioAppArgs, options: dict[str, Any], deployment: str,
                     require_params: bool) -> tuple[PortfolioAppArgs, dict[str, Any]]:
    """The validated app ``args`` and the options of the ``deployment`` that holds the decision's parameters, with
    ``args.params`` as its ``user_config`` (overriding the options'), checked.

    Raises:
        ConfigError: invalid args or params (names the field), or (``require_params``) params neither in the args
            nor in the options' ``user_config``.
    """
    try:
        a = PortfolioAppArgs.model_validate(args) if isinstance(args, dict) else args
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"portfolio app args: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    options = dict(options)
    if a.params is not None:
        options["user_config"] = a.params.model_dump(mode="json")
    if "user_config" not in options and require_params:
        raise ConfigError("portfolio app args: params: the decision's parameters are required (from the universe "
                          f"run: PortfolioParams.from_run), as args or as the {deployment} user_config")
    if "user_config" in options:
        try:
            PortfolioParams.model_validate(options["user_config"])
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"portfolio params: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return a, options


def portfolio_app(args: dict[str, Any] | PortfolioAppArgs, options: dict[str, dict[str, Any]] | None = None,
                  require_params: bool = True) -> Application:
    """The portfolio application: ``PortfolioIngress`` over ``Features`` and the pooled ``Forecaster``, with
    deployment ``options`` by name (default :data:`DEFAULT_OPTIONS`).

    Raises:
        ConfigError: invalid args (names the field), or (``require_params``) no ``params`` in the args nor a
            ``PortfolioIngress`` ``user_config`` in ``options``.
    """
    from raytrade.tracking import resolve_tracking_uri

    options = {**DEFAULT_OPTIONS, **(options or {})}

    def opts(name: str) -> dict[str, Any]:
        return {k: v for k, v in options.get(name, {}).items() if k != "name"}

    a, ingress_opts = checked_app_args(args, opts("PortfolioIngress"), "PortfolioIngress", require_params)
    forecaster_opts = opts("Forecaster")
    if a.params is not None and a.params.forecaster_version is not None:
        forecaster_opts["user_config"] = {**forecaster_opts.get("user_config", {}),
                                          "version": a.params.forecaster_version}
    uri = resolve_tracking_uri(a.tracking_uri, a.output_dir)
    features = Features.options(**opts("Features")).bind(a.redis_url, a.store_prefix)
    forecaster = Forecaster.options(**forecaster_opts).bind(uri, a.forecaster_model, a.alias)
    agents = {}
    for name, model in a.agent_models.items():
        agent_opts = {**DEFAULT_OPTIONS["Agent"], **opts(f"Agent-{name}")}
        version = None if a.params is None else a.params.agent_versions.get(name)
        if version is not None:
            agent_opts["user_config"] = {**agent_opts.get("user_config", {}), "version": version}
        agents[name] = Agent.options(name=f"Agent-{name}", **agent_opts).bind(uri, model, a.alias, name)
    return PortfolioIngress.options(**ingress_opts).bind(features, forecaster, agents)


def build_portfolio_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path:
    raytrade.serving.portfolio_app:build_portfolio_app``; deployment options, and the ``PortfolioIngress``
    ``user_config`` when ``args`` has no ``params``, come from the YAML)."""
    return portfolio_app(args, require_params=False)
