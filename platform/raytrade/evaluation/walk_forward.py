"""Scoring of walk-forward (out-of-sample) forecasts, with stationary-bootstrap confidence intervals.

Pure numpy: no Ray, no training. The walk-forward driver trains one model per fold of
:func:`raytrade.dataset.folds.expanding_folds`, predicts each fold's test block, concatenates the
out-of-sample predictions of all folds (their test blocks tile one contiguous span, see
:func:`concatenate_folds`) and calls :func:`score_forecasts` once per model, plus
:func:`score_buy_and_hold` for the baseline; :func:`walk_forward_table` / :func:`format_table`
turn the results into one comparison table.

Units: returns are natural-log returns (fractions, not percent); ``cost_bps`` in basis points of
traded notional; Sharpe ratios annualised with ``periods_per_year`` bars per year.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from raytrade.evaluation.backtest import backtest, buy_and_hold_positions
from raytrade.evaluation.bootstrap import bootstrap_ci, default_block_length
from raytrade.evaluation.forecast import (
    directional_accuracy,
    information_coefficient,
    macro_f1_from_confusion,
    rank_information_coefficient,
)
from raytrade.evaluation.metrics import sharpe_ratio

__all__ = [
    "FORECAST_METRICS",
    "UNIVERSE_METRICS",
    "concatenate_folds",
    "format_table",
    "score_buy_and_hold",
    "score_forecasts",
    "score_positions",
    "score_universe_forecasts",
    "walk_forward_table",
]

#: Metrics of :func:`score_forecasts`, in table-column order.
FORECAST_METRICS: tuple[str, ...] = (
    "accuracy", "macro_f1", "directional_accuracy", "return_mae", "return_rmse", "ic", "rank_ic", "sharpe",
)

#: Metrics of :func:`score_universe_forecasts` (a universe's pooled forecaster), in table-column order.
UNIVERSE_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "ic", "rank_ic", "icir", "long_short_return")

#: Cell shown for a metric that does not apply (NaN), e.g. buy-and-hold's accuracy.
MISSING = "—"

# Format of each metric's numbers in the table (return errors are small log-return fractions).
_FORMATS: dict[str, str] = {"return_mae": "{:.5f}", "return_rmse": "{:.5f}", "long_short_return": "{:.5f}"}
_DEFAULT_FORMAT = "{:.3f}"

Scores = dict[str, dict[str, float]]


def _vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (n,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows like probs, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} must be finite (drop unlabelled rows first); first NaN/inf at row {bad}")
    return arr


def _macro_f1_of_cells(cells: np.ndarray) -> float:
    """Macro-F1 of rows given as confusion-matrix cells (``3 * true + predicted``): through the 9 cell
    counts, fast enough to evaluate once per bootstrap resample of thousands of rows."""
    return macro_f1_from_confusion(np.bincount(cells, minlength=9))


def _entry(point: float, low: float = math.nan, high: float = math.nan) -> dict[str, float]:
    return {"value": float(point), "ci_low": float(low), "ci_high": float(high)}


def _sharpe_entry(positions: np.ndarray, next_return: np.ndarray, cost_bps: float, periods_per_year: float,
                  n_bootstrap: int, confidence: float, seed: int, name: str) -> dict[str, float]:
    # Costs are charged once, in the true bar order (backtest -> raytrade_envs.accounting.net_returns);
    # the bootstrap then resamples the resulting NET return series.
    result = backtest(positions, next_return, cost_bps, periods_per_year, name=name)
    point, low, high = bootstrap_ci(lambda r: sharpe_ratio(r, periods_per_year), np.asarray(result.returns),
                                    n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return _entry(point, low, high)


def score_forecasts(
    probs: np.ndarray,
    y_class: np.ndarray,
    expected_return: np.ndarray,
    y_return: np.ndarray,
    next_return: np.ndarray,
    *,
    cost_bps: float,
    periods_per_year: float,
    max_position: float = 1.0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Scores:
    """Every metric of :data:`FORECAST_METRICS` with a stationary-bootstrap confidence interval.

    Rows must be one symbol's labelled bars in chronological order (e.g. the concatenated test
    blocks of all walk-forward folds), because the bootstrap resamples blocks of consecutive rows
    and the trading costs depend on the order of the positions.

    Args:
        probs: (n, 3) class probabilities [sell, hold, buy].
        y_class: (n,) true classes in {0, 1, 2}.
        expected_return: (n,) predicted forward log return over the label horizon.
        y_return: (n,) realised forward log return over the label horizon (``label_return``).
        next_return: (n,) log return of the bar each position is held over,
            ``ln(close[t+1] / close[t])`` (``label_next_return`` / ``Windows.next_return``).
        cost_bps: transaction cost in basis points of traded notional (>= 0).
        periods_per_year: bars per year (> 0), to annualise the Sharpe ratio.
        max_position: risk limit of the signal strategy, in (0, 1].
        n_bootstrap, confidence, seed: see :func:`raytrade.evaluation.bootstrap.bootstrap_ci`.

    Returns:
        metric -> ``{"value", "ci_low", "ci_high"}`` (plain floats; NaN bounds for fewer than
        10 rows). ``accuracy``, ``macro_f1`` (argmax of ``probs`` vs ``y_class``);
        ``directional_accuracy``, ``return_mae``, ``return_rmse`` (log-return units), ``ic``
        (Pearson), ``rank_ic`` (Spearman) of ``expected_return`` vs ``y_return``; their
        intervals resample rows jointly. ``sharpe``: annualised Sharpe ratio after costs of the
        forecaster signal strategy (positions :func:`raytrade.models.bundle.signal_positions`
        held over ``next_return``, starting flat), whose interval resamples its net returns.
        Each metric's expected block length is the Politis-White length of its own per-row
        series (hit indicator, absolute/squared error, IC product terms, net returns).

    Raises:
        ValueError: bad shapes, non-finite values, classes outside {0, 1, 2}, or bad costs.
    """
    # Imported here so that evaluation does not pull torch in at import time.
    from raytrade.models.bundle import signal_positions

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 3 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (n, 3) with n >= 1, got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs must be finite")
    n = probs.shape[0]
    y = _vector(y_class, "y_class", n)
    if not np.all(np.isin(y, (0, 1, 2))):
        raise ValueError("y_class must hold the classes 0 (sell), 1 (hold), 2 (buy) only (drop unlabelled rows)")
    y = y.astype(np.int64)
    er = _vector(expected_return, "expected_return", n)
    yr = _vector(y_return, "y_return", n)
    nr = _vector(next_return, "next_return", n)

    def ci(statistic: Callable[..., float], *arrays: np.ndarray, block_of: np.ndarray) -> dict[str, float]:
        return _entry(*bootstrap_ci(statistic, *arrays, n_bootstrap=n_bootstrap, confidence=confidence,
                                    block_length=default_block_length(block_of), seed=seed))

    pred = probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    err = er - yr
    z = (er - er.mean()) * (yr - yr.mean())
    rz = (rankdata(er) - (n + 1) / 2) * (rankdata(yr) - (n + 1) / 2)
    out: Scores = {
        "accuracy": ci(np.mean, correct, block_of=correct),
        "macro_f1": ci(_macro_f1_of_cells, y * 3 + pred, block_of=correct),
        "directional_accuracy": ci(directional_accuracy, er, yr, block_of=np.sign(er) * np.sign(yr)),
        "return_mae": ci(np.mean, np.abs(err), block_of=np.abs(err)),
        "return_rmse": ci(lambda e2: math.sqrt(np.mean(e2)), err**2, block_of=err**2),
        "ic": ci(information_coefficient, er, yr, block_of=z),
        "rank_ic": ci(rank_information_coefficient, er, yr, block_of=rz),
        "sharpe": _sharpe_entry(signal_positions(probs, max_position), nr, cost_bps, periods_per_year,
                                n_bootstrap, confidence, seed, name="forecaster"),
    }
    return out


def score_universe_forecasts(
    probs: np.ndarray,
    y_class: np.ndarray,
    expected_return: np.ndarray,
    y_return: np.ndarray,
    next_return: np.ndarray,
    timestamp: np.ndarray,
    symbol: np.ndarray,
    *,
    horizon: int,
    k: int,
    cost_bps: float,
    periods_per_year: float,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Scores:
    """The metrics of :data:`UNIVERSE_METRICS` of a pooled forecaster's out-of-sample rows of many symbols.

    ``accuracy``, ``macro_f1`` and ``ic`` are :func:`score_forecasts`' over the rows taken in time order (a row's
    bootstrap block holds neighbouring timestamps); ``rank_ic``, ``icir`` and ``long_short_return`` are
    cross-sectional, per timestamp across the symbols (:func:`raytrade.evaluation.cross_section.
    cross_sectional_metrics`: Spearman IC averaged over time, its mean / std, and the per-bar top-``k`` minus
    bottom-``k`` return on ``next_return``, or the top and bottom halves with fewer than ``2k`` symbols), each with
    a stationary-bootstrap interval over timestamps. A universe has no single Sharpe: its strategies are in the
    portfolio backtest. ``cost_bps`` is accepted for the shared call signature and unused.

    Args:
        probs, y_class, expected_return, y_return, next_return: as :func:`score_forecasts`, one row per
            (timestamp, symbol) window.
        timestamp, symbol: ``(n,)`` each row's bar and symbol.
        horizon: label horizon (bars); k: legs of the long-short.

    Raises:
        ValueError: as :func:`score_forecasts` and :func:`~raytrade.evaluation.cross_section.cross_sectional_metrics`.
    """
    from raytrade.evaluation.cross_section import cross_sectional_metrics

    del cost_bps
    order = np.lexsort((np.asarray(symbol).astype(str), np.asarray(timestamp)))
    pooled = score_forecasts(np.asarray(probs)[order], np.asarray(y_class)[order],
                             np.asarray(expected_return)[order], np.asarray(y_return)[order],
                             np.asarray(next_return)[order], cost_bps=0.0, periods_per_year=periods_per_year,
                             n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    n_symbols = len(pd.unique(np.asarray(symbol)))
    legs = {"k": k} if 2 * k <= n_symbols else {"quantile": 0.5}
    xs = cross_sectional_metrics(timestamp, symbol, expected_return, y_return, next_return, horizon=horizon,
                                 periods_per_year=periods_per_year, n_bootstrap=n_bootstrap, confidence=confidence,
                                 seed=seed, **legs)
    return {"accuracy": pooled["accuracy"], "macro_f1": pooled["macro_f1"], "ic": pooled["ic"],
            "rank_ic": xs["rank_ic"], "icir": xs["icir"], "long_short_return": xs["long_short_return"]}


def score_positions(
    positions: np.ndarray,
    next_return: np.ndarray,
    *,
    cost_bps: float,
    periods_per_year: float,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    name: str = "strategy",
) -> Scores:
    """Table row of a strategy given only its positions (e.g. an RL agent): ``sharpe`` after costs
    with its bootstrap interval (as in :func:`score_forecasts`), NaN for the forecast metrics.

    Args:
        positions: (n,) positions in [-1, 1], ``positions[t]`` held over ``next_return[t]``; the
            book starts flat.
        next_return: (n,) ``ln(close[t+1] / close[t])``.
        cost_bps, periods_per_year, n_bootstrap, confidence, seed: as :func:`score_forecasts`.
        name: strategy name used in error messages.
    """
    nr = _vector(next_return, "next_return")
    out: Scores = {metric: _entry(math.nan) for metric in FORECAST_METRICS}
    out["sharpe"] = _sharpe_entry(np.asarray(positions, dtype=np.float64), nr, cost_bps, periods_per_year,
                                  n_bootstrap, confidence, seed, name=name)
    return out


def score_buy_and_hold(
    next_return: np.ndarray,
    *,
    cost_bps: float,
    periods_per_year: float,
    max_position: float = 1.0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Scores:
    """Table row of the buy-and-hold baseline: long ``max_position`` on every bar (paying the entry
    cost once), ``sharpe`` with its interval and NaN for the forecast metrics.

    Args: as :func:`score_positions`; ``max_position`` as in the pipeline's backtest.
    """
    nr = _vector(next_return, "next_return")
    return score_positions(buy_and_hold_positions(nr.size) * float(max_position), nr, cost_bps=cost_bps,
                           periods_per_year=periods_per_year, n_bootstrap=n_bootstrap, confidence=confidence,
                           seed=seed, name="buy_and_hold")


def concatenate_folds(fold_outputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Concatenate per-fold arrays (same keys in every fold, e.g. ``probs``, ``y_class``, ...) in
    fold order, giving the pooled out-of-sample series to pass to :func:`score_forecasts`.

    Raises:
        ValueError: no folds, or folds with different keys.
    """
    if not fold_outputs:
        raise ValueError("no fold outputs to concatenate")
    keys = list(fold_outputs[0])
    for k, fold in enumerate(fold_outputs):
        if set(fold) != set(keys):
            raise ValueError(f"fold {k} has keys {sorted(fold)}, expected {sorted(keys)}")
    return {key: np.concatenate([np.asarray(fold[key]) for fold in fold_outputs]) for key in keys}


def _cell(entry: Mapping[str, float] | None, fmt: str) -> str:
    value = math.nan if entry is None else float(entry.get("value", math.nan))
    if not math.isfinite(value):
        return MISSING
    low, high = float(entry.get("ci_low", math.nan)), float(entry.get("ci_high", math.nan))
    text = fmt.format(value)
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def walk_forward_table(per_model: Mapping[str, Mapping[str, Mapping[str, float]]],
                       metrics: Sequence[str] = FORECAST_METRICS) -> pd.DataFrame:
    """One row per model (in the mapping's order, e.g. including ``"buy_and_hold"``), one column per
    metric of ``metrics`` (:data:`FORECAST_METRICS`, or :data:`UNIVERSE_METRICS` for a universe); cells
    ``"0.531 [0.512, 0.550]"`` (value [CI low, CI high]), the value alone when it has no interval, or ``"—"``
    when the value is NaN or missing.

    Args:
        per_model: model name -> the dict returned by :func:`score_forecasts` (or
            :func:`score_buy_and_hold` / :func:`score_positions` / :func:`score_universe_forecasts`).
    """
    rows = {
        str(model): [_cell(scores.get(metric), _FORMATS.get(metric, _DEFAULT_FORMAT)) for metric in metrics]
        for model, scores in per_model.items()
    }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(metrics), dtype=object)
    table.index.name = "model"
    return table


def format_table(df: pd.DataFrame) -> str:
    """GitHub-flavoured markdown table of ``df`` (index as the first column), no trailing newline."""
    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|")

    header = [esc(df.index.name or ""), *(esc(c) for c in df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for name, row in df.iterrows():
        lines.append("| " + " | ".join([esc(name), *(esc(v) for v in row.tolist())]) + " |")
    return "\n".join(lines)
