"""Build the Serve application (``serve run serve_configs/ensemble.yaml`` imports :func:`build_app`).

``args`` (validated by :class:`AppArgs`): tracking_uri (default ``$MLFLOW_TRACKING_URI`` else
``sqlite:///runs/mlflow.db``), forecaster_model, agent_models ({agent name: registered model}),
alias, ensemble_weights, max_position, deadband.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.serve import Application

from raytrade.errors import ConfigError
from raytrade.serving.deployments import Agent, Forecaster, Ingress

APP_NAME = "raytrade"


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    output_dir: str = "runs"
    forecaster_model: str = "raytrade-forecaster"
    agent_models: dict[str, str] = Field(default_factory=lambda: {"ppo": "raytrade-agent-ppo"})
    alias: str = "champion"
    ensemble_weights: dict[str, float] = Field(default_factory=lambda: {"forecaster": 0.5, "ppo": 0.5})
    max_position: float = Field(1.0, gt=0, le=1)
    deadband: float = Field(0.05, ge=0, le=2, description="|target - position| below which the signal is hold")
    redis_url: str | None = Field(None, description="online feature store; None: requests must carry bars")
    store_prefix: str = "raytrade"


def _build(args: dict[str, Any], options: dict[str, dict[str, Any]]) -> Application:
    from raytrade.tracking import resolve_tracking_uri

    try:
        a = AppArgs.model_validate(args or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"serve app args: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    uri = resolve_tracking_uri(a.tracking_uri, a.output_dir)

    def opts(name: str) -> dict[str, Any]:
        return {k: v for k, v in options.get(name, {}).items() if k != "name"}

    forecaster = Forecaster.options(**opts("Forecaster")).bind(uri, a.forecaster_model, a.alias, a.redis_url,
                                                               a.store_prefix)
    agents = {
        name: Agent.options(name=f"Agent-{name}", **opts(f"Agent-{name}")).bind(uri, model, a.alias)
        for name, model in a.agent_models.items()
    }
    return Ingress.options(**opts("Ingress")).bind(forecaster, agents, a.ensemble_weights, a.max_position, a.deadband)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run`` / ``serve deploy`` (deployment options come from the YAML)."""
    return _build(args, {})


def app_from_config(path: str | Path, arg_overrides: dict[str, Any] | None = None) -> tuple[Application, dict]:
    """Build the app of the FIRST application in a Serve config file, applying its ``deployments``
    options (autoscaling_config, ray_actor_options, ...) and ``arg_overrides``.

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
    args = {**(app_cfg.get("args") or {}), **(arg_overrides or {})}
    options = {d["name"]: d for d in app_cfg.get("deployments") or []}
    return _build(args, options), app_cfg
