"""Strategy evaluation: pure performance metrics, the vectorised backtester, forecast metrics, walk-forward
scoring, the stationary bootstrap, plots and the HTML report.

``metrics`` holds pure functions on numpy arrays (per-bar simple net returns as fractions); ``backtest`` turns
position series into net returns with the shared accounting of :mod:`raytrade_envs.accounting` and summarises
them. Strategy backtests that run agents live with the agents (:mod:`raytrade.rl.strategies`).
"""

from raytrade.evaluation.backtest import (
    BacktestResult,
    backtest,
    buy_and_hold_positions,
    metrics_table,
    run_backtests,
)
from raytrade.evaluation.metrics import (
    CALENDARS,
    SUMMARY_KEYS,
    Annualisation,
    annual_return,
    annual_volatility,
    annualisation,
    calmar_ratio,
    hit_rate,
    max_drawdown,
    periods_per_year,
    sharpe_ratio,
    sortino_ratio,
    summarize,
    total_return,
    turnover,
)

__all__ = [
    "CALENDARS",
    "SUMMARY_KEYS",
    "Annualisation",
    "BacktestResult",
    "annual_return",
    "annual_volatility",
    "annualisation",
    "backtest",
    "buy_and_hold_positions",
    "calmar_ratio",
    "hit_rate",
    "max_drawdown",
    "metrics_table",
    "periods_per_year",
    "run_backtests",
    "sharpe_ratio",
    "sortino_ratio",
    "summarize",
    "total_return",
    "turnover",
]
