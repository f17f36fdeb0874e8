"""Build the Serve applications: the one-hop app (:func:`build_decision_app`, ``serve_configs/ensemble.yaml``: one
deployment decides a request in process, :mod:`raytrade.serving.decision`) and the composed app (:func:`build_app`,
``serve_configs/ensemble.composed.yaml`` and ``ensemble.gpu.yaml``: a deployment per stage).

``args`` (validated by :class:`AppArgs`) name the registered models and the store; each deployment's
``user_config`` in the config file holds what can change without restarting replicas: the models' alias,
pinned version and reload interval (:class:`~raytrade.serving.slots.ModelSlotConfig`), the combiner's
weights and risk limits (:class:`~raytrade.serving.steps.CombinerConfig`), the ingress's A/B share
and cache TTL (:class:`~raytrade.serving.ingress.IngressConfig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from ray.serve import Application

from raytrade.config import RiskLimits
from raytrade.errors import ConfigError
from raytrade.serving.decision import DecisionConfig
from raytrade.serving.deployments import Agent, Combiner, Features, Forecaster
from raytrade.serving.ingress import CHALLENGER, CHAMPION, Ingress
from raytrade.serving.steps import CombinerConfig

APP_NAME = "raytrade"
COMBINER_ARGS = ("ensemble_weights", "deadband", *RiskLimits.model_fields)


class AppArgs(RiskLimits):
    """Arguments of the ensemble app (the ``args`` of its entry in a Serve config file).

    ``ensemble_weights``, ``deadband`` and the risk limits (:class:`~raytrade.config.RiskLimits`: ``max_position``,
    ``max_drawdown``, ``drawdown_cut``) set the combiner's initial config; given explicitly they also override the
    Combiner's ``user_config`` from the file (``raytrade pipeline`` passes the Sharpe vote's latest weights this way).
    """

    tracking_uri: str | None = None
    output_dir: str = "runs"
    forecaster_model: str = "raytrade-forecaster"
    challenger_model: str | None = Field(None, description="registered forecaster for the A/B arm (None: no A/B)")
    challenger_alias: str = "challenger"
    agent_models: dict[str, str] = Field(default_factory=lambda: {"ppo": "raytrade-agent-ppo"})
    alias: str = "champion"
    ensemble_weights: dict[str, float] = Field(default_factory=dict)
    deadband: float = Field(0.05, ge=0, le=2, description="|target - position| below which the signal is hold")
    redis_url: str | None = Field(None, description="online feature store + prediction cache; None: requests "
                                                    "must carry bars")
    store_prefix: str = "raytrade"

    def combiner_config(self, file_config: dict[str, Any] | None) -> dict[str, Any]:
        """The Combiner's user_config: the file's, overridden by the combiner args set explicitly."""
        explicit = {("weights" if k == "ensemble_weights" else k): getattr(self, k)
                    for k in COMBINER_ARGS if k in self.model_fields_set}
        base = file_config if file_config is not None else {
            "weights": self.ensemble_weights, "deadband": self.deadband,
            **{k: getattr(self, k) for k in RiskLimits.model_fields}}
        merged = {**base, **explicit}
        CombinerConfig.model_validate(merged)
        return merged


def _config_error(exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    return ConfigError(f"serve app args: {'.'.join(map(str, first['loc']))}: {first['msg']}")


def _app_args(args: dict[str, Any], combiner_file_config: dict[str, Any] | None) -> tuple[AppArgs, dict[str, Any]]:
    """The validated app args and the combiner's config (the file's, overridden by explicit args).

    Raises:
        ConfigError: an invalid arg, naming it.
    """
    try:
        a = AppArgs.model_validate(args or {})
        return a, a.combiner_config(combiner_file_config)
    except ValidationError as exc:
        raise _config_error(exc) from None


def _options(options: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Deployment ``name``'s options from a config file's ``deployments`` (without its ``name``)."""
    return {k: v for k, v in options.get(name, {}).items() if k != "name"}


def _build(args: dict[str, Any], options: dict[str, dict[str, Any]]) -> Application:
    from raytrade.tracking import resolve_tracking_uri

    a, combiner_config = _app_args(args, options.get("Combiner", {}).get("user_config"))
    uri = resolve_tracking_uri(a.tracking_uri, a.output_dir)

    def opts(name: str) -> dict[str, Any]:
        return _options(options, name)

    features = Features.options(**opts("Features")).bind(a.redis_url, a.store_prefix)
    forecasters = {CHAMPION: Forecaster.options(**opts("Forecaster")).bind(uri, a.forecaster_model, a.alias)}
    if a.challenger_model:
        forecasters[CHALLENGER] = Forecaster.options(name="Forecaster-challenger", **opts("Forecaster-challenger")) \
            .bind(uri, a.challenger_model, a.challenger_alias, "challenger")
    agents = {
        name: Agent.options(name=f"Agent-{name}", **opts(f"Agent-{name}")).bind(uri, model, a.alias, name)
        for name, model in a.agent_models.items()
    }
    # the combiner's config travels only as user_config, so changing it never restarts its replicas
    combiner = Combiner.options(**{**opts("Combiner"), "user_config": combiner_config}).bind()
    return Ingress.options(**opts("Ingress")).bind(features, forecasters, agents, combiner, a.redis_url,
                                                   a.store_prefix)


def _build_decision(args: dict[str, Any], options: dict[str, dict[str, Any]]) -> Application:
    from raytrade.serving.decision import Decision
    from raytrade.tracking import resolve_tracking_uri

    opts = _options(options, "Decision")
    user_config = dict(opts.pop("user_config", None) or {})
    a, user_config["combiner"] = _app_args(args, user_config.get("combiner"))
    try:
        DecisionConfig.model_validate(user_config)
    except ValidationError as exc:
        raise _config_error(exc) from None
    if a.challenger_model:
        raise ConfigError("serve app args: challenger_model: the one-hop app (build_decision_app) has no A/B arm; "
                          "use the composed app (serve_configs/ensemble.composed.yaml) for A/B tests")
    uri = resolve_tracking_uri(a.tracking_uri, a.output_dir)
    return Decision.options(**opts, user_config=user_config).bind(
        uri, a.forecaster_model, a.agent_models, a.alias, a.redis_url, a.store_prefix)


def build_app(args: dict[str, Any]) -> Application:
    """The composed app's builder for ``serve run`` / ``serve deploy`` (deployment options come from the YAML)."""
    return _build(args, {})


def build_decision_app(args: dict[str, Any]) -> Application:
    """The one-hop app's builder (:mod:`raytrade.serving.decision`) for ``serve run`` / ``serve deploy``."""
    return _build_decision(args, {})


#: import_path of a config file's application -> the builder app_from_config uses with the file's options
BUILDERS = {"raytrade.serving.app:build_app": _build, "raytrade.serving.app:build_decision_app": _build_decision}


def app_from_config(path: str | Path, arg_overrides: dict[str, Any] | None = None) -> tuple[Application, dict]:
    """Build the app of the FIRST application in a Serve config file, applying its ``deployments``
    options (autoscaling_config, ray_actor_options, user_config, ...) and ``arg_overrides``.

    Returns ``(application, application section of the file)``. Raises ConfigError on a bad file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    apps = config.get("applications") or []
    if not apps:
        raise ConfigError(f"serve config {path}: applications: at least one application is required")
    app_cfg = apps[0]
    builder = BUILDERS.get(app_cfg.get("import_path", "raytrade.serving.app:build_app"))
    if builder is None:
        raise ConfigError(f"serve config {path}: import_path {app_cfg.get('import_path')!r} is not one of "
                          f"{sorted(BUILDERS)}")
    args = {**(app_cfg.get("args") or {}), **(arg_overrides or {})}
    options = {d["name"]: d for d in app_cfg.get("deployments") or []}
    return builder(args, options), app_cfg
