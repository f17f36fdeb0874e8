"""Figures of a run: equity, drawdown, rolling Sharpe, the forecaster's confusion matrix, training curves.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot state, so it is safe in
threads, notebooks and headless jobs), writes a PNG and returns its path. :func:`save_run_figures`
writes the set a run report embeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from raytrade.evaluation.backtest import BacktestResult
from raytrade.evaluation.metrics import rolling_sharpe

#: The baseline every strategy is drawn against (dashed, black).
BASELINE = "buy_and_hold"
DPI = 110


def _style(name: str) -> dict[str, Any]:
    return {"color": "black", "ls": "--", "lw": 1.4} if name == BASELINE else {"lw": 1.1}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def drawdown(equity: np.ndarray) -> np.ndarray:
    """``(n,)`` drawdown after each bar: ``equity / running peak - 1`` (fraction, <= 0), the peak
    including the initial equity of 1.0."""
    peak = np.maximum.accumulate(np.concatenate([[1.0], np.asarray(equity, dtype=np.float64)]))[1:]
    return np.asarray(equity, dtype=np.float64) / peak - 1.0


def _strategy_lines(results: Mapping[str, BacktestResult], timestamps: np.ndarray, path: str | Path,
                    series: Callable[[BacktestResult], np.ndarray], label: Callable[[str, BacktestResult], str],
                    ylabel: str, title: str, height: float = 3.5, zero_line: float | None = None,
                    legend_loc: str = "best") -> Path:
    """One line per strategy over the decision bars (buy-and-hold dashed black), written as a PNG."""
    fig = Figure(figsize=(10, height))
    ax = fig.subplots()
    for name, r in results.items():
        ax.plot(timestamps, series(r), label=label(name, r), **_style(name))
    if zero_line is not None:
        ax.axhline(zero_line, color="grey", lw=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.autofmt_xdate()
    return _save(fig, path)


def plot_equity(results: Mapping[str, BacktestResult], timestamps: np.ndarray, path: str | Path,
                title: str = "Test split, after costs") -> Path:
    """Equity curves (growth of 1.0) of each strategy against buy-and-hold (dashed black).

    Args:
        results: strategy name -> backtest result; all of length ``len(timestamps)``.
        timestamps: bar times of the positions (the decision bars), shape ``(n,)``.
        path: PNG file to write.
    """
    return _strategy_lines(results, timestamps, path, lambda r: r.equity,
                           lambda name, r: f"{name} (Sharpe {r.metrics['sharpe']:.2f})", "equity (start = 1)",
                           f"Equity: {title}", height=4.5, zero_line=1.0)


def plot_drawdown(results: Mapping[str, BacktestResult], timestamps: np.ndarray, path: str | Path,
                  title: str = "Test split, after costs") -> Path:
    """Drawdown below the running peak (fraction, see :func:`drawdown`) of each strategy."""
    return _strategy_lines(results, timestamps, path, lambda r: drawdown(r.equity),
                           lambda name, r: f"{name} (max {r.metrics['max_drawdown']:.1%})",
                           "drawdown (fraction of peak)", f"Drawdown: {title}", legend_loc="lower left")


def plot_rolling_sharpe(results: Mapping[str, BacktestResult], timestamps: np.ndarray, path: str | Path,
                        window: int, periods_per_year: float, title: str = "Test split, after costs") -> Path:
    """Annualised Sharpe ratio over the trailing ``window`` bars (:func:`~raytrade.evaluation.metrics.rolling_sharpe`)
    of each strategy; the first ``window - 1`` bars have none."""
    return _strategy_lines(results, timestamps, path, lambda r: rolling_sharpe(r.returns, window, periods_per_year),
                           lambda name, r: name, f"Sharpe, trailing {window} bars (annualised)",
                           f"Rolling Sharpe: {title}", zero_line=0.0)


def plot_weights(weights: np.ndarray, symbols: tuple[str, ...] | list[str], timestamps: np.ndarray,
                 path: str | Path, title: str = "Target weights, test split") -> Path:
    """Target weights over time of one portfolio strategy: stacked areas per symbol (longs above zero, shorts
    below), with the cash weight ``1 - sum w`` as a black line.

    Args:
        weights: ``(T, A)`` target weights (fractions of equity), NaN read as 0 (no position).
        symbols: the ``A`` column names; timestamps: ``(T,)`` decision bars.
        path: PNG file to write.

    Raises:
        ValueError: shapes that do not match.
    """
    w = np.nan_to_num(np.asarray(weights, dtype=np.float64))
    if w.ndim != 2 or w.shape != (len(timestamps), len(symbols)):
        raise ValueError(f"weights must have shape ({len(timestamps)}, {len(symbols)}), got {w.shape}")
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    colors = _distinct_colors(len(symbols))
    ax.stackplot(timestamps, np.clip(w, 0.0, None).T, labels=list(symbols), colors=colors, alpha=0.85, lw=0)
    if (w < 0).any():
        ax.stackplot(timestamps, np.clip(w, None, 0.0).T, colors=colors, alpha=0.55, lw=0)
    ax.plot(timestamps, 1.0 - w.sum(axis=1), color="black", lw=1.0, label="cash")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_ylabel("weight (fraction of equity)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=1 + len(symbols) // 18)
    fig.autofmt_xdate()
    return _save(fig, path)


def _distinct_colors(n: int) -> list[Any]:
    """``n`` colours no two alike: matplotlib's ``tab20`` up to 20 (pairs of a hue, dark first), else ``n`` evenly
    spaced samples of ``turbo``."""
    from matplotlib import colormaps

    if n <= 20:
        tab = colormaps["tab20"].colors
        return [tab[2 * i] if i < 10 else tab[2 * (i - 10) + 1] for i in range(n)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, n)]


def plot_confusion(confusion: np.ndarray, class_names: tuple[str, ...], path: str | Path,
                   title: str = "Forecaster, test split") -> Path:
    """A (true, predicted) confusion matrix of counts, drawn with scikit-learn's ``ConfusionMatrixDisplay``,
    each cell also given as the share of its true class (row)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(confusion)
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.subplots()
    ConfusionMatrixDisplay(counts, display_labels=list(class_names)).plot(ax=ax, colorbar=False, cmap="Blues",
                                                                          values_format="d")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    for (i, j), value in np.ndenumerate(share):
        ax.text(j, i + 0.28, f"{value:.0%}", ha="center", va="center", fontsize=7, color="grey")
    ax.set_title(f"{title} ({int(counts.sum())} windows)")
    return _save(fig, path)


def plot_training_curves(forecaster_history: pd.DataFrame | None,
                         agent_histories: Mapping[str, pd.DataFrame], path: str | Path) -> Path:
    """Training curves: the forecaster's train/val loss per epoch (when given) and each agent's mean
    training-episode return and validation Sharpe per iteration."""
    panels = (forecaster_history is not None) + 2 * bool(agent_histories)
    fig = Figure(figsize=(5 * max(panels, 1), 3.8))
    axes = list(np.atleast_1d(fig.subplots(1, max(panels, 1))))
    if forecaster_history is not None:
        ax = axes.pop(0)
        for column in ("train_loss", "val_loss"):
            ax.plot(forecaster_history["epoch"], forecaster_history[column], marker="o", label=column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss")
        ax.set_title("Forecaster")
        ax.legend(fontsize=8)
    if agent_histories:
        ret_ax, val_ax = axes[0], axes[1]
        for name, history in agent_histories.items():
            ret_ax.plot(history["iteration"], history["train_episode_return_mean"], marker="o", label=name)
            val_ax.plot(history["iteration"], history["val_sharpe"], marker="o", label=name)
        ret_ax.set_title("Agents: mean training-episode return")
        val_ax.set_title("Agents: validation Sharpe (annualised)")
        for ax in (ret_ax, val_ax):
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=8)
    elif forecaster_history is None:
        raise ValueError("plot_training_curves: give a forecaster history or at least one agent history")
    return _save(fig, path)


def default_rolling_window(n_bars: int, periods_per_year: float) -> int:
    """About one week of bars (``periods_per_year / 52``), at least 20 and at most a quarter of the test bars."""
    return int(max(2, min(max(20, round(periods_per_year / 52)), n_bars // 4)))


def save_run_figures(out_dir: str | Path, results: Mapping[str, BacktestResult], timestamps: np.ndarray,
                     periods_per_year: float, *, confusion: np.ndarray | None = None,
                     class_names: tuple[str, ...] = ("sell", "hold", "buy"),
                     forecaster_history: pd.DataFrame | None = None,
                     agent_histories: Mapping[str, pd.DataFrame] | None = None,
                     rolling_window: int | None = None, title: str = "Test split, after costs") -> dict[str, Path]:
    """The figures of a run report, as PNGs in ``out_dir``: ``equity``, ``drawdown``, ``rolling_sharpe``,
    ``confusion_matrix`` (when ``confusion`` is given) and ``training_curves`` (when a history is given).

    Args:
        results: strategy -> backtest result on the test split (after costs).
        timestamps: ``(n,)`` decision bars of those results.
        periods_per_year: bars per year, for the annualised rolling Sharpe.
        confusion: ``(3, 3)`` counts, rows = true class, columns = predicted class.
        rolling_window: bars per rolling-Sharpe window; default :func:`default_rolling_window`.

    Returns:
        figure name -> PNG path.
    """
    out_dir = Path(out_dir)
    window = rolling_window or default_rolling_window(len(timestamps), periods_per_year)
    figures = {
        "equity": plot_equity(results, timestamps, out_dir / "equity.png", title),
        "drawdown": plot_drawdown(results, timestamps, out_dir / "drawdown.png", title),
        "rolling_sharpe": plot_rolling_sharpe(results, timestamps, out_dir / "rolling_sharpe.png", window,
                                              periods_per_year, title),
    }
    if confusion is not None:
        figures["confusion_matrix"] = plot_confusion(confusion, class_names, out_dir / "confusion_matrix.png")
    if forecaster_history is not None or agent_histories:
        figures["training_curves"] = plot_training_curves(forecaster_history, agent_histories or {},
                                                          out_dir / "training_curves.png")
    return figures
