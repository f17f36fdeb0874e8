"""The agents stage of a universe run: RLlib / SB3 agents trained on the portfolio env, registered, and rolled
through the TEST split's portfolio env for their target weights.

1. :func:`raytrade.rl.portfolio_inputs.portfolio_data`: the portfolio env's inputs of every split on the universe's
   union calendar (per-asset scaled features, the pooled forecaster's outputs, the ``tradable`` mask); the
   observation adds the current weights and account state (:mod:`raytrade_envs.observation`).
2. :func:`raytrade.stages.common.train_and_register`: ``rl.agents`` trained in parallel on Ray (one task each;
   RLlib's env runners step a :class:`raytrade_envs.VecTradingEnv` of several envs), one MLflow run and one
   registered policy each. Action -> target weights: ``project_weights(clip(action, -1, 1), **portfolio limits)``.
3. :func:`raytrade.rl.portfolio_inputs.portfolio_agent_weights`: each policy's targets on the TEST bars, which the
   portfolio stage (:func:`raytrade.stages.portfolio.portfolio_stage`) backtests next to the baselines and combines
   in its ensembles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raytrade.config import PipelineConfig
from raytrade.data.universe import Universe
from raytrade.dataset.prepare import PreparedData
from raytrade.evaluation.metrics import Annualisation
from raytrade.rl.portfolio_inputs import portfolio_agent_weights, portfolio_data, portfolio_env_kwargs
from raytrade.runtime import Progress
from raytrade.stages.common import PortfolioAgents, train_and_register


def portfolio_agents_stage(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, forecaster: Any,
                           run_dir: Path, tracking_uri: str, progress: Progress, info: dict[str, Any],
                           annual: Annualisation) -> PortfolioAgents:
    """Train ``rl.agents`` on the universe's portfolio env and roll them through the TEST split.

    Args:
        forecaster: the pooled :class:`raytrade.stages.common.ForecasterRun` (its bundle and scaled windows give
            the observation's forecast columns).
        info: MLflow params logged with every agent run (forecaster version, data hash).

    Raises:
        InsufficientDataError: a split cannot hold one env step (``rl.window + 1`` bars).
        ConfigError: an ``rl.features`` name is not a feature column.
    """
    data = portfolio_data(cfg, universe, prepared, forecaster.bundle, forecaster.windows)
    n_assets = len(data.symbols)
    progress.note(f"portfolio env: {n_assets} assets x ({len(data.asset_features)} features + "
                  f"{data.n_forecast_inputs} forecaster inputs) x {cfg.rl.window} bars + weights and account state; "
                  f"action -> target weights within the exposure limits (long_only={cfg.portfolio.long_only}, "
                  f"max_weight={cfg.portfolio.max_weight:g}, max_gross={cfg.portfolio.max_gross:g}); "
                  f"train/val/test bars {len(data.rows['train'])}/{len(data.rows['val'])}/{len(data.rows['test'])}")
    envs = (portfolio_env_kwargs(cfg, data.arrays["train"], train=True),
            portfolio_env_kwargs(cfg, data.arrays["val"], train=False), data.feature_names)
    outcomes, versions, run_ids = train_and_register(cfg, None, run_dir, tracking_uri, progress, info,
                                                     annual.periods_per_year, envs=envs)
    policies = {name: outcome.policy for name, outcome in outcomes.items()}
    weights = portfolio_agent_weights(policies, portfolio_env_kwargs(cfg, data.arrays["test"], train=False))
    return PortfolioAgents(weights=weights, rows=data.decisions("test"),
                           val_sharpe={n: float(o.summary()["val_sharpe"]) for n, o in outcomes.items()},
                           rl_metrics={n: o.summary() for n, o in outcomes.items()}, model_versions=versions,
                           mlflow_run_ids=run_ids, agent_models={n: cfg.tracking.agent_model(n) for n in outcomes},
                           outcomes=outcomes)
