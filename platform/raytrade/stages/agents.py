"""The RL stage: trading-env inputs from the forecaster, agents trained in parallel, the ensemble backtest.

Used by ``raytrade pipeline`` and by ``raytrade agents`` / ``jobs/train_agents.py``:

1. :func:`agent_data`: per split, the env inputs at every bar t of the forecaster's windows: the scaled
   ``rl.features`` row, the forecaster outputs (:mod:`raytrade.rl.inputs`), the next-bar log return
   ``ln(close[t+1]/close[t])``, the gap ``ln(open[t+1]/close[t])`` (fills at the next open) and the
   24-bar realised volatility of 1-bar log returns known at t (for slippage).
2. :func:`train_and_register`: :func:`raytrade.rl.agents.train_agents` (one Ray task per agent), one MLflow
   run per agent with its per-iteration metrics, each policy registered as ``<agent_model_prefix>-<name>``.
3. :func:`backtest_strategies`: on the TEST bars every agent can trade: buy-and-hold, the forecaster signal,
   each agent, and the ensembles (rolling selection, rolling selection with retraining, Sharpe vote) through
   the risk layer, after costs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.prepare import PreparedData
from raytrade.data.schema import TIMESTAMP
from raytrade.data.windows import Windows
from raytrade.errors import ConfigError
from raytrade.evaluation import metrics_table, run_backtests
from raytrade.models.bundle import ForecasterBundle, signal_positions
from raytrade.rl.agents import AgentOutcome, RetrainPlan, train_agents
from raytrade.rl.ensemble import (
    EnsembleResult,
    best_member,
    risk_limit,
    rolling_selection,
    sharpe_or_zero,
    sharpe_vote,
)
from raytrade.rl.env import PER_BAR_KEYS, env_config, slice_env
from raytrade.rl.inputs import agent_outputs, forecast_inputs
from raytrade.rl.policy import Policy, switching_rollout
from raytrade.runtime import Progress

POLICY_LOADER = "raytrade.rl.policy:load_policy"
VOL_BARS = 24  # bars of the realised volatility used for slippage


@dataclass
class AgentData:
    """Env inputs per split (``train``/``val``/``test``), aligned with the forecaster's windows.

    Attributes:
        arrays: split -> ``features`` (n, F) scaled ``rl.features`` at t, ``forecasts`` (n, K),
            ``returns`` / ``gap_returns`` / ``volatility`` (n,) (see the module docstring).
        timestamps: split -> (n,) the bar t of each row.
        feature_names: the ``rl.features`` columns, in order.
        forecasts: split -> the raw ``forecast_windows`` outputs.
    """

    arrays: dict[str, dict[str, np.ndarray]]
    timestamps: dict[str, np.ndarray]
    feature_names: list[str]
    forecasts: dict[str, dict[str, np.ndarray]]


def bar_terms(bars: pd.DataFrame) -> pd.DataFrame:
    """Per bar t but the last (indexed by timestamp): ``gap_return = ln(open[t+1]/close[t])`` and ``volatility``
    (std of the last ``VOL_BARS`` 1-bar log returns up to t, fraction per bar), from
    :func:`raytrade_envs.ohlcv_arrays` (the env's own definition)."""
    from raytrade_envs import ohlcv_arrays

    arrays = ohlcv_arrays(bars["open"].to_numpy(np.float64), bars["close"].to_numpy(np.float64), VOL_BARS)
    return pd.DataFrame({"gap_return": arrays["gap_returns"], "volatility": arrays["volatility"]},
                        index=pd.DatetimeIndex(bars[TIMESTAMP].iloc[:-1]))


def agent_data(cfg: PipelineConfig, prepared: PreparedData, bars: pd.DataFrame, bundle: ForecasterBundle,
               windows: dict[str, Windows]) -> AgentData:
    """The env inputs of every split from ``bundle``'s outputs on ``windows``
    (:func:`~raytrade.rl.inputs.agent_outputs`: what ``rl.forecast_inputs`` needs, nothing more).

    Raises:
        ConfigError: an ``rl.features`` name is not a feature column, or uncertainty without MC dropout.
    """
    names = list(cfg.rl.features) or prepared.feature_columns
    unknown = [n for n in names if n not in prepared.feature_columns]
    if unknown:
        raise ConfigError(f"rl.features: unknown feature(s) {unknown}; see docs/FEATURES.md")
    cols = [prepared.feature_columns.index(n) for n in names]
    scale = float(bundle.model_kwargs.get("return_scale", 1.0))
    terms = bar_terms(bars)
    arrays, stamps, outs = {}, {}, {}
    for split, w in windows.items():
        out = agent_outputs(bundle, w.x, cfg.rl.forecast_inputs, seed=cfg.rl.seed)
        t = terms.reindex(pd.DatetimeIndex(pd.to_datetime(w.timestamp, utc=True)))
        arrays[split] = {"features": w.x[:, -1, cols], "forecasts": forecast_inputs(out, scale, cfg.rl.forecast_inputs),
                         "returns": w.next_return, "gap_returns": t["gap_return"].to_numpy(),
                         "volatility": t["volatility"].to_numpy()}
        stamps[split], outs[split] = w.timestamp, out
    return AgentData(arrays=arrays, timestamps=stamps, feature_names=names, forecasts=outs)


def bundle_windows(prepared: PreparedData, bundle: ForecasterBundle) -> dict[str, Windows]:
    """Windows of every split scaled with the BUNDLE's scaler and lookback (what it sees when served)."""
    from raytrade.data.windows import make_windows

    return {name: make_windows(bundle.scaler.transform(part), list(bundle.scaler.columns), bundle.lookback)
            for name, part in prepared.split.parts().items()}


def env_kwargs(cfg: PipelineConfig, arrays: dict[str, np.ndarray], *, train: bool) -> dict[str, Any]:
    """TradingEnv keyword arguments for one split: random starts and ``rl.episode_length`` for training,
    one episode over the whole split otherwise; costs, fills, slippage and reward from the config."""
    n = len(arrays["returns"])
    fill_at_open = cfg.rl.fill == "next_open"
    return env_config(
        features=arrays["features"], returns=arrays["returns"], forecasts=arrays["forecasts"], window=cfg.rl.window,
        cost_bps=cfg.backtest.cost_bps, max_position=cfg.backtest.max_position,
        episode_length=min(cfg.rl.episode_length, n - cfg.rl.window - 1) if train else None, random_start=train,
        gap_returns=arrays["gap_returns"] if fill_at_open else None,
        volatility=arrays["volatility"] if cfg.rl.slippage_vol_mult > 0 else None,
        slippage_vol_mult=cfg.rl.slippage_vol_mult,
        reward=cfg.rl.reward if train else "log_return", reward_params=dict(cfg.rl.reward_params) if train else None,
    )


def agent_model_name(cfg: PipelineConfig, agent: str) -> str:
    """Registered model name of an agent: ``<agent_model_prefix>-<agent with _ as ->``."""
    return f"{cfg.tracking.agent_model_prefix}-{agent.replace('_', '-')}"


def train_and_register(cfg: PipelineConfig, data: AgentData, run_dir: Path, tracking_uri: str, progress: Progress,
                       info: dict[str, Any], periods_per_year: float,
                       alias: str | None = None) -> tuple[dict[str, AgentOutcome], dict[str, str], dict[str, str]]:
    """Train ``rl.agents`` in parallel on Ray, log one MLflow run each and register each policy.

    Returns ``(outcomes, {agent: registered version}, {agent: MLflow run id})``. ``alias`` (default
    ``tracking.alias``) is moved to every new version; ``""`` registers without an alias.
    """
    from raytrade import tracking

    train_env = env_kwargs(cfg, data.arrays["train"], train=True)
    val_env = env_kwargs(cfg, data.arrays["val"], train=False)
    plan = retrain_plan(cfg, data)
    if plan is not None:
        progress.note(f"rolling_retrain: each agent then trains {plan.iterations} more iteration(s) before each "
                      f"of {len(plan.ends)} test windows of {cfg.ensemble.window_bars} bars")
    outcomes = train_agents(cfg.rl.agents, cfg.rl, train_env, val_env, periods_per_year, data.feature_names,
                            run_dir / "agents", on_done=lambda o: progress.note(
                                f"{o.name}: best iteration {o.best_iteration}, val Sharpe "
                                f"{o.summary()['val_sharpe']:.2f}, {o.summary()['train_seconds']:.0f} s"),
                            on_log=progress.note, retrain=plan)
    versions, run_ids = {}, {}
    for name, outcome in outcomes.items():
        with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-{name}") as run_id:
            tracking.log_params({"agent": name, "backend": outcome.backend, "algorithm": outcome.algorithm,
                                 "rl": cfg.rl.model_dump(mode="json"), "cost_bps": cfg.backtest.cost_bps, **info})
            for row in outcome.history.to_dict("records"):
                tracking.log_metrics({k: float(v) for k, v in row.items() if k != "iteration"},
                                     step=int(row["iteration"]))
            tracking.log_metrics({"best_iteration": outcome.best_iteration,
                                  "best_val_sharpe": outcome.summary()["val_sharpe"]})
            versions[name] = tracking.log_model_dir(run_dir / "agents" / name / "policy", POLICY_LOADER,
                                                    agent_model_name(cfg, name),
                                                    cfg.tracking.alias if alias is None else alias)
        run_ids[name] = run_id
    return outcomes, versions, run_ids


def all_bars(data: AgentData) -> dict[str, np.ndarray]:
    """The env inputs of train, val and test back to back (the embargo gaps between splits are skipped)."""
    parts = [data.arrays[s] for s in ("train", "val", "test")]
    return {key: np.concatenate([p[key] for p in parts]) for key in PER_BAR_KEYS}


def _test_offset(data: AgentData) -> int:
    return len(data.arrays["train"]["returns"]) + len(data.arrays["val"]["returns"])


def _window_starts(cfg: PipelineConfig, data: AgentData) -> list[int]:
    """Env steps on the TEST split at which each ensemble window starts (step j decides at test bar window-1+j)."""
    steps = len(data.arrays["test"]["returns"]) - cfg.rl.window
    return list(range(0, steps, cfg.ensemble.window_bars))


def retrain_plan(cfg: PipelineConfig, data: AgentData) -> RetrainPlan | None:
    """The :class:`RetrainPlan` of ``rolling_retrain`` (None when it is not among ``ensemble.methods``).

    Window k's first decision is at bar ``R_k`` of :func:`all_bars`; its validation window is the bars
    ``[R_k - window_bars, R_k)`` and its agents train on the bars before, ``[0, R_k - window_bars)``.
    """
    if "rolling_retrain" not in cfg.ensemble.methods:
        return None
    first = _test_offset(data) + cfg.rl.window - 1
    ends = [first + j - cfg.ensemble.window_bars for j in _window_starts(cfg, data)]
    return RetrainPlan(env=env_kwargs(cfg, all_bars(data), train=True), ends=ends,
                       iterations=cfg.ensemble.retrain_iterations)


def rolling_retrain(cfg: PipelineConfig, data: AgentData, agents: dict[str, AgentOutcome],
                    periods_per_year: float) -> tuple[EnsembleResult, dict[str, list[Any]]]:
    """FinRL's rolling ensemble with retraining: window k is traded by the agent whose window-k policy (trained
    on the bars before window k's validation window) has the best Sharpe on that validation window (the
    ``window_bars`` bars before the window). One episode over the TEST split, switching policy at each window.

    Returns the ensemble (one-hot weights per window) and, per window, ``validation_sharpe`` (agent -> Sharpe),
    ``trained_through`` (the last bar its agents trained on), ``validated_on`` (first and last bar) and
    ``first_bar`` (the window's first decision bar).
    """
    from raytrade_envs import TradingEnv

    bars, starts = all_bars(data), _window_starts(cfg, data)
    stamps = np.concatenate([data.timestamps[s] for s in ("train", "val", "test")])
    names = list(agents)
    first, w, window = _test_offset(data) + cfg.rl.window - 1, cfg.ensemble.window_bars, cfg.rl.window
    full = env_kwargs(cfg, bars, train=False)
    chosen, weights = [], []
    log: dict[str, list[Any]] = {"validation_sharpe": [], "trained_through": [], "validated_on": [], "first_bar": []}
    for k, step in enumerate(starts):
        r = first + step  # the window's first decision bar
        val_env = slice_env(full, r - w - window + 1, r + 1)  # decisions at bars r-w .. r-1
        sharpe = {name: sharpe_or_zero(agents[name].window_policies[k].evaluate(TradingEnv(**val_env))[1],
                                       periods_per_year) for name in names}
        weights.append(best_member(sharpe))
        chosen.append(agents[max(weights[-1], key=weights[-1].get)].window_policies[k])
        log["validation_sharpe"].append(sharpe)
        log["trained_through"].append(pd.Timestamp(stamps[r - w - 1]).isoformat())
        log["validated_on"].append([pd.Timestamp(stamps[r - w]).isoformat(), pd.Timestamp(stamps[r - 1]).isoformat()])
        log["first_bar"].append(pd.Timestamp(stamps[r]).isoformat())
    positions, _ = switching_rollout(TradingEnv(**env_kwargs(cfg, data.arrays["test"], train=False)), chosen, starts)
    return EnsembleResult(positions, starts, weights), log


def _member_returns(cfg: PipelineConfig, arrays: dict[str, np.ndarray], idx: np.ndarray, positions: np.ndarray):
    """Per-bar net returns of ``positions`` on bars ``idx`` with the env's accounting (fills, costs, slippage)."""
    from raytrade_envs import net_returns

    gap, slip = _frictions(cfg, arrays, idx)
    return net_returns(positions, arrays["returns"][idx], cfg.backtest.cost_bps, 0.0, gap_returns=gap, slippage=slip)


def _frictions(cfg: PipelineConfig, arrays: dict[str, np.ndarray], idx: np.ndarray):
    """``(gap_returns or None, slippage fraction or None)`` on bars ``idx``, as the env applies them."""
    gap = arrays["gap_returns"][idx] if cfg.rl.fill == "next_open" else None
    slip = cfg.rl.slippage_vol_mult * arrays["volatility"][idx] if cfg.rl.slippage_vol_mult > 0 else None
    return gap, slip


def backtest_strategies(cfg: PipelineConfig, data: AgentData, policies: dict[str, Policy],
                        prior_sharpe: dict[str, float], periods_per_year: float,
                        agents: dict[str, AgentOutcome] | None = None) -> dict[str, Any]:
    """Every strategy on the TEST bars the agents trade (bars ``window-1 .. n-2`` of the test split).

    ``policies``: agent -> policy; ``prior_sharpe``: agent -> its validation Sharpe (the ensembles' prior);
    ``agents`` (the training outcomes) only for ``rolling_retrain``, which needs each agent's window policies.

    Raises:
        ConfigError: ``rolling_retrain`` in ``ensemble.methods`` without ``agents``.

    Returns ``{"positions": {name: (n,)}, "returns": {name: (n,)}, "results": {name: BacktestResult},
    "table": str, "ensembles": {method: EnsembleResult.to_dict() + members}, "serve_weights": {...},
    "timestamps": (n,)}``.
    """
    from raytrade_envs import TradingEnv, bar_net_return

    test = data.arrays["test"]
    positions: dict[str, np.ndarray] = {}
    for name, policy in policies.items():
        positions[name] = policy.rollout(TradingEnv(**env_kwargs(cfg, test, train=False)))
    n = len(next(iter(positions.values())))
    idx = np.arange(cfg.rl.window - 1, cfg.rl.window - 1 + n)
    max_pos = cfg.backtest.max_position
    fc_positions = signal_positions(data.forecasts["test"]["probs"][idx], max_pos)
    members = {**({"forecaster": fc_positions} if cfg.ensemble.include_forecaster else {}), **positions}
    member_returns = {name: _member_returns(cfg, test, idx, pos) for name, pos in members.items()}
    val = data.arrays["val"]
    val_idx = np.arange(cfg.rl.window - 1, len(val["returns"]) - 1)
    prior = dict(prior_sharpe)
    if cfg.ensemble.include_forecaster:
        fc_val = signal_positions(data.forecasts["val"]["probs"][val_idx], max_pos)
        prior["forecaster"] = sharpe_or_zero(_member_returns(cfg, val, val_idx, fc_val), periods_per_year)

    gap, slip = _frictions(cfg, test, idx)

    def bar_return(t: int, prev: float, new: float) -> float:
        return bar_net_return(prev, new, float(test["returns"][idx[t]]), cfg.backtest.cost_bps,
                              gap_return=0.0 if gap is None else float(gap[t]),
                              slippage=0.0 if slip is None else float(slip[t]))

    def vote() -> EnsembleResult:
        return sharpe_vote(members, member_returns, prior, cfg.ensemble.window_bars, periods_per_year,
                           cfg.ensemble.temperature)

    votes: EnsembleResult | None = None
    ensembles, strategies = {}, {"buy_and_hold": np.full(n, max_pos), "forecaster": fc_positions, **positions}
    for method in cfg.ensemble.methods:
        extra: dict[str, Any] = {}
        if method == "rolling":
            res = rolling_selection(members, member_returns, prior, cfg.ensemble.window_bars, periods_per_year)
        elif method == "rolling_retrain":
            if agents is None:
                raise ConfigError("ensemble.methods: rolling_retrain retrains the agents window by window, so it "
                                  "runs with their training (raytrade agents / pipeline), not on registered ones")
            res, extra = rolling_retrain(cfg, data, agents, periods_per_year)
        else:
            res = votes = vote()
        # members already trade within +-max_position (the env's and the signal's limit); the layer re-caps
        limited, cut = risk_limit(res.positions, bar_return, max_pos, cfg.ensemble.max_drawdown,
                                  cfg.ensemble.drawdown_cut)
        strategies[f"ensemble_{method}"] = limited
        ensembles[method] = {**res.to_dict(), "bars_cut_for_drawdown": int(cut.sum()), **extra}
    if votes is None:  # the rule Serve runs is always backtested: strategy "ensemble"
        votes = vote()
        strategies["ensemble"], _ = risk_limit(votes.positions, bar_return, max_pos, cfg.ensemble.max_drawdown,
                                               cfg.ensemble.drawdown_cut)
    results = run_backtests(strategies, test["returns"][idx], cfg.backtest.cost_bps, periods_per_year,
                            gap_returns=gap, slippage=slip)
    serve_weights = votes.final_weights
    return {"positions": strategies, "results": results, "table": metrics_table(results), "ensembles": ensembles,
            "serve_weights": serve_weights, "prior_sharpe": prior, "timestamps": data.timestamps["test"][idx]}


def backtest_report(cfg: PipelineConfig, bt: dict[str, Any], periods_per_year: float) -> dict[str, Any]:
    """The ``backtest`` block of report.json."""
    stamps = bt["timestamps"]
    return {"cost_bps": cfg.backtest.cost_bps, "periods_per_year": periods_per_year, "fill": cfg.rl.fill,
            "slippage_vol_mult": cfg.rl.slippage_vol_mult, "first_bar": pd.Timestamp(stamps[0]).isoformat(),
            "last_bar": pd.Timestamp(stamps[-1]).isoformat(), "n_bars": len(stamps),
            "ensembles": bt["ensembles"], "serve_weights": bt["serve_weights"],
            "val_sharpe": bt["prior_sharpe"], "table": bt["table"]}


def rl_stage(cfg: PipelineConfig, prepared: PreparedData, bars: pd.DataFrame, bundle: ForecasterBundle,
             run_dir: Path, tracking_uri: str, progress: Progress, info: dict[str, Any], periods_per_year: float,
             forecaster_history: pd.DataFrame | None = None) -> dict[str, Any]:
    """Env inputs, agents trained in parallel and registered, every strategy backtested on TEST, the figures.

    Returns the report blocks: ``strategies``, ``rl_metrics``, ``backtest``, ``model_versions``,
    ``mlflow_run_ids`` (agents and the backtest run), ``agent_models``, ``figures`` (name -> PNG in
    ``run_dir/figures``, also MLflow artifacts of the backtest run), ``forecaster_confusion`` (test split) and,
    for callers, ``results``. ``forecaster_history`` (one row per epoch) adds the forecaster's curves.
    """
    windows = bundle_windows(prepared, bundle)
    data = agent_data(cfg, prepared, bars, bundle, windows)
    n_inputs = data.arrays["train"]["forecasts"].shape[1]
    progress.note(f"observation: {cfg.rl.window} bars x {len(data.feature_names)} features + {n_inputs} forecaster "
                  f"inputs ({', '.join(cfg.rl.forecast_inputs)}) + position, unrealised P&L, drawdown; "
                  f"reward {cfg.rl.reward}; fills {cfg.rl.fill}")
    agents, versions, run_ids = train_and_register(cfg, data, run_dir, tracking_uri, progress, info,
                                                   periods_per_year)
    bt = backtest_strategies(cfg, data, {n: o.policy for n, o in agents.items()},
                             {n: o.summary()["val_sharpe"] for n, o in agents.items()}, periods_per_year, agents)
    recorded = record_backtest(cfg, bt, windows, data, run_dir, tracking_uri, progress, periods_per_year,
                               forecaster_history, {name: o.history for name, o in agents.items()})
    return {**recorded, "rl_metrics": {name: o.summary() for name, o in agents.items()}, "model_versions": versions,
            "mlflow_run_ids": {**run_ids, "backtest": recorded["mlflow_run_ids"]["backtest"]},
            "agent_models": {name: agent_model_name(cfg, name) for name in agents}}


def record_backtest(cfg: PipelineConfig, bt: dict[str, Any], windows: dict[str, Windows], data: AgentData,
                    run_dir: Path, tracking_uri: str, progress: Progress, periods_per_year: float,
                    forecaster_history: pd.DataFrame | None = None,
                    agent_histories: dict[str, pd.DataFrame] | None = None,
                    params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the table, draw the figures into ``run_dir/figures`` and log both (and ``params``) in an MLflow run
    ``<name>-backtest``. Returns ``strategies``, ``results``, ``backtest``, ``figures``, ``forecaster_confusion``
    and ``mlflow_run_ids`` (``{"backtest": run id}``)."""
    from sklearn.metrics import confusion_matrix

    from raytrade import tracking
    from raytrade.data.labels import CLASS_NAMES
    from raytrade.evaluation.plots import save_run_figures

    print(bt["table"], file=progress.stream, flush=True)
    confusion = confusion_matrix(windows["test"].y_class, data.forecasts["test"]["probs"].argmax(axis=1),
                                 labels=list(range(len(CLASS_NAMES))))
    figures = save_run_figures(run_dir / "figures", bt["results"], bt["timestamps"], periods_per_year,
                               confusion=confusion, class_names=CLASS_NAMES, forecaster_history=forecaster_history,
                               agent_histories=agent_histories,
                               title=f"test split after {cfg.backtest.cost_bps:g} bps costs")
    progress.note(f"figures: {', '.join(figures)} in {run_dir / 'figures'}")
    strategies = {name: r.metrics for name, r in bt["results"].items()}
    # "ensemble": the served ensemble (Sharpe vote + risk layer), the name the report contract uses
    strategies.setdefault("ensemble", strategies.get("ensemble_vote"))
    with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-backtest") as run_id:
        tracking.log_params({"cost_bps": cfg.backtest.cost_bps, **(params or {})})
        for name, m in strategies.items():
            tracking.log_metrics({f"{name}.{k}": v for k, v in m.items()})
        tracking.log_text(bt["table"], "backtest_table.txt")
        for path in figures.values():
            tracking.log_artifact(path, "figures")
    return {"strategies": strategies, "results": bt["results"], "backtest": backtest_report(cfg, bt, periods_per_year),
            "figures": {name: str(path) for name, path in figures.items()},
            "forecaster_confusion": {"classes": list(CLASS_NAMES), "counts": confusion.tolist(),
                                     "rows": "true class", "columns": "predicted class"},
            "mlflow_run_ids": {"backtest": run_id}}


def champion_or_new_forecaster(cfg: PipelineConfig, prepared: PreparedData, run_dir: Path, tracking_uri: str,
                               progress: Progress, info: dict[str, Any]) -> tuple[ForecasterBundle, str]:
    """The registered ``tracking.forecaster_model@alias`` if it was trained on these feature columns;
    otherwise a forecaster trained now (and registered) with ``model``/``train``. Returns (bundle, version)."""
    from raytrade import tracking
    from raytrade.errors import ModelNotFoundError
    from raytrade.stages.forecaster import train_forecaster

    try:
        bundle, version, _ = tracking.load_model_dir(cfg.tracking.forecaster_model, cfg.tracking.alias, tracking_uri)
        if list(bundle.scaler.columns) == prepared.feature_columns:
            progress.note(f"forecaster: {cfg.tracking.forecaster_model}@{cfg.tracking.alias} (version {version})")
            return bundle, version
        progress.note(f"{cfg.tracking.forecaster_model}@{cfg.tracking.alias} uses other feature columns; training one")
    except ModelNotFoundError:
        progress.note(f"no {cfg.tracking.forecaster_model}@{cfg.tracking.alias} registered; training a forecaster")
    run = train_forecaster(cfg, prepared, run_dir, tracking_uri, progress, info)
    return run.bundle, run.version


def run_agents(cfg: PipelineConfig, data_path: str | Path | None = None) -> dict[str, Any]:
    """``raytrade agents`` / ``jobs/train_agents.py``: bars -> features -> forecaster (the registered champion,
    or a new one) -> ``rl.agents`` trained in parallel on Ray -> ensemble backtest; writes ``<run dir>/agents.json``.

    Raises:
        DataValidationError, ConfigError, InsufficientDataError: as :func:`raytrade.pipeline.run_pipeline`.
    """
    from raytrade import tracking
    from raytrade.evaluation import periods_per_year
    from raytrade.evaluation.html_report import write_html_report
    from raytrade.runtime import ray_session
    from raytrade.stages.forecaster import load_and_prepare, new_run_dir

    progress = Progress(total=4)
    run_dir = new_run_dir(cfg, "agents")
    with ray_session(cfg):
        market, prepared, info = load_and_prepare(cfg, data_path, progress)
        ppy = cfg.backtest.periods_per_year or periods_per_year(market.bars[TIMESTAMP])
        tracking_uri = tracking.resolve_tracking_uri(cfg.tracking.uri, cfg.output_dir)
        with progress.stage("forecaster", "Forecaster for the agents' observation"):
            bundle, version = champion_or_new_forecaster(cfg, prepared, run_dir, tracking_uri, progress, info)
        with progress.stage("agents", f"Agents {', '.join(cfg.rl.agents)} in parallel on Ray, "
                                      f"{cfg.rl.iterations} x {cfg.rl.train_batch_size} env steps each; backtest"):
            rl = rl_stage(cfg, prepared, market.bars, bundle, run_dir, tracking_uri, progress,
                          {"forecaster_version": version, "data_sha256": info["sha256"]}, ppy)
    report = {"run_dir": str(run_dir), "data": info, "forecaster_version": version,
              **{k: v for k, v in rl.items() if k != "results"},
              "mlflow": {"tracking_uri": tracking_uri, "agent_models": rl["agent_models"]},
              "timings_s": progress.timings, "config": cfg.model_dump(mode="json")}
    (run_dir / "agents.json").write_text(json.dumps(report, indent=2, default=str))
    page = write_html_report(report, rl["figures"], run_dir / "report.html", title=f"raytrade agents {run_dir.name}")
    tracking.log_artifact_to_run(tracking_uri, rl["mlflow_run_ids"]["backtest"], page)
    progress.note(f"report: {run_dir / 'agents.json'}; HTML: {page}")
    return report
