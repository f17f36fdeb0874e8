"""Deploying the ensemble app (:mod:`raytrade.serving.app`) with Ray Serve: the one module the CLI, the jobs, the
pipeline and the notebooks deploy through.

* :func:`deploy_ensemble`: the app of a pipeline config's ``serve.config`` on the connected Ray cluster, with that
  config's registry, risk limits and online store (``raytrade pipeline``'s serve stage, ``jobs/deploy.py``);
* :func:`serve_locally`: a Serve config file on a local Ray instance until interrupted (``raytrade serve``, like
  ``serve run``);
* :func:`deploy_to_cluster`: a Serve config file onto a running cluster through Ray's REST API
  (``raytrade serve --deploy``, like ``serve deploy``);
* :func:`deploy_portfolio`: the portfolio app of a universe run (``POST /portfolio``,
  :mod:`raytrade.serving.portfolio_app`) with the parameters the run backtested with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raytrade.config import PipelineConfig
from raytrade.errors import ConfigError
from raytrade.rayauth import enable_for_client

if TYPE_CHECKING:
    from raytrade.serving.portfolio_steps import PortfolioParams

__all__ = ["deploy_ensemble", "deploy_portfolio", "deploy_to_cluster", "serve_locally"]


def _start_serve(cfg: PipelineConfig) -> None:
    """Start Serve on the connected cluster (or keep the running one) with the config's proxies: ``serve.host``,
    ``serve.port``, ``serve.proxy_location``."""
    from ray import serve

    serve.start(proxy_location=cfg.serve.proxy_location, http_options={"host": cfg.serve.host, "port": cfg.serve.port})


def deploy_ensemble(cfg: PipelineConfig, tracking_uri: str | None = None,
                    weights: dict[str, float] | None = None) -> str:
    """Deploy the Serve app of ``serve.config`` on the connected Ray cluster (local or a job's) with this
    config's registry (``tracking.*``, agents ``rl.agents``), risk limits and online store, and return its URL
    (``http://serve.host:serve.port``) once every deployment is running. ``weights`` (member -> weight) fixes
    the combiner's ensemble weights; default: the serve config's. The app outlives the calling driver.

    Raises:
        ConfigError: a bad serve config file.
        ModelNotFoundError: a model is not registered under ``tracking.alias`` (checked before deploying).
    """
    from ray import serve

    from raytrade import tracking
    from raytrade.errors import ModelNotFoundError
    from raytrade.serving.app import APP_NAME, app_from_config

    uri, alias = tracking_uri or tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir), cfg.tracking.alias
    agent_models = cfg.agent_models
    missing = [f"{m}@{alias}" for m in (cfg.tracking.forecaster_model, *agent_models.values())
               if tracking.aliased_version(uri, m, alias) is None]
    if missing:
        raise ModelNotFoundError(f"not in the MLflow registry at {uri}: {', '.join(missing)}; train them first "
                                 f"(raytrade pipeline, or raytrade agents)")
    app, app_cfg = app_from_config(cfg.serve.config, {
        "tracking_uri": uri, "forecaster_model": cfg.tracking.forecaster_model,
        "agent_models": agent_models, "alias": alias,
        **({"ensemble_weights": weights} if weights else {}), **cfg.risk_limits.model_dump(),
        "redis_url": cfg.store.url if cfg.store.enabled else None, "store_prefix": cfg.store.prefix,
    })
    _start_serve(cfg)
    serve.run(app, name=APP_NAME, route_prefix=app_cfg.get("route_prefix", "/"), blocking=False)
    return f"http://{cfg.serve.host}:{cfg.serve.port}"


def serve_locally(config: str | Path, tracking_uri: str | None = None,
                  echo: Callable[[str], None] = print) -> None:
    """Serve the app of the Serve config file ``config`` on a new local Ray instance (like ``serve run``) at the
    file's ``http_options`` (default ``127.0.0.1:8000``), ``echo`` its URL, and keep serving until interrupted
    (Ctrl-C), then shut Serve down. ``tracking_uri`` overrides the app's ``tracking_uri`` arg.

    Raises:
        ConfigError: a bad serve config file.
    """
    import ray
    from ray import serve

    from raytrade.serving.app import APP_NAME, app_from_config

    config = Path(config)
    application, app_cfg = app_from_config(config, {"tracking_uri": tracking_uri} if tracking_uri else None)
    http = (yaml.safe_load(config.read_text()) or {}).get("http_options", {})
    from raytrade.runtime import enable_serve_proxy_503

    enable_serve_proxy_503()
    ray.init(include_dashboard=False)
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)})
    serve.run(application, name=APP_NAME, route_prefix=app_cfg.get("route_prefix", "/"))
    echo(f"serving on http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)} (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()


def deploy_to_cluster(config: str | Path, address: str, tracking_uri: str | None = None) -> list[str]:
    """Deploy every application of the Serve config file ``config`` onto the running cluster whose dashboard is
    at ``address`` (e.g. ``http://127.0.0.1:8265``) through Ray's REST API (like ``serve deploy``; a changed
    ``user_config`` updates the running replicas without restarting them). ``tracking_uri`` overrides every
    application's ``tracking_uri`` arg. Returns the applications' names (``"?"`` for an unnamed one).

    Raises:
        ConfigError: the file does not exist.
    """
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    config = Path(config)
    if not config.is_file():
        raise ConfigError(f"serve config not found: {config}")
    raw = yaml.safe_load(config.read_text()) or {}
    applications = raw.get("applications") or []
    for application in applications if tracking_uri else []:
        application.setdefault("args", {})["tracking_uri"] = tracking_uri
    enable_for_client()  # the cluster's token, if this machine holds one, goes with the request
    ServeSubmissionClient(address).deploy_applications(raw)
    return [a.get("name", "?") for a in applications]


def deploy_portfolio(cfg: PipelineConfig, tracking_uri: str | None, params: PortfolioParams | dict[str, Any],
                     route_prefix: str = "/", options: dict[str, dict[str, Any]] | None = None,
                     agent_models: dict[str, str] | None = None, app: str = "one-hop") -> str:
    """Deploy the portfolio app (:mod:`raytrade.serving.portfolio_app`, ``POST /portfolio``) of a universe run on the
    connected Ray cluster and return its URL (``http://serve.host:serve.port`` + ``route_prefix``) once every
    deployment is running; the app outlives the calling driver.

    The forecaster is ``tracking.forecaster_model`` pinned to ``params.forecaster_version`` (else
    ``@tracking.alias``) from this config's registry; ``params`` (the run's universe, ``portfolio.*`` limits,
    ``ensemble.max_drawdown``/``drawdown_cut`` and the turbulence threshold of its TRAIN bars:
    :meth:`raytrade.serving.portfolio_steps.PortfolioParams.from_run`) become the ingress's ``user_config``, stored
    with the deployment. The store (``store.enabled``) answers ``{"symbols": [...]}`` requests. ``agent_models``:
    portfolio agent -> registered model name (``tracking.agent_model(name)``), each pinned to
    ``params.agent_versions[name]`` (else ``@tracking.alias``); their weights are the response's ``agents``.
    ``app``: ``one-hop`` (default; :mod:`raytrade.serving.portfolio_decision`, one deployment keeping the universe's
    feature state, so a request may send only the new bars; named ``raytrade-portfolio``) or ``composed``
    (:mod:`raytrade.serving.portfolio_app`, a deployment per stage for GPU clusters; named
    ``raytrade-portfolio-composed``). ``options``: deployment options by name (one-hop: ``PortfolioDecision``;
    composed: ``PortfolioIngress``, ``Features``, ``Forecaster``, ``Agent-<name>``), default small CPU ones.

    Raises:
        ConfigError: invalid ``params``.
        ModelNotFoundError: the forecaster (version or alias) is not registered.
    """
    from ray import serve

    from raytrade import tracking
    from raytrade.errors import ModelNotFoundError
    from raytrade.serving.portfolio_app import PORTFOLIO_APP_NAME, PortfolioAppArgs, portfolio_app
    from raytrade.serving.portfolio_decision import portfolio_decision_app
    from raytrade.serving.portfolio_steps import PortfolioParams

    if app not in ("one-hop", "composed"):
        raise ConfigError(f"portfolio app: {app!r} is not one of 'one-hop', 'composed'")

    uri = tracking_uri or tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
    try:
        p = PortfolioParams.model_validate(params) if isinstance(params, dict) else params
    except ValueError as exc:
        raise ConfigError(f"portfolio params: {exc}") from None
    name, alias = cfg.tracking.forecaster_model, cfg.tracking.alias
    if p.forecaster_version is None and tracking.aliased_version(uri, name, alias) is None:
        raise ModelNotFoundError(f"not in the MLflow registry at {uri}: {name}@{alias}; train it first "
                                 "(raytrade pipeline on a universe)")
    args = PortfolioAppArgs(tracking_uri=uri, forecaster_model=name, alias=alias, params=p,
                            agent_models=dict(agent_models or {}),
                            redis_url=cfg.store.url if cfg.store.enabled else None, store_prefix=cfg.store.prefix)
    if app == "one-hop":  # a pinned version that is not registered fails the replica's start
        application = portfolio_decision_app(args, (options or {}).get("PortfolioDecision"))
        name = PORTFOLIO_APP_NAME
    else:
        application = portfolio_app(args, options)
        name = f"{PORTFOLIO_APP_NAME}-composed"
    _start_serve(cfg)
    serve.run(application, name=name, route_prefix=route_prefix, blocking=False)
    return f"http://{cfg.serve.host}:{cfg.serve.port}{route_prefix.rstrip('/')}"
