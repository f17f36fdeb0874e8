"""Plots of backtest results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from raytrade.evaluation.backtest import BacktestResult


def plot_equity(results: Mapping[str, BacktestResult], timestamps: np.ndarray, path: str | Path,
                title: str = "Test split, after costs") -> Path:
    """Equity curves (top, growth of 1.0) and drawdowns (bottom, fraction below peak) of each strategy.

    Args:
        results: strategy name -> backtest result; all of length ``len(timestamps)``.
        timestamps: bar times of the positions (the decision bars).
        path: PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    for name, r in results.items():
        top.plot(timestamps, r.equity, label=f"{name} (Sharpe {r.metrics['sharpe']:.2f})", lw=1.2)
        peak = np.maximum.accumulate(np.concatenate([[1.0], r.equity]))[1:]
        bottom.plot(timestamps, r.equity / peak - 1.0, lw=0.9)
    top.axhline(1.0, color="grey", lw=0.6)
    top.set_ylabel("equity (start = 1)")
    top.set_title(title)
    top.legend(loc="best", fontsize=8)
    bottom.set_ylabel("drawdown")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
