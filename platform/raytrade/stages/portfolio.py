"""The portfolio backtest of a universe run: the pooled forecaster as a cross-sectional strategy, the baselines and
the risk layer over weights, all on the universe's union calendar with the one book of
:mod:`raytrade_envs.accounting`, after costs; plus the forecaster's cross-sectional metrics, the figures and an
MLflow run.

Decision bars are the panel's bars from the first test window to the last labelled test bar (every strategy on the
same bars). At bar ``t`` an order for an asset can fill only where the universe's panel says so
(:meth:`raytrade.data.universe.Panel.fillable` for ``rl.fill``) and the asset is past its own feature warm-up (it
has a feature row at ``t``); elsewhere the book keeps its units. Strategies (weights are fractions of equity, cash
is the rest):

- ``buy_and_hold``: equal weight in the tradable assets at the first bar, then held (the weights drift);
- ``equal_weight``: equal weight, rebalanced every ``portfolio.rebalance_bars`` bars;
- ``min_variance``: PyPortfolioOpt minimum variance on ``portfolio.min_variance_window`` trailing bars, rebalanced
  every ``portfolio.rebalance_bars`` bars (FinRL's baseline);
- ``forecaster``: long the ``portfolio.top_k`` highest expected returns (long/short when ``portfolio.long_only`` is
  false: and short the ``top_k`` lowest), equal weights, within the exposure limits, rebalanced every
  ``portfolio.forecaster_rebalance_bars`` bars (default: the label horizon, the forecast's own) and held between;
- ``forecaster_risk_limited``: ``forecaster`` through the risk layer (exposure limits, drawdown cut of
  ``ensemble.max_drawdown``/``drawdown_cut``, FinRL's turbulence rule with its threshold the
  ``portfolio.turbulence_quantile`` of the index over the TRAIN bars).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raytrade.config import PipelineConfig
from raytrade.data.schema import SYMBOL, TIMESTAMP
from raytrade.data.universe import Universe
from raytrade.dataset.prepare import PreparedData
from raytrade.evaluation.cross_section import cross_sectional_metrics
from raytrade.evaluation.metrics import Annualisation
from raytrade.evaluation.portfolio import PortfolioResult, book_step, portfolio_metrics_table, run_portfolio_backtests
from raytrade.evaluation.portfolio_baselines import (
    equal_weight_buy_and_hold,
    equal_weight_rebalanced,
    minimum_variance,
    top_k_weights,
)
from raytrade.rl.portfolio_decision import past_log_returns, portfolio_decisions
from raytrade.rl.portfolio_inputs import slippage_volatility
from raytrade.rl.portfolio_risk import turbulence_index, turbulence_threshold
from raytrade.runtime import Progress
from raytrade.stages.common import PortfolioAgents
from raytrade_envs.actions import project_weights


def _pivot(timestamps: np.ndarray, symbols: np.ndarray, values: np.ndarray, index: pd.DatetimeIndex,
           columns: tuple[str, ...], fill: Any = np.nan) -> np.ndarray:
    """Long ``(n,)`` values at (timestamp, symbol) -> ``(len(index), len(columns))``, ``fill`` elsewhere."""
    frame = pd.DataFrame({TIMESTAMP: pd.DatetimeIndex(timestamps), SYMBOL: symbols.astype(str), "v": values})
    wide = frame.pivot(index=TIMESTAMP, columns=SYMBOL, values="v")
    return wide.reindex(index=index, columns=list(columns)).fillna(fill).to_numpy()


@dataclass(frozen=True)
class PortfolioBars:
    """The test split's decision bars of a universe run and every input the portfolio strategies take there.

    Attributes:
        bars: ``(T,)`` the decision bars' rows in the universe's panel; stamps: their timestamps.
        symbols: the ``A`` symbols (panel order).
        scores: ``(T, A)`` the forecaster's expected log return at each bar (NaN: no window).
        tradable: ``(T, A)`` the order can fill (panel ``fillable`` for ``rl.fill``) and the asset has a feature row.
        next_log_returns, gap_returns (None: fills at the close), slippage (None: none): ``(T, A)`` for the book.
        past: ``(T_panel, A)`` :func:`~raytrade.rl.portfolio_decision.past_log_returns` of the whole panel
            (windows reach back before the test).
        turbulence: ``(T_panel,)`` FinRL's index; threshold: its ``portfolio.turbulence_quantile`` over TRAIN bars.
        rebalance: ``(T,)`` bool, the forecaster strategy's rebalance bars (every ``forecaster_rebalance_bars``).
        train_rows: panel rows of the TRAIN bars.
    """

    bars: np.ndarray
    stamps: pd.DatetimeIndex
    symbols: tuple[str, ...]
    scores: np.ndarray
    tradable: np.ndarray
    next_log_returns: np.ndarray
    gap_returns: np.ndarray | None
    slippage: np.ndarray | None
    past: np.ndarray
    turbulence: np.ndarray
    threshold: float
    rebalance: np.ndarray
    train_rows: np.ndarray

    def step(self, cost_bps: float):
        """The book of one bar, ``(t, held (A,), target (A,)) -> (net, held after)``: :func:`book_step` on bar ``t``
        with its fills, costs and tradable mask (what the risk layer walks)."""
        return book_step(self.next_log_returns, cost_bps, gap_returns=self.gap_returns, slippage=self.slippage,
                         tradable=self.tradable)


def forecaster_rebalance_bars(cfg: PipelineConfig) -> int:
    """Bars between the forecaster strategy's rebalances: ``portfolio.forecaster_rebalance_bars``, by default the
    label horizon (the forecast's own horizon)."""
    return cfg.portfolio.forecaster_rebalance_bars or cfg.labels.horizon


def portfolio_bars(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, windows: Any,
                   expected_return: np.ndarray) -> PortfolioBars:
    """The decision bars of the test split and the strategies' inputs there (see :class:`PortfolioBars`).

    Args:
        windows: the test :class:`~raytrade.dataset.windows.Windows` of the pooled forecaster;
            expected_return: ``(n,)`` its expected log return of each window.
    """
    pcfg, panel = cfg.portfolio, universe.panel
    symbols = panel.symbols
    rows = panel.index_of(pd.DatetimeIndex(np.unique(windows.timestamp)))
    bars = np.arange(rows.min(), rows.max() + 1)
    stamps = panel.timestamps[bars]
    scores = _pivot(windows.timestamp, windows.symbol, expected_return, stamps, symbols)
    frame = prepared.features.frame
    warm = _pivot(frame[TIMESTAMP].to_numpy(), frame[SYMBOL].to_numpy(), np.ones(len(frame)), stamps, symbols, 0.0)
    past = past_log_returns(panel.close)
    slippage = cfg.rl.slippage_vol_mult * slippage_volatility(panel)[bars] if cfg.rl.slippage_vol_mult > 0 else None
    # the risk layer: FinRL's turbulence rule with its threshold from the TRAIN bars
    turbulence = turbulence_index(past, pcfg.turbulence_window, symbols=symbols, index=panel.timestamps)
    train_rows = panel.index_of(pd.DatetimeIndex(np.unique(prepared.split.train[TIMESTAMP])))
    return PortfolioBars(
        bars=bars, stamps=stamps, symbols=symbols, scores=scores,
        tradable=panel.fillable(cfg.rl.fill)[bars] & (warm > 0), next_log_returns=panel.next_log_returns()[bars],
        gap_returns=panel.next_gap_returns()[bars] if cfg.rl.fill == "next_open" else None, slippage=slippage,
        past=past, turbulence=turbulence,
        threshold=turbulence_threshold(turbulence[train_rows], pcfg.turbulence_quantile),
        rebalance=np.arange(len(bars)) % forecaster_rebalance_bars(cfg) == 0, train_rows=train_rows)


def exposure_limits(cfg: PipelineConfig) -> dict[str, Any]:
    """``portfolio``'s exposure limits as the keyword arguments of :func:`raytrade_envs.actions.project_weights`."""
    p = cfg.portfolio
    return {"long_only": p.long_only, "max_weight": p.max_weight, "max_gross": p.max_gross, "max_net": p.max_net}


def forecaster_decisions(cfg: PipelineConfig, pb: PortfolioBars) -> dict[str, np.ndarray]:
    """``forecaster_risk_limited``: the served decision (:func:`raytrade.rl.portfolio_decision.portfolio_decision`)
    walked bar by bar on the limited book's own equity, rebalancing on ``pb.rebalance`` bars.

    Returns:
        ``{"targets" (T, A), "net" (T,), "held" (T, A) weights held coming into each bar, "drawdown" (T,) of the
        limited book at each bar's close}``: the state a client's book sends with ``POST /portfolio``.
    """
    held_in = np.zeros((len(pb.bars), len(pb.symbols)))
    book = pb.step(cfg.backtest.cost_bps)

    def step(t: int, held: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        held_in[t] = held
        return book(t, held, target)

    targets, net = portfolio_decisions(pb.scores, pb.tradable, step, turbulence=pb.turbulence[pb.bars],
                                       threshold=pb.threshold, top_k=cfg.portfolio.top_k, rebalance=pb.rebalance,
                                       max_drawdown=cfg.ensemble.max_drawdown,
                                       drawdown_cut=cfg.ensemble.drawdown_cut, **exposure_limits(cfg))
    equity = np.concatenate([[1.0], np.cumprod(1.0 + net)])
    drawdown = 1.0 - equity[:-1] / np.maximum.accumulate(equity)[:-1]
    return {"targets": targets, "net": net, "held": held_in, "drawdown": drawdown}


def forecaster_weights(cfg: PipelineConfig, pb: PortfolioBars) -> np.ndarray:
    """``forecaster``: the top ``portfolio.top_k`` expected returns (and bottom k short when long/short), equal
    weights within the exposure limits, on ``pb.rebalance`` bars; NaN (keep the units) in between. ``(T, A)``."""
    w = project_weights(top_k_weights(pb.scores, pb.tradable & np.isfinite(pb.scores), cfg.portfolio.top_k,
                                      long_short=not cfg.portfolio.long_only), **exposure_limits(cfg))
    w[~pb.rebalance] = np.nan
    return w


def _forecaster_val_sharpe(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, forecaster: Any,
                           periods_per_year: float) -> float:
    """Annualised Sharpe of the ``forecaster`` strategy on the VAL split's bars (the ensembles' prior for it, as
    the agents' is their VAL Sharpe); 0 when undefined."""
    from raytrade.rl.ensemble import sharpe_or_zero

    pb = portfolio_bars(cfg, universe, prepared, forecaster.windows["val"],
                        forecaster.forecasts["val"]["expected_return"])
    result = run_portfolio_backtests({"forecaster": forecaster_weights(cfg, pb)}, pb.next_log_returns,
                                     cfg.backtest.cost_bps, periods_per_year, symbols=pb.symbols,
                                     tradable=pb.tradable, gap_returns=pb.gap_returns, slippage=pb.slippage,
                                     timestamps=pb.stamps)["forecaster"]
    return sharpe_or_zero(result.returns, periods_per_year)


def ensemble_weights(cfg: PipelineConfig, pb: PortfolioBars, results: dict[str, PortfolioResult],
                     agents: PortfolioAgents, forecaster_prior: float,
                     periods_per_year: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ensembles over weights, each through the risk layer.

    Members: every agent and (``ensemble.include_forecaster``) the ``forecaster`` strategy, each with the targets
    it traded alone (``results[name].weights``) and its net returns. ``rolling``: FinRL's rolling selection (each
    window of ``ensemble.window_bars`` bars traded by the member with the best Sharpe over the previous window,
    the VAL Sharpe for the first); ``vote``: softmax-of-Sharpe weights over the members' target weights
    (:mod:`raytrade.rl.ensemble`). Each combined series then goes through
    :func:`raytrade.rl.portfolio_risk.risk_limit_weights` on its own book (exposure limits, drawdown cut,
    turbulence rule), the same per-bar function ``POST /portfolio`` applies. ``rolling_retrain`` retrains agents
    per window and runs on one asset only; it is skipped here (the ``ensembles`` block says so).

    Returns:
        ``({"ensemble_<method>": (T, A) limited targets}, {method: window starts and member weights})``.
    """
    from raytrade.rl.ensemble import rolling_selection, sharpe_vote
    from raytrade.rl.portfolio_risk import risk_limit_weights

    names = (["forecaster"] if cfg.ensemble.include_forecaster else []) + list(agents.weights)
    members = {name: results[name].weights for name in names}
    returns = {name: results[name].returns for name in names}
    prior = {**agents.val_sharpe, "forecaster": forecaster_prior}
    out, blocks = {}, {}
    for method in cfg.ensemble.methods:
        if method == "rolling_retrain":
            blocks[method] = {"skipped": "rolling_retrain retrains agents per window: one-asset runs only"}
            continue
        if method == "rolling":
            res = rolling_selection(members, returns, prior, cfg.ensemble.window_bars, periods_per_year)
        else:
            res = sharpe_vote(members, returns, prior, cfg.ensemble.window_bars, periods_per_year,
                              cfg.ensemble.temperature)
        limited, _ = risk_limit_weights(res.positions, pb.step(cfg.backtest.cost_bps),
                                        turbulence=pb.turbulence[pb.bars], threshold=pb.threshold,
                                        max_drawdown=cfg.ensemble.max_drawdown, drawdown_cut=cfg.ensemble.drawdown_cut,
                                        **exposure_limits(cfg))
        out[f"ensemble_{method}"] = limited
        blocks[method] = {**res.to_dict(), "members": names, "prior_sharpe": {n: prior[n] for n in names}}
    return out, blocks


def portfolio_stage(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, forecaster: Any,
                    annual: Annualisation, run_dir: Path, tracking_uri: str, progress: Progress,
                    agents: PortfolioAgents | None = None) -> dict[str, Any]:
    """Backtest every portfolio strategy on the test split and record it (table, figures, MLflow run).

    Args:
        forecaster: the :class:`raytrade.stages.common.ForecasterRun` of the pooled forecaster.
        agents: the trained portfolio agents (:func:`raytrade.stages.portfolio_agents.portfolio_agents_stage`);
            given, each agent's test targets are a strategy and the ensembles over weights are added
            (:func:`ensemble_weights`).

    Returns:
        ``{"strategies": {name: metrics + weights + contributions}, "results": {name: PortfolioResult},
        "backtest": {...}, "cross_sectional": {...}, "figures": {name: path}, "mlflow_run_ids": {"backtest": id}}``.

    Raises:
        ValueError: the agents' decision bars are not the portfolio's test bars (inputs built from other data).
    """
    from raytrade import tracking
    from raytrade.evaluation.plots import plot_weights, save_run_figures

    pcfg, panel = cfg.portfolio, universe.panel
    symbols = panel.symbols
    test = forecaster.windows["test"]
    expected = forecaster.forecasts["test"]["expected_return"]
    pb = portfolio_bars(cfg, universe, prepared, test, expected)
    bars, stamps, tradable, past = pb.bars, pb.stamps, pb.tradable, pb.past
    nlr, gap, slippage, threshold, turbulence = (pb.next_log_returns, pb.gap_returns, pb.slippage, pb.threshold,
                                                 pb.turbulence)

    # minimum variance: its trailing window reaches back before the test bars (returns realised by then)
    h0 = max(0, int(bars[0]) - pcfg.min_variance_window)
    hist_tradable = np.zeros((bars[0] - h0, len(symbols)), dtype=bool)
    min_var = minimum_variance(past[h0:bars[-1] + 1], np.vstack([hist_tradable, tradable]),
                               pcfg.min_variance_window, pcfg.rebalance_bars, pcfg.long_only, pcfg.max_weight,
                               max_gross=None if pcfg.long_only else max(1.0, pcfg.max_gross), symbols=symbols,
                               index=panel.timestamps[h0:bars[-1] + 1])[bars[0] - h0:]
    limited = forecaster_decisions(cfg, pb)["targets"]
    strategies = {
        "buy_and_hold": equal_weight_buy_and_hold(tradable),
        "equal_weight": equal_weight_rebalanced(tradable, pcfg.rebalance_bars),
        "min_variance": min_var,
        "forecaster": forecaster_weights(cfg, pb),
        "forecaster_risk_limited": limited,
    }
    if agents is not None:
        if not np.array_equal(agents.rows, bars):
            raise ValueError("the portfolio agents' test bars differ from the portfolio backtest's: their env inputs "
                             "were built from other data")
        strategies.update(agents.weights)
    ppy = annual.periods_per_year

    def backtest(weights: dict[str, np.ndarray]) -> dict[str, PortfolioResult]:
        return run_portfolio_backtests(weights, nlr, cfg.backtest.cost_bps, ppy, symbols=symbols, tradable=tradable,
                                       gap_returns=gap, slippage=slippage, timestamps=stamps)

    results: dict[str, PortfolioResult] = backtest(strategies)
    ensembles: dict[str, Any] = {}
    if agents is not None:
        prior = _forecaster_val_sharpe(cfg, universe, prepared, forecaster, ppy)
        combined, ensembles = ensemble_weights(cfg, pb, results, agents, prior, ppy)
        results.update(backtest(combined))
    table = portfolio_metrics_table(results)
    print(table, file=progress.stream, flush=True)
    progress.note(f"annualised with {annual}")

    xs = cross_sectional_metrics(test.timestamp, test.symbol, expected, test.y_return, test.next_return,
                                 k=pcfg.top_k if 2 * pcfg.top_k <= len(symbols) else None,
                                 quantile=None if 2 * pcfg.top_k <= len(symbols) else 0.5,
                                 horizon=cfg.labels.horizon, periods_per_year=ppy,
                                 n_bootstrap=cfg.walk_forward.n_bootstrap, confidence=cfg.walk_forward.confidence,
                                 seed=cfg.train.seed)
    progress.note("forecaster, cross-sectional (test): rank IC {v:.3f} [{lo:.3f}, {hi:.3f}], ICIR {ir:.3f}, "
                  "long-short {ls:.4%}/bar".format(v=xs["rank_ic"]["value"], lo=xs["rank_ic"]["ci_low"],
                                                   hi=xs["rank_ic"]["ci_high"], ir=xs["icir"]["value"],
                                                   ls=xs["long_short_return"]["value"]))

    title = f"test split after {cfg.backtest.cost_bps:g} bps costs"
    figures = save_run_figures(run_dir / "figures", results, stamps.to_numpy(), ppy,
                               forecaster_history=forecaster.outcome.history, title=title)
    for name in ("forecaster_risk_limited", "min_variance", *(k for k in results if k.startswith("ensemble_"))):
        figures[f"weights_{name}"] = plot_weights(results[name].weights, symbols, stamps.to_numpy(),
                                                  run_dir / "figures" / f"weights_{name}.png",
                                                  f"Target weights of {name}, {title}")
    progress.note(f"figures: {', '.join(figures)} in {run_dir / 'figures'}")
    backtest = {
        "table": table, "cost_bps": cfg.backtest.cost_bps, "fill": cfg.rl.fill, "n_bars": len(bars),
        "first_bar": stamps[0].isoformat(), "last_bar": stamps[-1].isoformat(), "symbols": list(symbols),
        "turbulence_threshold": threshold, "turbulent_bars": int(np.sum(turbulence[bars] > threshold)),
        "tradable_fraction": float(tradable.mean()), "forecaster_rebalance_bars": forecaster_rebalance_bars(cfg),
        **annual.report(),
    }
    if agents is not None:
        backtest["ensembles"] = ensembles
        backtest["val_sharpe"] = {name: block["prior_sharpe"] for name, block in ensembles.items()
                                  if "prior_sharpe" in block}
    with tracking.start_run(tracking_uri, cfg.tracking.experiment, f"{cfg.name}-backtest") as run_id:
        tracking.log_params({"cost_bps": cfg.backtest.cost_bps, "portfolio": pcfg.model_dump(mode="json"),
                             "symbols": list(symbols), **annual.report()})
        for name, result in results.items():
            tracking.log_metrics({f"{name}.{k}": v for k, v in result.metrics.items()})
        tracking.log_metrics({f"forecaster.{k}": xs[k]["value"] for k in ("rank_ic", "icir", "long_short_return")})
        tracking.log_text(table, "backtest_table.txt")
        for path in figures.values():
            tracking.log_artifact(path, "figures")
    return {"strategies": {name: r.report() for name, r in results.items()}, "results": results,
            "backtest": backtest, "cross_sectional": xs, "figures": {k: str(v) for k, v in figures.items()},
            "mlflow_run_ids": {"backtest": run_id}}
