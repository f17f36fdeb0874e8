"""Strategy backtests of the agents and their ensembles on the TEST bars the agents trade, after costs:
buy-and-hold, the forecaster signal, each agent, and the ensembles (rolling selection, rolling selection with
retraining, Sharpe vote) through the risk layer (:func:`raytrade.rl.ensemble.risk_limit`).

Per-bar accounting is the env's book (:func:`raytrade_envs.net_returns` / :func:`raytrade_envs.bar_step`: fills,
drift, costs in bps on the notional traded, slippage), so a strategy scores the same here as in the env it was
trained in. Used by the agents, backtest and pipeline stages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.errors import ConfigError
from raytrade.evaluation import metrics_table, run_backtests
from raytrade.models.bundle import signal_positions
from raytrade.rl.agents import AgentOutcome, RetrainPlan
from raytrade.rl.ensemble import EnsembleResult, best_member, risk_limit, rolling_selection, sharpe_or_zero, sharpe_vote
from raytrade.rl.env import slice_env
from raytrade.rl.env_inputs import AgentData, all_bars, env_kwargs
from raytrade.rl.policy import Policy, switching_rollout


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
    from raytrade_envs import TradingEnv, bar_step

    test = data.arrays["test"]
    positions: dict[str, np.ndarray] = {}
    for name, policy in policies.items():
        positions[name] = policy.rollout(TradingEnv(**env_kwargs(cfg, test, train=False)))
    n = len(next(iter(positions.values())))
    idx = np.arange(cfg.rl.window - 1, cfg.rl.window - 1 + n)
    limits = cfg.risk_limits
    max_pos = limits.max_position
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

    def bar_return(t: int, held: float, new: float) -> tuple[float, float]:
        step = bar_step(held, new, float(test["returns"][idx[t]]), cfg.backtest.cost_bps,
                        gap_return=0.0 if gap is None else float(gap[t]),
                        slippage=0.0 if slip is None else float(slip[t]))
        return step.net, step.held

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
        limited, cut = risk_limit(res.positions, bar_return, **limits.model_dump())
        strategies[f"ensemble_{method}"] = limited
        ensembles[method] = {**res.to_dict(), "bars_cut_for_drawdown": int(cut.sum()), **extra}
    if votes is None:  # the rule Serve runs is always backtested: strategy "ensemble"
        votes = vote()
        strategies["ensemble"], _ = risk_limit(votes.positions, bar_return, **limits.model_dump())
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

