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
  false: and short the ``top_k`` lowest), equal weights, every bar, within the exposure limits;
- ``forecaster_risk_limited``: ``forecaster`` through the risk layer (exposure limits, drawdown cut of
  ``ensemble.max_drawdown``/``drawdown_cut``, FinRL's turbulence rule with its threshold the
  ``portfolio.turbulence_quantile`` of the index over the TRAIN bars).
"""

from __future__ import annotations

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
from raytrade.evaluation.portfolio import PortfolioResult, portfolio_metrics_table, run_portfolio_backtests
from raytrade.evaluation.portfolio_baselines import (
    equal_weight_buy_and_hold,
    equal_weight_rebalanced,
    minimum_variance,
    top_k_weights,
)
from raytrade.rl.portfolio_decision import portfolio_decisions
from raytrade.rl.portfolio_risk import turbulence_index, turbulence_threshold
from raytrade.runtime import Progress
from raytrade_envs.accounting import simulate
from raytrade_envs.actions import project_weights

#: slippage volatility window (bars), as the single-asset env's ``ohlcv_arrays`` default
VOL_WINDOW = 24


def _pivot(timestamps: np.ndarray, symbols: np.ndarray, values: np.ndarray, index: pd.DatetimeIndex,
           columns: tuple[str, ...], fill: Any = np.nan) -> np.ndarray:
    """Long ``(n,)`` values at (timestamp, symbol) -> ``(len(index), len(columns))``, ``fill`` elsewhere."""
    frame = pd.DataFrame({TIMESTAMP: pd.DatetimeIndex(timestamps), SYMBOL: symbols.astype(str), "v": values})
    wide = frame.pivot(index=TIMESTAMP, columns=SYMBOL, values="v")
    return wide.reindex(index=index, columns=list(columns)).fillna(fill).to_numpy()


def past_log_returns(universe: Universe) -> np.ndarray:
    """``(T, A)`` ``ln(close[t] / close[t-1])`` on the union calendar, NaN where either bar is missing: the
    returns realised by ``t`` that the minimum-variance baseline and the turbulence index look back on."""
    close = universe.panel.close
    out = np.full(close.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.log(close[1:] / close[:-1])
    return out


def portfolio_stage(cfg: PipelineConfig, universe: Universe, prepared: PreparedData, forecaster: Any,
                    annual: Annualisation, run_dir: Path, tracking_uri: str, progress: Progress) -> dict[str, Any]:
    """Backtest every portfolio strategy on the test split and record it (table, figures, MLflow run).

    Args:
        forecaster: the :class:`raytrade.stages.common.ForecasterRun` of the pooled forecaster.

    Returns:
        ``{"strategies": {name: metrics + weights + contributions}, "results": {name: PortfolioResult},
        "backtest": {...}, "cross_sectional": {...}, "figures": {name: path}, "mlflow_run_ids": {"backtest": id}}``.
    """
    from raytrade import tracking
    from raytrade.evaluation.plots import plot_weights, save_run_figures

    pcfg, panel = cfg.portfolio, universe.panel
    symbols = panel.symbols
    test = forecaster.windows["test"]
    expected = forecaster.forecasts["test"]["expected_return"]
    rows = panel.index_of(pd.DatetimeIndex(np.unique(test.timestamp)))
    bars = np.arange(rows.min(), rows.max() + 1)
    stamps = panel.timestamps[bars]
    scores = _pivot(test.timestamp, test.symbol, expected, stamps, symbols)
    frame = prepared.features.frame
    warm = _pivot(frame[TIMESTAMP].to_numpy(), frame[SYMBOL].to_numpy(), np.ones(len(frame)), stamps, symbols, 0.0)
    tradable = panel.fillable(cfg.rl.fill)[bars] & (warm > 0)
    nlr = panel.next_log_returns()[bars]
    gap = panel.next_gap_returns()[bars] if cfg.rl.fill == "next_open" else None
    past = past_log_returns(universe)
    slippage = None
    if cfg.rl.slippage_vol_mult > 0:
        vol = pd.DataFrame(past).rolling(VOL_WINDOW, min_periods=2).std(ddof=0).to_numpy()
        slippage = cfg.rl.slippage_vol_mult * np.nan_to_num(vol[bars])
    limits = {"long_only": pcfg.long_only, "max_weight": pcfg.max_weight, "max_gross": pcfg.max_gross,
              "max_net": pcfg.max_net}

    # minimum variance: its trailing window reaches back before the test bars (returns realised by then)
    h0 = max(0, int(bars[0]) - pcfg.min_variance_window)
    hist_tradable = np.zeros((bars[0] - h0, len(symbols)), dtype=bool)
    min_var = minimum_variance(past[h0:bars[-1] + 1], np.vstack([hist_tradable, tradable]),
                               pcfg.min_variance_window, pcfg.rebalance_bars, pcfg.long_only, pcfg.max_weight,
                               max_gross=None if pcfg.long_only else max(1.0, pcfg.max_gross), symbols=symbols,
                               index=panel.timestamps[h0:bars[-1] + 1])[bars[0] - h0:]
    forecaster_w = project_weights(top_k_weights(scores, tradable & np.isfinite(scores), pcfg.top_k,
                                                 long_short=not pcfg.long_only), **limits)

    # the risk layer: FinRL's turbulence rule with its threshold from the TRAIN bars
    turbulence = turbulence_index(past, pcfg.turbulence_window, symbols=symbols, index=panel.timestamps)
    train_rows = panel.index_of(pd.DatetimeIndex(np.unique(prepared.split.train[TIMESTAMP])))
    threshold = turbulence_threshold(turbulence[train_rows], pcfg.turbulence_quantile)

    def step(t: int, held: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        book = simulate(target[None], nlr[t][None], cfg.backtest.cost_bps, initial_position=held,
                        gap_returns=None if gap is None else gap[t][None],
                        slippage=None if slippage is None else slippage[t][None], tradable=tradable[t][None])
        return float(book.net[0]), book.held_end

    # the served decision (rl.portfolio_decision), walked bar by bar on the limited book's own equity
    limited, _ = portfolio_decisions(scores, tradable, step, turbulence=turbulence[bars], threshold=threshold,
                                     top_k=pcfg.top_k, max_drawdown=cfg.ensemble.max_drawdown,
                                     drawdown_cut=cfg.ensemble.drawdown_cut, **limits)
    strategies = {
        "buy_and_hold": equal_weight_buy_and_hold(tradable),
        "equal_weight": equal_weight_rebalanced(tradable, pcfg.rebalance_bars),
        "min_variance": min_var,
        "forecaster": forecaster_w,
        "forecaster_risk_limited": limited,
    }
    ppy = annual.periods_per_year
    results: dict[str, PortfolioResult] = run_portfolio_backtests(
        strategies, nlr, cfg.backtest.cost_bps, ppy, symbols=symbols, tradable=tradable, gap_returns=gap,
        slippage=slippage, timestamps=stamps)
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
    for name in ("forecaster_risk_limited", "min_variance"):
        figures[f"weights_{name}"] = plot_weights(results[name].weights, symbols, stamps.to_numpy(),
                                                  run_dir / "figures" / f"weights_{name}.png",
                                                  f"Target weights of {name}, {title}")
    progress.note(f"figures: {', '.join(figures)} in {run_dir / 'figures'}")
    backtest = {
        "table": table, "cost_bps": cfg.backtest.cost_bps, "fill": cfg.rl.fill, "n_bars": len(bars),
        "first_bar": stamps[0].isoformat(), "last_bar": stamps[-1].isoformat(), "symbols": list(symbols),
        "turbulence_threshold": threshold, "turbulent_bars": int(np.sum(turbulence[bars] > threshold)),
        "tradable_fraction": float(tradable.mean()), **annual.report(),
    }
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
